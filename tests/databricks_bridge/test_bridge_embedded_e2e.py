"""End to end: a real FedAvg job in NVFlare's simulator, exported to the embedded lakehouse."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from deltalake import DeltaTable

from databricks_bridge import BridgeSettings, TamperedTrailError, export_job
from databricks_bridge.delta_sink import LocalWarehouse
from databricks_bridge.job_result import load_job_result
from databricks_bridge.mlflow_sink import local_target, mlflow_session
from databricks_bridge.model_files import load_model
from fitfed.datasets.churn import write_clubs
from fitfed.jobs import build_recipe, load_job_module, simulate

pytestmark = pytest.mark.slow
JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"
MODEL = "main.fitfed.churn_model"


def test_simulator_job_to_lakehouse(tmp_path: Path):
    # Prepare: a 2-round FedAvg run of three SYNTHETIC clubs
    data = tmp_path / "clubs"
    write_clubs(data, 3, seed=0)
    module = load_job_module(JOBS_DIR / "fedavg_churn.py")
    recipe = build_recipe(module, module.SETTINGS.model_copy(update={"num_rounds": 2}))
    job = simulate(recipe, data_dir=data, sites=["club_01", "club_02", "club_03"], workspace=tmp_path / "ws")
    settings = BridgeSettings(state_dir=tmp_path / "lakehouse")

    # Execute
    report = export_job(job, settings)

    # Assert: the registered model loads by alias and predicts what the state dict predicts
    assert report.model_version == "1" and report.round_models == 2 and report.rounds_logged == 3
    reference = load_model(job / "server/simulate_job/fitfed/global_model.pt",
                           job / "server/simulate_job/fitfed/global_model.json")  # fmt: skip
    x = torch.randn(8, len(reference.feature_names))
    search_path = list(sys.path)
    with mlflow_session(local_target(settings.state_dir, "fitfed")):
        registered = mlflow.pytorch.load_model(f"models:/{MODEL}@champion")
        served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert sys.path == search_path  # loading adds no code folder that could shadow fitfed
    assert torch.allclose(registered(x), reference.module(x))
    predicted = served.predict(pd.DataFrame(x.numpy(), columns=reference.feature_names)).to_numpy().ravel()
    assert np.allclose(predicted, reference.module(x).detach().numpy(), atol=1e-6)

    # Assert: every run-record event is one audit row, plus the export's own
    table = LocalWarehouse(settings.state_dir / "warehouse")
    rows = table.read("main.fitfed.fl_audit_events").to_pylist()
    events = load_job_result(job).events
    assert sorted(r["event_id"] for r in rows if r["service_name"] == "fitfed") == sorted(e["hash"] for e in events)
    assert {r["job_id"] for r in rows} == {report.job_key}
    actions = {r["action_name"] for r in rows}
    assert {"run_started", "round_started", "update_accepted", "round_ended", "run_finished", "export_done"} <= actions

    # Execute / Assert: a second export changes nothing and says so
    path = str(table.table_path("main.fitfed.fl_audit_events"))
    version = DeltaTable(path).version()
    assert export_job(job, settings).nothing_new
    assert DeltaTable(path).version() == version and len(table.read("main.fitfed.fl_audit_events")) == len(rows)

    # Execute / Assert: an edited event is refused
    events_file = job / "server/simulate_job/fitfed/events.jsonl"
    events_file.write_text(events_file.read_text().replace('"accepted": true', '"accepted": false', 1))
    with pytest.raises(TamperedTrailError, match=r"events.jsonl:\d+: its content does not match its hash"):
        export_job(job, settings)
