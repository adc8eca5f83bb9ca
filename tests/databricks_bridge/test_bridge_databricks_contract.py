"""Databricks mode against a loopback fake: the real mlflow and databricks-sdk clients, every call checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bridge_jobs import crafted_job, flare_audit_lines
from fake_databricks import FAKE_TOKEN, FakeDatabricks

from databricks_bridge import BridgeError, BridgeSettings, export_job, settings_from_environment

# The contract: the routes a Databricks-mode export may call (ids and file paths folded). A client
# upgrade that calls anything else fails here, as it would need checking against real Databricks.
EXPECTED_ROUTES = {
    "GET /.well-known/databricks-config",  # databricks-sdk host metadata
    # MLflow tracking
    "GET /api/2.0/mlflow/experiments/get-by-name",
    "POST /api/2.0/mlflow/experiments/create",
    "POST /api/2.0/mlflow/runs/search",
    "POST /api/2.0/mlflow/runs/create",
    "GET /api/2.0/mlflow/runs/get",
    "POST /api/2.0/mlflow/runs/log-batch",
    "POST /api/2.0/mlflow/runs/set-tag",
    "POST /api/2.0/mlflow/runs/update",
    "POST /api/2.0/mlflow/runs/outputs",
    "GET /api/2.0/mlflow/metrics/get-history",
    "POST /api/2.0/mlflow/logged-models",
    "GET /api/2.0/mlflow/logged-models/{model_id}",
    "PATCH /api/2.0/mlflow/logged-models/{model_id}",
    "PATCH /api/2.0/mlflow/logged-models/{model_id}/tags",
    # Unity Catalog model registry
    "POST /api/2.0/mlflow/unity-catalog/registered-models/create",
    "GET /api/2.0/mlflow/unity-catalog/registered-models/get",
    "POST /api/2.0/mlflow/unity-catalog/model-versions/create",
    "POST /api/2.0/mlflow/unity-catalog/model-versions/finalize",
    "GET /api/2.0/mlflow/unity-catalog/registered-models/alias",
    "POST /api/2.0/mlflow/unity-catalog/registered-models/alias",
    # Files API (run and model artifacts, UC model files, the staged audit rows) and SQL
    "PUT /api/2.0/fs/files/…",
    "GET /api/2.0/fs/files/…",
    "HEAD /api/2.0/fs/directories/…",
    "GET /api/2.0/fs/directories/…",
    "POST /api/2.0/fs/create-download-url",
    "POST /api/2.0/sql/statements",
}
READ_ONLY = {
    "GET /.well-known/databricks-config",
    "GET /api/2.0/mlflow/experiments/get-by-name",
    "POST /api/2.0/mlflow/runs/search",
}


@pytest.fixture
def settings() -> BridgeSettings:
    return BridgeSettings(target="databricks", warehouse_id="0123abcd", catalog="ml", schema_name="fl")


def test_export_to_databricks(tmp_path: Path, fake_databricks: FakeDatabricks, settings: BridgeSettings):
    # Prepare: a finished job with a server audit.log
    job = crafted_job(tmp_path / "job", rounds=2)
    (job / "server" / "simulate_job" / "audit.log").write_text(flare_audit_lines("simulate_job", "server", 3))
    fake = fake_databricks

    # Execute
    report = export_job(job, settings)

    # Assert: exactly the contracted routes, all authenticated with the environment's token
    assert fake.unexpected == []
    assert set(fake.routes_called()) == EXPECTED_ROUTES
    assert all(c.authorization == f"Bearer {FAKE_TOKEN}" for c in fake.calls if "well-known" not in c.path)
    assert report.model_version == "1" and report.audit_rows == 18 + 3  # 18 run-record events, 3 audit lines

    # Assert: the audit table and Volume are created if missing, and rows go in by MERGE from the Volume
    create_volume, create_table, merge, merge_done = fake.state.statements
    assert create_volume.startswith("CREATE VOLUME IF NOT EXISTS `ml`.`fl`.`fitfed_audit_staging`")
    assert create_table.startswith("CREATE TABLE IF NOT EXISTS `ml`.`fl`.`fl_audit_events` (event_id STRING NOT NULL")
    assert merge.startswith(
        "MERGE INTO `ml`.`fl`.`fl_audit_events` AS t USING (SELECT * FROM read_files('/Volumes/ml/fl/"
    )
    assert "export_done" not in merge and merge_done.startswith("MERGE INTO")
    staged = [p for p in fake.state.files if p.startswith(f"/Volumes/ml/fl/fitfed_audit_staging/{report.job_key}/")]
    rows = [json.loads(line) for p in staged for line in fake.state.files[p].decode().splitlines()]
    assert {r["service_name"] for r in rows} == {"fitfed", "nvflare", "fitfed.bridge"}
    assert {r["event_time"][-6:] for r in rows} == {"+00:00"}

    # Assert: the model version in Unity Catalog, its files through the Files API, lineage tags, champion alias
    model = fake.state.models["ml.fl.churn_model"]
    version = model["versions"]["1"]
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert (version["status"], model["aliases"]) == ("READY", {"champion": "1"})
    assert (
        tags["fitfed_job_id"] == report.job_key
        and tags["fitfed_rounds"] == "2"
        and len(tags["fitfed_audit_head"]) == 64
    )
    model_files = {p.removeprefix("/Models/ml/fl/churn_model/1/") for p in fake.state.files if p.startswith("/Models/")}
    assert {"MLmodel", "data/model.pth", "extra_files/global_model.json"} <= model_files
    assert "pickle" in fake.state.files["/Models/ml/fl/churn_model/1/MLmodel"].decode()

    # Assert: run params and artifacts; and no secret anywhere it was sent
    [run] = fake.state.runs.values()
    assert run["params"]["algorithm"] == "fedavg" and run["tags"]["fitfed.status"] == "finished"
    run_files = [p for p in fake.state.files if f"/Runs/{run['info']['run_id']}/artifacts/" in p]
    assert {p.rsplit("/artifacts/", 1)[1] for p in run_files} >= {
        "config/fitfed_train.json",
        "plots/metrics_by_round.png",
    }
    sent = [json.dumps(c.body) for c in fake.calls if not isinstance(c.body, bytes)] + [
        b.decode("latin-1") for b in fake.state.files.values()
    ]
    assert not any(FAKE_TOKEN in text for text in sent)

    # Execute / Assert: a second export reads, finds nothing new, writes nothing
    before = len(fake.calls)
    again = export_job(job, settings)
    assert again.nothing_new
    assert set(fake.routes_called()[before:]) <= READ_ONLY


def test_databricks_mode_needs_a_workspace(job: Path, monkeypatch: pytest.MonkeyPatch, settings: BridgeSettings):
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE", "DATABRICKS_WAREHOUSE_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        BridgeError, match="Databricks mode needs a workspace: set DATABRICKS_HOST and DATABRICKS_TOKEN"
    ):
        export_job(job, settings)
    with pytest.raises(BridgeError, match="target='databricks' needs warehouse_id"):
        settings_from_environment(target="databricks")


def test_the_fake_refuses_what_it_does_not_know():
    import requests

    with FakeDatabricks() as fake:
        response = requests.get(f"{fake.url}/api/2.1/clusters/list", timeout=5)
    assert response.status_code == 501
    assert fake.unexpected == ["GET /api/2.1/clusters/list"]
