from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant

from fitfed.config import DPSGDConfig, PrivacyBudget, TrainConfig
from fitfed.datasets.churn import write_clubs
from fitfed.jobs import build_recipe, load_job_module, simulate
from fitfed.models import LogisticRegression, ModelConfig
from fitfed.preprocessing import SiteSplit
from fitfed.privacy.accounting import epsilon_spent
from fitfed.privacy.dp_sgd import DPTrainer
from fitfed.privacy.ledger import JobState, PrivacyBudgetExceeded, PrivacyLedger, ledger_path
from fitfed.report import find_record_dir
from fitfed.server.run_record import EVENTS_FILE
from fitfed.spec import load_spec
from fitfed.task import load_site_data, make_model, train

# Torch's notice that Opacus's backward hooks fire on a first layer whose inputs need no gradient: harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

SPEC = load_spec("churn")
JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"


def _config(noise: float = 1.0, clip: float = 1.0, **fields: object) -> TrainConfig:
    dp = DPSGDConfig(noise_multiplier=noise, max_grad_norm=clip)
    return TrainConfig(task=SPEC, dp=dp, **{"local_steps": 3, "batch_size": 4, "learning_rate": 0.1, **fields})


def _rows(x: list[float], y: list[float]) -> SiteSplit:
    features = torch.tensor(x).unsqueeze(1)
    labels = torch.tensor(y)
    return SiteSplit(x_train=features, y_train=labels, x_test=features, y_test=labels, feature_names=["x"])


def _separable(rows: int) -> SiteSplit:
    x = torch.linspace(-2.0, 2.0, rows).tolist()
    return _rows(x, [float(v > 0) for v in x])


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _logreg_at_zero() -> LogisticRegression:
    model = LogisticRegression(1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def _clipped_mean_gradient(model: torch.nn.Module, data: SiteSplit, clip: float) -> torch.Tensor:
    """By hand: each row's gradient on its own, clipped to ``clip``, averaged."""
    clipped = []
    for x, y in zip(data.x_train, data.y_train, strict=True):
        model.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x.unsqueeze(0)), y.unsqueeze(0)).backward()
        gradient = torch.cat([p.grad.flatten() for p in model.parameters()])
        clipped.append(gradient * min(1.0, clip / float(gradient.norm())))
    return torch.stack(clipped).mean(0)


def test_each_rows_gradient_is_clipped_before_averaging():
    # Prepare: four rows whose gradients have norms 2.5 to 10; every row in the batch (batch_size = rows)
    data = _rows([10.0, -10.0, 5.0, 20.0], [0.0, 1.0, 1.0, 0.0])
    config = _config(noise=1e-9, clip=0.1, local_steps=1, batch_size=4, learning_rate=1.0)
    expected_step = -_clipped_mean_gradient(_logreg_at_zero(), data, clip=0.1)

    # Execute
    private = _logreg_at_zero()
    train(private, data, config, round_seed=0, dp=DPTrainer(config, rows=4, seed=0))
    plain = _logreg_at_zero()
    train(plain, data, config.model_copy(update={"dp": None}), round_seed=0)

    # Assert: Opacus's step is the mean of per-row clipped gradients, at most lr * clip long; plain SGD's is not
    assert torch.allclose(_flat(private), expected_step, atol=1e-6)
    assert float(_flat(private).norm()) <= 0.1 + 1e-6
    assert float(_flat(plain).norm()) > 10 * 0.1


@pytest.mark.parametrize(("fields", "steps"), [({"local_steps": 7}, 7), ({"local_steps": None, "local_epochs": 2}, 6)])
def test_a_round_takes_local_steps_exactly_or_epochs_times_one_over_the_sample_rate(fields, steps):
    # Prepare: 12 rows in expected batches of 4, so sample_rate = 1/3
    config = _config(**fields)
    dp = DPTrainer(config, rows=12, seed=0)
    sizes: list[int] = []
    model = make_model(ModelConfig(), 1)
    model.register_forward_hook(lambda _module, inputs, _output: sizes.append(len(inputs[0])))

    # Execute
    result = train(model, _separable(12), config, round_seed=0, dp=dp)

    # Assert: Poisson batches vary in size
    assert result.steps == dp.steps == dp.steps_per_round() == len(sizes) == steps
    assert dp.sample_rate == pytest.approx(1 / 3)


def test_one_accountant_counts_every_round_and_epsilon_grows():
    # Prepare
    config = _config(noise=1.1, local_steps=5)
    dp = DPTrainer(config, rows=12, seed=0)
    model = make_model(ModelConfig(), 1)
    reference = RDPAccountant()

    # Execute
    epsilons = []
    for round_number in range(3):
        train(model, _separable(12), config, round_seed=round_number, dp=dp)
        epsilons.append(dp.metrics()["privacy_epsilon"])
        for _ in range(5):
            reference.step(noise_multiplier=1.1, sample_rate=4 / 12)

    # Assert
    assert dp.steps == 15
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 3
    assert epsilons[-1] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
    assert dp.metrics()["privacy_delta"] == 1e-5


def test_noise_is_reproducible_only_with_a_test_seed():
    # Prepare
    config = _config(noise=1.0, local_steps=4)
    models = [make_model(ModelConfig(), 1, seed=0) for _ in range(4)]

    # Execute
    for model, seed in zip(models, [3, 3, 4, None], strict=True):
        train(model, _separable(12), config, round_seed=0, dp=DPTrainer(config, rows=12, seed=seed))

    # Assert
    assert torch.equal(_flat(models[0]), _flat(models[1]))
    assert not torch.equal(_flat(models[0]), _flat(models[2]))
    assert not torch.equal(_flat(models[0]), _flat(models[3]))


def test_fedprox_term_still_applies_under_dp_sgd():
    # Prepare: the same batches and noise with and without the proximal term
    config = _config(noise=0.01, clip=10.0, local_steps=30, learning_rate=0.5)
    start = _flat(make_model(ModelConfig(), 1, seed=3))

    # Execute
    free = make_model(ModelConfig(), 1, seed=3)
    train(free, _separable(12), config, round_seed=0, dp=DPTrainer(config, rows=12, seed=1))
    proximal = make_model(ModelConfig(), 1, seed=3)
    train(proximal, _separable(12), config, round_seed=0, fedprox_mu=1.0, dp=DPTrainer(config, rows=12, seed=1))

    # Assert
    assert 0 < (_flat(proximal) - start).norm() < (_flat(free) - start).norm()


def test_opacus_leaves_the_model_as_it_found_it():
    # Prepare
    config = _config()
    model = make_model(ModelConfig(name="mlp", hidden_units=4), 1)
    keys = list(model.state_dict())

    # Execute
    train(model, _separable(12), config, round_seed=0, dp=DPTrainer(config, rows=12, seed=0))

    # Assert: no hooks or per-sample attributes left, same state dict, plain training still works
    assert list(model.state_dict()) == keys
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert train(model, _separable(12), config.model_copy(update={"dp": None}), round_seed=0).steps == 3


def test_empty_poisson_batches_are_steps_too():
    # Prepare: 3 rows at sample rate 1/3: about 30% of batches are empty
    config = _config(local_steps=40, batch_size=1)

    # Execute
    result = train(make_model(ModelConfig(), 1), _separable(3), config, round_seed=0, dp=DPTrainer(config, 3, seed=0))

    # Assert
    assert result.steps == 40
    assert result.loss == result.loss  # not NaN


def test_rounds_are_charged_before_training_and_a_restart_continues(tmp_path: Path):
    # Prepare
    config = _config(noise=1.0, local_steps=5)
    budget = PrivacyBudget(epsilon=epsilon_spent(1.0, 1 / 3, 10, 1e-6) + 0.01, delta=1e-6)
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", budget, "club_01")
    dp = DPTrainer(config, rows=12, ledger=ledger, job_id="job-1", seed=0)
    model = make_model(ModelConfig(), 1)

    # Execute: round 0 is charged and trained; the site restarts; round 1 is charged, round 2 refused
    dp.charge_round(0)
    train(model, _separable(12), config, round_seed=0, dp=dp)
    restarted = DPTrainer(config, rows=12, ledger=ledger, job_id="job-1", seed=0)
    restarted.charge_round(1)
    charged = ledger.job_state("job-1", "dp_sgd")
    with pytest.raises(PrivacyBudgetExceeded, match=re.escape("round 2 of job 'job-1' (dp_sgd)")):
        restarted.charge_round(2)

    # Assert: the restart counts from the ledger; charged at the budget's delta, for the steps to be taken
    assert restarted.steps == 5
    assert charged == JobState(steps=10, epsilon=epsilon_spent(1.0, 1 / 3, 10, 1e-6))
    assert ledger.job_state("job-1", "dp_sgd") == charged


def test_steps_nobody_paid_for_are_caught(tmp_path: Path):
    # Prepare
    config = _config()
    dp = DPTrainer(config, rows=12, ledger=PrivacyLedger(tmp_path / "ledger.jsonl", None, "club_01"), job_id="j")

    # Execute
    train(make_model(ModelConfig(), 1), _separable(12), config, round_seed=0, dp=dp)

    # Assert
    with pytest.raises(RuntimeError, match="3 DP-SGD steps taken but only 0 charged"):
        dp.charge_round(1)


def test_dp_trainer_needs_the_dp_settings():
    with pytest.raises(ValueError, match=re.escape("DPTrainer needs TrainConfig.dp")):
        DPTrainer(TrainConfig(task=SPEC, local_steps=1), rows=10)


@pytest.mark.slow
def test_each_club_reports_the_epsilon_of_every_step_it_took(tmp_path: Path):
    # Prepare: three clubs; 3 steps a round, fewer than an epoch at batch size 64
    data = tmp_path / "clubs"
    write_clubs(data, 3, seed=0)
    module = load_job_module(JOBS_DIR / "fedavg_churn.py")
    dp = {"noise_multiplier": 1.3, "max_grad_norm": 1.0, "target_delta": 1e-5}
    train_config = TrainConfig.model_validate(
        {**module.SETTINGS.train.model_dump(), "dp": dp, "local_steps": 3, "local_epochs": None, "batch_size": 64}
    )
    settings = module.SETTINGS.model_copy(update={"train": train_config, "num_rounds": 2})
    sites = sorted(p.stem for p in data.glob("*.csv"))
    rows = {site: len(load_site_data(data / f"{site}.csv", SPEC).y_train) for site in sites}
    assert all(rows[site] > 64 * 3 for site in sites)

    # Execute
    workspace = simulate(build_recipe(module, settings), data_dir=data, sites=sites, workspace=tmp_path / "ws")

    # Assert: every club, every round, reports epsilon after 3 * (round + 1) steps at its own sample rate
    events = [json.loads(line) for line in (find_record_dir(workspace) / EVENTS_FILE).read_text().splitlines()]
    updates = [e for e in events if e["event"] == "site_update"]
    assert sorted((e["round"], e["site"]) for e in updates) == [(r, s) for r in range(2) for s in sites]
    for update in updates:
        steps = 3 * (update["round"] + 1)
        expected = epsilon_spent(1.3, 64 / rows[update["site"]], steps, 1e-5)
        assert update["metrics"]["privacy_epsilon"] == pytest.approx(expected, rel=1e-9)
        assert update["metrics"]["privacy_delta"] == 1e-5
    for site in sites:  # each club's ledger, in its workspace's local/ (no budget configured: recorded only)
        ledger = PrivacyLedger(ledger_path(workspace / site), None, site)
        assert ledger.job_state("simulate_job", "dp_sgd").steps == 6
        assert ledger.spent_total() == pytest.approx(epsilon_spent(1.3, 64 / rows[site], 6, 1e-5), rel=1e-9)
