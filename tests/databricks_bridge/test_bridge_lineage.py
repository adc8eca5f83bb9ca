"""Jobs resumed after a server crash: a job and its continuation exported as one training, tamper-evident."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bridge_jobs import (
    CONTINUATION_JOB,
    CRASHED_JOB,
    REFUSED_JOB,
    crashed_and_resumed,
    flare_audit_lines,
    refused_resume,
    write_events,
)
from deltalake import DeltaTable
from mlflow import MlflowClient

from databricks_bridge import BridgeError, BridgeSettings, TamperedTrailError, export_job
from databricks_bridge.delta_sink import LocalWarehouse
from databricks_bridge.job_result import load_job_result
from databricks_bridge.spark_ingest import rows_for_job

MODEL = "main.fitfed.churn_model"
TABLE = "main.fitfed.fl_audit_events"
JOB_IDS = f"{CRASHED_JOB},{CONTINUATION_JOB}"


def _client(settings: BridgeSettings) -> MlflowClient:
    uri = f"sqlite:///{(settings.state_dir / 'mlflow.db').resolve()}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(settings: BridgeSettings) -> list:
    client = _client(settings)
    return client.search_runs([client.get_experiment_by_name("fitfed").experiment_id])


def _rows(settings: BridgeSettings) -> list[dict]:
    return LocalWarehouse(settings.state_dir / "warehouse").read(TABLE).to_pylist()


def _table_version(settings: BridgeSettings) -> int:
    return DeltaTable(str(settings.state_dir / "warehouse" / "main" / "fitfed" / "fl_audit_events")).version()


def _record(job: Path) -> Path:
    return job / "workspace" / "fitfed"


def _lineage_copy(job: Path) -> Path:
    return _record(job) / "lineage" / CRASHED_JOB / "events.jsonl"


def _mean_accuracy(step: int, quality: float) -> float:
    """The mean over the three clubs of bridge_jobs._metrics' accuracy."""
    return 0.62 + 0.01 * step + quality


def test_continuation_is_exported_as_one_training(tmp_path: Path, lakehouse: BridgeSettings):
    # Prepare: the crashed job (rounds 0 and 1 completed, round 2 interrupted) was never exported
    crashed, resumed = crashed_and_resumed(tmp_path)

    # Execute
    report = export_job(resumed, lakehouse)
    again = export_job(resumed, lakehouse)

    # Assert: one run for the training, every round once with steps continuing across the two jobs
    [run] = _runs(lakehouse)
    assert (report.run_id, report.new_run, report.job_ids) == (run.info.run_id, True, JOB_IDS.split(","))
    assert (report.rounds_logged, report.round_models, report.model_version) == (6, 5, "1")
    client = _client(lakehouse)
    history = sorted(client.get_metric_history(run.info.run_id, "global/accuracy"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1, 2, 3, 4, 5]  # round r: the global model after r rounds
    from_crashed = [_mean_accuracy(r, 0.0) for r in (0, 1)]
    from_continuation = [_mean_accuracy(r, 0.1) for r in (2, 3, 4, 5)]  # 5: the final model's evaluation
    assert [m.value for m in history] == pytest.approx(from_crashed + from_continuation)
    assert all(m.value != pytest.approx(_mean_accuracy(2, -0.3)) for m in history)  # the lost round 2 is not logged
    assert [m.step for m in client.get_metric_history(run.info.run_id, "club_03/accuracy")] == [0, 1, 2, 3, 4, 5]

    # Assert: the run is named for the training's first job and lists both jobs
    tags = run.data.tags
    assert (tags["fitfed.lineage_root"], tags["fitfed.job_id"], tags["fitfed.job_ids"]) == (
        CRASHED_JOB,
        CRASHED_JOB,
        JOB_IDS,
    )
    assert run.info.status == "FINISHED" and run.data.params["rounds_completed"] == "5"
    rounds = {a.path for a in client.list_artifacts(run.info.run_id, "rounds")}
    assert rounds == {f"rounds/global_model_round_{r}.pt" for r in range(1, 6)}
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert (version.tags["fitfed_job_id"], version.tags["fitfed_job_ids"], version.tags["fitfed_rounds"]) == (
        CONTINUATION_JOB,
        JOB_IDS,
        "5",
    )

    # Assert: every event of both records is a row under its own job, plus the crash and the resume
    rows = _rows(lakehouse)
    fitfed = {r["event_id"]: r for r in rows if r["service_name"] == "fitfed"}
    for job in (crashed, resumed):
        events = load_job_result(job).events
        assert {fitfed[e["hash"]]["job_id"] for e in events} == {load_job_result(job).job_key}
    [interrupted] = [r for r in rows if r["action_name"] == "run_interrupted"]
    assert (interrupted["job_id"], interrupted["site"], interrupted["round"]) == (CRASHED_JOB, "server", 2)
    params = dict(interrupted["request_params"])
    assert (params["resumed_by"], params["last_completed_round"], params["lost_rounds"]) == (
        CONTINUATION_JOB,
        "1",
        "[2]",
    )
    assert interrupted["response"]["error_message"] == (
        f"the run record ends without run_finished: its server stopped mid-run; job {CONTINUATION_JOB} redid round 2"
    )
    [resumed_row] = [r for r in rows if r["action_name"] == "run_resumed"]
    assert (resumed_row["job_id"], dict(resumed_row["request_params"])["next_round"]) == (CONTINUATION_JOB, "2")
    lost = [r for r in rows if r["job_id"] == CRASHED_JOB and r["round"] == 2 and r["action_name"] == "update_accepted"]
    assert len(lost) == 2  # the interrupted round's updates stay in the audit trail

    # Assert: Spark's executors read the same rows from the same files
    files = [(str(p.relative_to(resumed)), p.read_bytes()) for p in resumed.rglob("events.jsonl")]
    assert {r["event_id"] for r in rows_for_job(resumed.name, files)} == set(fitfed)

    # Assert: exporting again changes nothing
    assert again.nothing_new and again.run_id == report.run_id
    assert len(_rows(lakehouse)) == len(rows) and len(_runs(lakehouse)) == 1


def test_job_exported_before_its_crash_keeps_its_run(tmp_path: Path, lakehouse: BridgeSettings):
    # Prepare: the crashed job as exported while it ran (round 0 done, round 1 under way), with its server's audit.log
    crashed, resumed = crashed_and_resumed(tmp_path)
    running = tmp_path / "running"
    shutil.copytree(crashed, running)
    events_file = _record(running) / "events.jsonl"
    events_file.write_text("".join(events_file.read_text().splitlines(keepends=True)[:8]))
    (_record(running) / "rounds" / "global_model_round_2.pt").unlink()
    (crashed / "workspace" / "audit.log").write_text(flare_audit_lines(CRASHED_JOB, "server", 3))

    # Execute
    before = export_job(running, lakehouse)
    after = export_job(resumed, lakehouse)

    # Assert: the continuation went on in the crashed job's run, adding only what was new
    [run] = _runs(lakehouse)
    assert (before.new_run, after.new_run, after.run_id) == (True, False, before.run_id)
    assert (before.rounds_logged, after.rounds_logged, after.round_models) == (1, 5, 4)
    history = _client(lakehouse).get_metric_history(run.info.run_id, "global/accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4, 5]
    assert (run.data.tags["fitfed.job_ids"], run.info.status) == (JOB_IDS, "FINISHED")

    # Execute: the crashed job's own result, now that its training was exported from the continuation
    crashed_later = export_job(crashed, lakehouse)
    crashed_again = export_job(crashed, lakehouse)

    # Assert: it adds only its audit.log lines, once, and touches no run
    assert (crashed_later.continued_by, crashed_later.run_id, crashed_later.audit_rows) == (
        CONTINUATION_JOB,
        run.info.run_id,
        3,
    )
    assert crashed_again.nothing_new
    assert _runs(lakehouse)[0].data.tags == run.data.tags
    nvflare = [r for r in _rows(lakehouse) if r["service_name"] == "nvflare"]
    assert len(nvflare) == 3 and {r["job_id"] for r in nvflare} == {CRASHED_JOB}


def test_crashed_job_not_as_its_continuation_carried_it_is_refused(tmp_path: Path, lakehouse: BridgeSettings):
    # Prepare: after the training was exported, the crashed job's own record is rewritten as a fresh chain
    crashed, resumed = crashed_and_resumed(tmp_path)
    export_job(resumed, lakehouse)
    events_file = _record(crashed) / "events.jsonl"
    events = load_job_result(crashed).events
    events[-1]["metrics"]["accuracy"] = 0.99
    write_events(events_file, [{k: v for k, v in e.items() if k not in ("seq", "prev_hash", "hash")} for e in events])

    # Execute / Assert
    with pytest.raises(TamperedTrailError, match=rf"events.jsonl ends with event \w+, but job {CONTINUATION_JOB}"):
        export_job(crashed, lakehouse)


@pytest.fixture(scope="module")
def exported_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BridgeSettings]:
    """A crashed job's continuation exported once, shared by the damaged-lineage cases (which must not change it)."""
    root = tmp_path_factory.mktemp("training")
    settings = BridgeSettings(state_dir=root / "lakehouse")
    _, resumed = crashed_and_resumed(root / "jobs")
    export_job(resumed, settings)
    return resumed, settings


def _altered(job: Path) -> None:
    copy = _lineage_copy(job)
    copy.write_text(copy.read_text().replace('"accuracy": 0.6', '"accuracy": 0.9', 1))


def _truncated(job: Path) -> None:
    copy = _lineage_copy(job)
    copy.write_text("".join(copy.read_text().splitlines(keepends=True)[:-2]))


def _missing(job: Path) -> None:
    shutil.rmtree(_record(job) / "lineage")


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (_altered, TamperedTrailError, rf"lineage/{CRASHED_JOB}/events.jsonl:3: its content does not match its hash"),
        (_truncated, TamperedTrailError, rf"lineage/{CRASHED_JOB}/events.jsonl ends with event 11 \(\w+\), but job "
                                         rf"{CONTINUATION_JOB} resumed job {CRASHED_JOB} after event \w+"),
        (_missing, BridgeError, rf"lineage/{CRASHED_JOB}/events.jsonl: missing; job {CONTINUATION_JOB} resumed job"),
    ],
)  # fmt: skip
def test_damaged_lineage_is_refused_and_harms_nothing(damage, error, message: str, exported_training, tmp_path: Path):  # noqa: ANN001
    # Prepare: a copy of the exported continuation whose copy of the crashed job's record is damaged
    job, settings = exported_training
    version, rows = _table_version(settings), len(_rows(settings))
    [run] = _runs(settings)
    copy = tmp_path / CONTINUATION_JOB
    shutil.copytree(job, copy)
    damage(copy)

    # Execute / Assert
    with pytest.raises(error, match=message):
        export_job(copy, settings)
    assert (_table_version(settings), len(_rows(settings))) == (version, rows)
    [after] = _runs(settings)
    assert (after.data.tags, after.data.metrics) == (run.data.tags, run.data.metrics)


def test_refused_resume_exports_its_refusal_and_no_metrics(tmp_path: Path, lakehouse: BridgeSettings):
    # Prepare: a continuation whose server refused to resume (its persistor still wrote initial weights)
    job = refused_resume(tmp_path)

    # Execute
    report = export_job(job, lakehouse)

    # Assert: the refusal is an audit row; the run has no metrics, no model, and failed
    rows = [r for r in _rows(lakehouse) if r["job_id"] == REFUSED_JOB]
    [refusal] = [r for r in rows if r["action_name"] == "resume_refused"]
    assert dict(refusal["request_params"])["resumed_from"] == CRASHED_JOB
    assert refusal["response"]["error_message"].startswith(f"cannot resume job {CRASHED_JOB}: the configuration")
    assert (report.metric_points, report.rounds_logged, report.model_version) == (0, 0, None)
    assert report.model_note.startswith("the job trained nothing, its resume was refused: cannot resume job")
    [run] = _runs(lakehouse)
    assert (run.data.metrics, run.info.status) == ({}, "FAILED")
    assert run.data.tags["fitfed.resume_refused"].startswith(f"cannot resume job {CRASHED_JOB}")
    assert _client(lakehouse).search_model_versions(f"name = '{MODEL}'") == []
    assert export_job(job, lakehouse).nothing_new
