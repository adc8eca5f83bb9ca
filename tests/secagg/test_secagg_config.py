"""The secure_aggregation job option: what it refuses, and what it puts into an exported job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from fitfed.cli import main as fitfed_main
from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, build_recipe, export_into, load_job_module
from fitfed.secagg.config import SecureAggregation
from fitfed.spec import load_spec

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def _settings(threshold: int = 3, **fields: object) -> JobSettings:
    train = TrainConfig(task=load_spec("churn"), local_epochs=1, **fields.pop("train", {}))
    return JobSettings(**{"name": "masked", "num_rounds": 2, "min_clients": 4, "train": train,
                          "secure_aggregation": SecureAggregation(threshold=threshold), **fields})  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"threshold": 5}, r"threshold t=5 exceeds min_clients=4: .* Fix: lower the threshold or raise min_clients"),
        ({"he": True}, r"secure_aggregation and he=True cannot be combined"),
        (
            {"aggregator": {"method": "trimmed_mean", "trim_fraction": 0.25}},
            r"cannot be combined with aggregator trimmed_mean.*the server sees only their sum",
        ),
        ({"train": {"algorithm": "scaffold"}}, r"train.algorithm must be 'fedavg' or 'fedprox', not 'scaffold'"),
    ],
    ids=["threshold-above-min-clients", "with-he", "with-robust-aggregation", "scaffold"],
)
def test_settings_masking_cannot_honour_are_refused_with_the_fix(fields: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        _settings(**fields)


def test_threshold_below_two_is_refused():
    with pytest.raises(ValidationError, match="threshold"):
        SecureAggregation(threshold=1)


def test_export_swaps_in_the_masked_controller_and_gives_every_club_the_protocol(tmp_path: Path):
    # Execute
    module = load_job_module(JOBS / "fedavg_masked_churn.py")
    folder = export_into(build_recipe(module), tmp_path)

    # Assert: the server runs MaskedFedAvg with the threshold; clubs get the protocol's component and both filters
    app = folder / "app"
    server = json.loads((app / "config" / "config_fed_server.json").read_text())
    controller = server["workflows"][0]
    assert controller["path"] == "fitfed.secagg.controller.MaskedFedAvg"
    assert controller["args"]["threshold"] == module.SETTINGS.secure_aggregation.threshold
    client = json.loads((app / "config" / "config_fed_client.json").read_text())
    assert [e["executor"]["path"] for e in client["executors"]] == [
        "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor"
    ]  # the key exchanges are aux messages the component answers; training is the only task
    assert {c["path"] for c in client["components"]} >= {"fitfed.secagg.club.SecAggClub"}
    data_filters = [f["path"] for group in client["task_data_filters"] for f in group["filters"]]
    result_filters = [f["path"] for group in client["task_result_filters"] for f in group["filters"]]
    assert data_filters == ["fitfed.secagg.club.ReadRoundPlan"] and result_filters == ["fitfed.secagg.club.MaskUpdate"]
    assert (app / "custom" / "fitfed" / "secagg" / "shamir.py").is_file()  # every protocol module ships


def test_masked_job_is_refused_by_the_simulator_command_with_the_way_forward(tmp_path: Path, capsys):
    assert fitfed_main(["run", "fedavg_masked_churn", "--data", str(tmp_path)]) == 1
    assert "provisioned kits" in capsys.readouterr().err
