import math
import re

import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel
from pydantic import ValidationError

from fitfed.client import state_dict_of, train_round
from fitfed.config import TrainConfig
from fitfed.datasets.heart_disease import write_sites
from fitfed.models import LogisticRegression, ModelConfig
from fitfed.preprocessing import SiteSplit
from fitfed.spec import load_spec
from fitfed.task import evaluate, load_site_data, make_model, train

SPEC = load_spec("churn")


def _config(**fields: object) -> TrainConfig:
    return TrainConfig(task=SPEC, **{"local_steps": 1, "batch_size": 4, "learning_rate": 0.1, **fields})


def _separable(rows: int = 10) -> SiteSplit:
    """One feature; the label is 1 exactly when it is positive."""
    x = torch.linspace(-2.0, 2.0, rows).unsqueeze(1)
    y = (x[:, 0] > 0).float()
    return SiteSplit(x_train=x, y_train=y, x_test=x, y_test=y, feature_names=["x"])


def _logreg(weight: float, bias: float) -> LogisticRegression:
    model = LogisticRegression(1)
    with torch.no_grad():
        model.linear.weight.fill_(weight)
        model.linear.bias.fill_(bias)
    return model


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _batch_sizes(model: torch.nn.Module) -> list[int]:
    """Record the batch size of every forward pass ``model`` makes from now on."""
    sizes: list[int] = []
    model.register_forward_hook(lambda _module, inputs, _output: sizes.append(len(inputs[0])))
    return sizes


def test_make_model_is_deterministic_for_a_seed_and_differs_across_seeds():
    # Execute
    first = make_model(ModelConfig(name="mlp", hidden_units=4), 5, seed=1)
    again = make_model(ModelConfig(name="mlp", hidden_units=4), 5, seed=1)
    other = make_model(ModelConfig(name="mlp", hidden_units=4), 5, seed=2)

    # Assert
    assert torch.equal(_flat(first), _flat(again))
    assert not torch.equal(_flat(first), _flat(other))


def test_make_model_leaves_the_global_random_state_alone():
    # Prepare
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    # Execute
    make_model(ModelConfig(), 5, seed=9)

    # Assert
    assert torch.equal(torch.rand(3), expected)


def test_evaluate_on_a_hand_made_example():
    # Prepare: logit = x; predictions [0, 0, 1, 1] against labels [0, 1, 0, 1]
    model = _logreg(weight=1.0, bias=0.0)
    x = torch.tensor([[-2.0], [-1.0], [1.0], [3.0]])
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])

    # Execute
    metrics = evaluate(model, x, y)

    # Assert: positives score -1 and 3, negatives -2 and 1: 3 of 4 pairs ranked right
    expected_loss = (math.log1p(math.exp(-2)) + math.log1p(math.exp(1)) * 2 + math.log1p(math.exp(-3))) / 4
    assert metrics["accuracy"] == 0.5
    assert metrics["roc_auc"] == 0.75
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_evaluate_leaves_out_roc_auc_for_a_single_class():
    # Prepare
    model = _logreg(weight=1.0, bias=0.0)
    x = torch.tensor([[-1.0], [2.0], [3.0]])

    # Execute
    metrics = evaluate(model, x, torch.ones(3))

    # Assert
    assert set(metrics) == {"loss", "accuracy"}
    assert metrics["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_local_steps_takes_exactly_that_many_steps(steps):
    # Prepare
    model = make_model(ModelConfig(), 1)
    sizes = _batch_sizes(model)

    # Execute
    result = train(model, _separable(10), _config(local_steps=steps), round_seed=0)

    # Assert: 10 rows in batches of 4 are 3 batches per pass; later passes reshuffle
    assert result.steps == steps
    assert len(sizes) == steps
    assert sizes[:3] == [4, 4, 2][: min(steps, 3)]


@pytest.mark.parametrize(("epochs", "expected"), [(1, [4, 4, 2]), (2, [4, 4, 2, 4, 4, 2])])
def test_local_epochs_takes_ceil_rows_over_batch_size_steps_per_epoch(epochs, expected):
    # Prepare
    model = make_model(ModelConfig(), 1)
    sizes = _batch_sizes(model)

    # Execute
    result = train(model, _separable(10), _config(local_steps=None, local_epochs=epochs), round_seed=0)

    # Assert
    assert result.steps == len(expected)
    assert sizes == expected


def test_training_reduces_the_loss_on_a_separable_problem():
    # Prepare
    data = _separable(10)
    model = make_model(ModelConfig(), 1)
    before = evaluate(model, data.x_test, data.y_test)

    # Execute
    result = train(model, data, _config(local_steps=100, learning_rate=0.5), round_seed=0)
    after = evaluate(model, data.x_test, data.y_test)

    # Assert
    assert after["loss"] < before["loss"] / 2
    assert after["accuracy"] == 1.0
    assert result.loss < before["loss"]


def test_fedprox_keeps_weights_closer_to_the_received_model():
    # Prepare
    data = _separable(10)
    config = _config(local_steps=30, learning_rate=0.5)
    start = _flat(make_model(ModelConfig(), 1, seed=3))

    # Execute
    plain = make_model(ModelConfig(), 1, seed=3)
    train(plain, data, config, round_seed=0)
    proximal = make_model(ModelConfig(), 1, seed=3)
    train(proximal, data, config, round_seed=0, fedprox_mu=1.0)

    # Assert
    assert 0 < (_flat(proximal) - start).norm() < (_flat(plain) - start).norm()


def test_same_round_seed_gives_identical_weights_and_another_does_not():
    # Prepare
    data = _separable(10)
    config = _config(local_steps=5, batch_size=2)
    models = [make_model(ModelConfig(name="mlp", hidden_units=4), 1, seed=0) for _ in range(3)]

    # Execute
    for model, round_seed in zip(models, [7, 7, 8], strict=True):
        train(model, data, config, round_seed=round_seed)

    # Assert
    assert torch.equal(_flat(models[0]), _flat(models[1]))
    assert not torch.equal(_flat(models[0]), _flat(models[2]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"local_epochs": 2, "local_steps": 3}, "set exactly one of local_epochs=2 and local_steps=3"),
        ({}, "set exactly one of local_epochs=None and local_steps=None"),
        (
            {"local_steps": 3, "algorithm": "scaffold", "optimizer": "adam"},
            "algorithm='scaffold' needs optimizer='sgd' (its correction assumes SGD), got 'adam'",
        ),
        (
            {"local_steps": 3, "algorithm": "scaffold", "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}},
            "dp cannot be combined with algorithm='scaffold': its control variates carry un-noised gradients",
        ),
        ({"local_steps": 3, "dp": {"noise_multiplier": 0, "max_grad_norm": 1.0}}, "dp.noise_multiplier"),
        ({"local_steps": 3, "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "gdp"}}, "accountant"),
    ],
)
def test_train_config_rejects_inconsistent_settings(fields, message):
    # Execute / Assert
    with pytest.raises(ValidationError, match=re.escape(message)):
        TrainConfig(task=SPEC, **fields)


def test_train_config_accepts_scaffold_with_sgd_and_fedprox_with_adam():
    # Execute
    scaffold = TrainConfig(task=SPEC, local_steps=3, algorithm="scaffold", optimizer="sgd")
    fedprox = TrainConfig(task=SPEC, local_epochs=1, algorithm="fedprox", optimizer="adam")

    # Assert
    assert (scaffold.local_steps, scaffold.local_epochs) == (3, None)
    assert (fedprox.local_steps, fedprox.local_epochs) == (None, 1)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "fedopt"])
def test_train_config_accepts_dp_sgd_with_fedavg_fedprox_and_fedopt(algorithm):
    # Prepare
    dp = {"noise_multiplier": 1.1, "max_grad_norm": 1}

    # Execute
    config = TrainConfig(task=SPEC, local_steps=3, algorithm=algorithm, dp=dp)

    # Assert: the fields the databricks bridge reads
    assert config.dp is not None
    assert (config.dp.noise_multiplier, config.dp.max_grad_norm, config.dp.target_delta) == (1.1, 1.0, 1e-5)
    assert TrainConfig.model_validate_json(config.model_dump_json()) == config


def test_load_site_data_validates_and_encodes_a_site_csv(tmp_path):
    # Prepare
    (path,) = [p for p in write_sites(tmp_path) if p.stem == "switzerland"]

    # Execute
    data = load_site_data(path, load_spec("heart_disease"))

    # Assert
    assert (data.x_train.shape, data.x_test.shape) == ((30, 13), (16, 13))


@pytest.mark.parametrize(("weight_by", "expected"), [("steps", 3), ("rows", 10)])
def test_update_weight_is_local_steps_or_training_rows(weight_by, expected):
    # Prepare: 10 training rows, 3 local steps
    model = _logreg(0.0, 0.0)
    received = FLModel(params=state_dict_of(model), current_round=0)

    # Execute
    sent = train_round(model, _separable(10), _config(local_steps=3, weight_by=weight_by), received, scaffold=None)

    # Assert: the key FLARE's aggregators weigh by carries the chosen weight
    assert sent.meta["NUM_STEPS_CURRENT_ROUND"] == expected
