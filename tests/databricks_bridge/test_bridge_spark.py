"""The Spark entry point in Spark local mode: many jobs' raw audit files into one table, no duplicates."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridge_jobs import crafted_job, flare_audit_lines, record_dir

from databricks_bridge import BridgeError
from databricks_bridge.job_result import load_job_result

pyspark = pytest.importorskip("pyspark", reason="PySpark is the `spark` extra (make test installs it)")
if shutil.which("java") is None:
    pytest.skip("Spark local mode needs a Java runtime (17) on PATH", allow_module_level=True)

from databricks_bridge.spark_ingest import ingest  # noqa: E402 - after the skips


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from pyspark.sql import SparkSession

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers import fitfed from this environment
    session = (
        SparkSession.builder.master("local[1]")
        .appName("fitfed-bridge-test")
        .config("spark.python.use.daemon", "false")  # no Python daemon for tests/conftest.py to reap between tests
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .getOrCreate()
    )
    yield session
    session.stop()
    _stop_jvm()
    if previous is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = previous


def _stop_jvm() -> None:
    """Stop the JVM this module started (PySpark leaves it running until the interpreter exits)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    process = getattr(gateway, "proc", None)
    gateway.shutdown()
    SparkContext._gateway = SparkContext._jvm = None
    if process is not None:
        process.terminate()
        process.wait(timeout=20)


def test_ingest_many_jobs_twice(spark, tmp_path: Path):  # noqa: ANN001
    # Prepare: two jobs, one with audit.log files from the server and a club
    source = tmp_path / "raw"
    first, second = crafted_job(source / "job_a", rounds=2), crafted_job(source / "job_b", rounds=3)
    (second / "server" / "simulate_job" / "audit.log").write_text(flare_audit_lines("simulate_job", "server", 4))
    (second / "club_01").mkdir()
    (second / "club_01" / "audit.log").write_text(flare_audit_lines("simulate_job", "club_01", 3))

    # Execute
    added = ingest(spark, str(source), "fl_audit_events", table_format="parquet")
    again = ingest(spark, str(source), "fl_audit_events", table_format="parquet")

    # Assert: every event once, keyed to its job; nothing added the second time
    expected = {e["hash"] for job in (first, second) for e in load_job_result(job).events}
    table = spark.table("fl_audit_events")
    rows = table.collect()
    assert (added, again, len(rows)) == (len(expected) + 7, 0, len(expected) + 7)
    assert {r.event_id for r in rows if r.service_name == "fitfed"} == expected
    keys = {load_job_result(job).job_key for job in (first, second)}
    assert {r.job_id for r in rows} == keys
    levels = {(r.site, r.audit_level) for r in rows if r.service_name == "nvflare"}
    assert levels == {(s, level) for s in ("server", "club_01") for level in ("FEDERATION_LEVEL", "JOB_LEVEL")}


def test_tampered_job_stops_the_ingest(spark, tmp_path: Path):  # noqa: ANN001
    # Prepare
    source = tmp_path / "raw"
    crafted_job(source / "good")
    bad = crafted_job(source / "bad")
    events = record_dir(bad) / "events.jsonl"
    events.write_text(events.read_text().replace('"accuracy": 0.6', '"accuracy": 0.7', 1))

    # Execute / Assert
    with pytest.raises(BridgeError, match=r"nothing written: bad/server/simulate_job/fitfed/events.jsonl: refusing"):
        ingest(spark, str(source), "tampered_audit_events", table_format="parquet")
    assert not spark.catalog.tableExists("tampered_audit_events")
