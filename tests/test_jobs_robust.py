"""A job selects a robust aggregator by option; infeasible or unsupported choices fail when it is configured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nvflare.apis.dxo import DataKind
from nvflare.client.config import TransferType
from pydantic import ValidationError

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, build_recipe, export_into, load_job_module, recipe_args
from fitfed.spec import load_spec

JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"


def _settings(**fields: object) -> JobSettings:
    train = TrainConfig(task=load_spec("churn"), local_epochs=1, **fields.pop("train", {}))
    return JobSettings(**{"name": "robust_test", "num_rounds": 2, "min_clients": 5, "train": train, **fields})


def test_krum_with_fewer_than_2f_plus_3_clubs_fails_when_the_job_is_configured():
    with pytest.raises(ValidationError, match=r"krum\(num_faulty=2\) cannot work with min_clients=5: .* 2f\+3 = 7"):
        _settings(aggregator={"method": "krum", "num_faulty": 2})


def test_feasibility_is_checked_against_min_updates_the_fewest_a_round_may_aggregate():
    with pytest.raises(ValidationError, match=r"cannot work with min_updates=4: .* Fix: raise min_updates"):
        _settings(min_updates=4, aggregator={"method": "krum", "num_faulty": 1})


def test_trim_fraction_that_would_trim_nobody_fails_when_the_job_is_configured():
    with pytest.raises(ValidationError, match=r"trim_fraction=0.1 trims floor\(0.1 \* n\) .* below n=10"):
        _settings(aggregator={"method": "trimmed_mean", "trim_fraction": 0.1})


def test_aggregator_with_an_algorithm_that_has_its_own_server_update_is_refused():
    with pytest.raises(ValidationError, match="aggregator='median' needs train.algorithm 'fedavg' or 'fedprox'"):
        _settings(aggregator={"method": "median"}, train={"algorithm": "scaffold"})


def test_settings_with_an_aggregator_survive_a_dump_and_reload():
    # Prepare (the CLI re-validates a job's settings after overrides this way)
    settings = _settings(aggregator={"method": "multikrum", "num_faulty": 1, "norm_bound": {"max_norm": 3.0}})

    # Execute
    again = JobSettings.model_validate(settings.model_dump())

    # Assert
    assert again == settings


def test_without_an_aggregator_flares_aggregator_gets_weight_differences():
    args = recipe_args(_settings())
    assert "aggregator" not in args
    assert args["params_transfer_type"] == TransferType.DIFF and args["aggregator_data_kind"] == DataKind.WEIGHT_DIFF


def test_exported_job_carries_the_aggregator_and_sends_weight_differences(tmp_path: Path):
    # Prepare: the demo job, with median aggregation
    module = load_job_module(JOBS_DIR / "fedavg_churn.py")
    settings = JobSettings.model_validate({**module.SETTINGS.model_dump(), "aggregator": {"method": "median"}})

    # Execute
    folder = export_into(build_recipe(module, settings), tmp_path)

    # Assert
    server = json.loads((folder / "app" / "config" / "config_fed_server.json").read_text())
    aggregator = server["workflows"][0]["args"]["aggregator"]
    assert aggregator == {
        "path": "fitfed.aggregation.aggregator.RobustAggregator",
        "args": {"config": {"method": "median"}, "min_updates": 2},
    }
    client = json.loads((folder / "app" / "config" / "config_fed_client.json").read_text())
    assert client["executors"][0]["executor"]["args"]["params_transfer_type"] == "DIFF"
    for module_file in ("aggregator.py", "round.py", "robust.py", "rules.py", "config.py", "summary.py"):
        assert (folder / "app" / "custom" / "fitfed" / "aggregation" / module_file).is_file(), module_file
