"""A tiny run of the heart_disease benchmark: fitfed's real FLARE job, FLamby's baselines, the published table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.heart_disease import FLAMBY, HOSPITALS, PUBLISHED, BenchSettings, job_settings, main


def test_methods_use_flambys_settings():
    settings = BenchSettings()
    fedavg = job_settings(settings, FLAMBY["fedavg"], seed=3)
    assert (fedavg.num_rounds, fedavg.train.local_steps, fedavg.train.batch_size) == (15, 100, 4)
    assert (fedavg.train.learning_rate, fedavg.train.weight_by, fedavg.train.seed) == (0.001, "rows", 3)
    yogi = job_settings(settings, FLAMBY["fedyogi"], seed=0)
    assert yogi.train.algorithm == "fedopt" and yogi.server_optimizer.name == "yogi"
    assert job_settings(settings, FLAMBY["fedprox"], seed=0).fedprox_mu == 0.1


@pytest.mark.slow
def test_smoke_run_writes_json_and_a_table_beside_the_published_values(tmp_path: Path):
    # Execute: one seed, one FedYogi round of 2 steps in NVFlare's simulator, one centralised epoch
    argv = ["--seeds", "0", "--rounds", "1", "--local-steps", "2", "--centralised-epochs", "1",
            "--methods", "fedyogi", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0

    # Assert: baselines and the federated run, each scored at every hospital, beside FLamby's values
    payload = json.loads((tmp_path / "heart_disease.json").read_text())
    assert {"command", "machine", "settings", "summary", "runs"} <= payload.keys()
    assert payload["command"].startswith("fitfed bench heart_disease")
    summary = payload["summary"]
    assert list(summary) == ["pooled", *[f"local_{h}" for h in HOSPITALS], "fedyogi"]
    assert summary["pooled"]["published"] == PUBLISHED["pooled"] and summary["fedyogi"]["published"] == 0.731
    assert summary["fedyogi"]["best_federated"] is True
    for run in payload["runs"]:
        assert sorted(run["per_hospital"]) == sorted(HOSPITALS)
        assert 0.0 <= run["accuracy"] <= 1.0
    table = (tmp_path / "heart_disease.md").read_text()
    assert "| pooled |" in table and "| 0.731 |" in table
