"""Each algorithm's job really runs in NVFlare's simulator and learns; a bad site fails alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fitfed.audit import verify_chain
from fitfed.config import TrainConfig
from fitfed.datasets.heart_disease import write_sites
from fitfed.jobs import build_recipe, simulate
from fitfed.report import load_report
from fitfed.task import load_site_data
from jobs.conftest import job_module

pytestmark = pytest.mark.slow


def _run(name: str, data: Path, workspace: Path, **overrides: object):
    module = job_module(name)
    settings = module.SETTINGS.model_copy(update=overrides)
    sites = sorted(p.stem for p in data.glob("*.csv"))
    return load_report(simulate(build_recipe(module, settings), data_dir=data, sites=sites, workspace=workspace))


def _majority_accuracy(data: Path, config: TrainConfig) -> float:
    rates = []
    for csv in sorted(data.glob("*.csv")):
        y = load_site_data(csv, config.task).y_test.numpy()
        rates.append(max(y.mean(), 1 - y.mean()))
    return float(np.mean(rates))


@pytest.mark.parametrize("name", ["fedavg_churn", "fedprox_churn", "scaffold_churn", "fedopt_churn"])
def test_algorithm_learns_churn(name: str, club_data: Path, tmp_path: Path):
    # Execute
    report = _run(name, club_data, tmp_path, num_rounds=4)

    # Assert: every round completed with all three clubs, and the final model beats the start and the baselines
    assert report.finished and report.aborted is None
    assert report.completed_rounds == 4 and sorted(report.rounds) == [0, 1, 2, 3, 4]
    assert all(len(report.rounds[r]) == 3 for r in report.rounds)
    initial_auc, final_auc = report.mean(0, "roc_auc"), report.mean(4, "roc_auc")
    assert final_auc > initial_auc + 0.1
    assert final_auc > 0.75  # a majority-class model has AUC 0.5
    assert report.mean(4, "accuracy") > _majority_accuracy(club_data, job_module(name).SETTINGS.train)
    assert len(verify_chain(report.record_dir / "events.jsonl")) > 10  # the run record is an intact hash chain
    state = torch.load(report.final_model)
    assert all(torch.isfinite(t).all() for t in state.values())


def test_heart_disease_runs_on_the_real_hospitals(tmp_path: Path):
    # Prepare
    data = tmp_path / "heart"
    write_sites(data)

    # Execute: FLamby's settings, fewer rounds to keep the suite short
    report = _run("fedavg_heart_disease", data, tmp_path / "ws", num_rounds=3)

    # Assert
    assert sorted(report.sites) == ["cleveland", "hungarian", "switzerland", "va"]
    assert report.completed_rounds == 3 and len(report.rounds[3]) == 4
    assert 0.5 < report.mean(3, "accuracy") <= 1.0


def test_malformed_site_fails_alone(club_data: Path, tmp_path: Path):
    # Prepare: club_03's file gets a non-numeric age in every row; the others are untouched
    data = tmp_path / "clubs"
    data.mkdir()
    for csv in club_data.glob("*.csv"):
        (data / csv.name).write_bytes(csv.read_bytes())
    bad = data / "club_03.csv"
    lines = bad.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    bad.write_text("\n".join([lines[0]] + [",".join([r[0], "ZZ42"] + r[2:]) for r in rows]) + "\n")

    # Execute
    report = _run("fedavg_churn", data, tmp_path / "ws", num_rounds=2)

    # Assert: the job finished without club_03, whose log names the file, the column and the row count
    assert report.finished and report.completed_rounds == 2
    assert all(set(report.rounds[r]) == {"club_01", "club_02"} for r in report.rounds)
    assert report.failures[0] == ["club_03"]
    assert report.final_model.is_file()
    site_log = (tmp_path / "ws" / "fedavg_churn" / "club_03" / "log.txt").read_text()
    assert f"{bad}: column 'age': {len(rows)} row(s) are not numbers" in site_log
    assert "ZZ42" not in site_log
