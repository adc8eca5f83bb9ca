"""The committed job folders are exactly what their definitions export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fitfed.jobs import build_recipe, compare_export, export_into
from jobs.conftest import JOBS_DIR, job_module

JOB_NAMES = sorted(p.stem for p in JOBS_DIR.glob("*.py"))


def test_every_job_has_a_committed_folder():
    assert set(JOB_NAMES) == {
        "fedavg_churn",
        "fedprox_churn",
        "scaffold_churn",
        "fedopt_churn",
        "fedavg_heart_disease",
        "fedavg_he_churn",
        "fedavg_masked_churn",
    }
    for name in JOB_NAMES:
        assert (JOBS_DIR / name / "meta.json").is_file(), f"jobs/{name}/ is missing: run `fitfed jobs export`"


@pytest.mark.parametrize("name", JOB_NAMES)
def test_committed_folder_matches_definition(name: str):
    # Execute
    differences = compare_export(build_recipe(job_module(name)), JOBS_DIR)

    # Assert
    assert differences == [], f"jobs/{name}/ drifted from jobs/{name}.py; run `fitfed jobs export`"


def test_drift_is_detected(tmp_path: Path):
    # Prepare: a fresh export, then a hand edit of its config
    module = job_module("fedavg_churn")
    folder = export_into(build_recipe(module), tmp_path)
    config = folder / "app" / "config" / "fitfed_train.json"
    config.write_text(config.read_text().replace('"batch_size": 64', '"batch_size": 65'))

    # Execute
    differences = compare_export(build_recipe(module), tmp_path)

    # Assert
    assert differences == ["app/config/fitfed_train.json differs"]


def test_exported_job_is_portable_and_ships_its_training_config(tmp_path: Path):
    # Execute
    folder = export_into(build_recipe(job_module("scaffold_churn")), tmp_path)

    # Assert: no path of this machine, the client script found inside the job, the config validated
    client = json.loads((folder / "app" / "config" / "config_fed_client.json").read_text())
    executor_args = client["executors"][0]["executor"]["args"]
    assert executor_args["task_script_path"] == "fitfed/client.py"
    assert (folder / "app" / "custom" / "fitfed" / "client.py").is_file()
    for path in folder.rglob("*.json"):
        assert str(Path.home()) not in path.read_text() and "/work/" not in path.read_text(), path
    train = json.loads((folder / "app" / "config" / "fitfed_train.json").read_text())
    assert train["algorithm"] == "scaffold" and train["task"]["name"] == "churn"
