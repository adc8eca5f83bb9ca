import pytest
import torch
from pydantic import ValidationError

from fitfed.models import MLP, LogisticRegression, ModelConfig, build_model


def test_logreg_is_one_linear_layer_with_one_logit_per_row():
    # Execute
    model = build_model(ModelConfig(name="logreg"), num_features=7)

    # Assert
    assert isinstance(model, LogisticRegression)
    assert model.num_features == 7
    assert [tuple(p.shape) for p in model.parameters()] == [(1, 7), (1,)]
    assert model(torch.zeros(5, 7)).shape == (5,)


def test_mlp_has_two_hidden_layers_of_the_configured_width():
    # Execute
    model = build_model(ModelConfig(name="mlp", hidden_units=8), num_features=7)

    # Assert
    assert isinstance(model, MLP)
    assert (model.num_features, model.hidden_units) == (7, 8)
    assert [tuple(p.shape) for p in model.parameters()] == [(8, 7), (8,), (8, 8), (8,), (1, 8), (1,)]
    assert model(torch.zeros(5, 7)).shape == (5,)


def test_default_config_is_logreg():
    # Execute
    model = build_model(ModelConfig(), num_features=3)

    # Assert
    assert isinstance(model, LogisticRegression)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "resnet"}, "Input should be 'logreg' or 'mlp'"),
        ({"hidden_units": 0}, "greater than or equal to 1"),
        ({"layers": 3}, "Extra inputs are not permitted"),
    ],
)
def test_model_config_rejects_bad_fields(fields, message):
    # Execute / Assert
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**fields)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_seed_is_kept_and_fixes_the_initial_weights(name):
    # Execute
    first = build_model(ModelConfig(name=name, hidden_units=4), 3, seed=5)
    again = build_model(ModelConfig(name=name, hidden_units=4), 3, seed=5)
    other = build_model(ModelConfig(name=name, hidden_units=4), 3, seed=6)

    # Assert
    assert first.seed == 5
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters(), strict=True))
