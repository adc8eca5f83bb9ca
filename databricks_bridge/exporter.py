"""``export_job``: one FLARE job result into MLflow, the model registry and the audit table.

Everything is read and checked first (run record chain, configs, model file, every audit line,
and that the record extends what an earlier export saw); only then is anything written. So a
bad job result fails with a message naming the file, and leaves what was exported intact.

A job resumed after a server crash is exported with the jobs it continues, as one training
(see :mod:`databricks_bridge.lineage`): one MLflow run, and every job's audit rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from databricks_bridge import facts, mlflow_sink, registry
from databricks_bridge.audit_rows import (
    BRIDGE_SERVICE,
    JOB_LEVEL,
    fitfed_rows,
    make_row,
    parse_flare_audit,
    unique_rows,
)
from databricks_bridge.errors import BridgeError
from databricks_bridge.job_result import JobResult, load_job_result
from databricks_bridge.lineage import lineage_rows
from databricks_bridge.metrics import complete_rounds, final_validation
from databricks_bridge.model_files import ModelChoice, choose_model
from databricks_bridge.settings import BridgeSettings


@dataclass
class ExportReport:
    """What one export did; ``nothing_new`` when the job was already exported as it is.

    ``job_ids`` are the training's jobs (more than one for a job resumed after a crash);
    ``continued_by`` names the continuation a resumed job's training was since exported from.
    """

    job_key: str
    job_name: str
    finished: bool
    job_ids: list[str] = field(default_factory=list)
    continued_by: str = ""
    run_id: str = ""
    new_run: bool = False
    nothing_new: bool = False
    params: int = 0
    metric_points: int = 0
    rounds_logged: int = 0
    round_models: int = 0
    audit_rows: int = 0
    audit_sources: dict[str, int] = field(default_factory=dict)
    model_version: str | None = None
    model_note: str = ""
    champion: str = ""
    registered_model: str = ""
    audit_table: str = ""


@dataclass
class _Plan:
    job: JobResult
    settings: BridgeSettings
    rows: list[dict[str, Any]]
    digest: str
    choice: ModelChoice | None
    static: dict[str, str]
    final: dict[str, str]


def export_job(job_result: Path, settings: BridgeSettings | None = None) -> ExportReport:
    """Export a finished or running job's result, with the jobs it continues. Idempotent and incremental.

    Args:
        job_result: a simulator job workspace, a downloaded job, or a server's run folder.
        settings: where to export; default the embedded local lakehouse in ``fitfed_lakehouse/``.

    Returns:
        What was written, or ``nothing_new=True`` if everything was already exported.

    Raises:
        BridgeError: a missing, partial or damaged job result (the message names the file),
            or a target that refused a write.
        TamperedTrailError: a run record that was altered, or does not extend what was exported.
    """
    settings = settings or BridgeSettings()
    settings.check_credentials()
    plan = _read(Path(job_result), settings)
    sink = _audit_sink(settings)
    with mlflow_sink.mlflow_session(_mlflow_target(settings)) as client:
        experiment = mlflow_sink.experiment_id(client, _mlflow_target(settings))
        state = mlflow_sink.run_state(client, experiment, plan.job)
        mlflow_sink.check_continuity(plan.job, state)
        report = _report(plan)
        later = mlflow_sink.continued_by(plan.job, state)
        if later is not None:
            return _export_continued(sink, plan, state, report, later)
        if _up_to_date(plan, state):
            report.nothing_new, report.run_id = True, state.run_id or ""
            return report
        report.audit_rows = _merge_rows(sink, plan, plan.rows)
        run_id = state.run_id or mlflow_sink.create_run(client, experiment, plan.job)
        report.run_id, report.new_run = run_id, state.run is None
        _log_run(client, run_id, plan, state, report)
        if plan.job.finished and plan.choice is not None and not state.model_id:
            _log_and_register(client, run_id, plan, report)
        _merge_rows(sink, plan, [_export_done_row(plan, report)])
        mlflow_sink.set_tags(client, run_id, _progress_tags(plan))
        if plan.job.finished:
            mlflow_sink.finish_run(client, run_id, plan.job)
    return report


def _read(path: Path, settings: BridgeSettings) -> _Plan:
    """Read and check everything the export needs, before writing anything."""
    job = load_job_result(path)
    rows = [*lineage_rows(job.earlier), *fitfed_rows(job.events, job_id=job.job_key)]
    for site, audit_file in job.audit_logs:
        try:
            text = audit_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BridgeError(f"{audit_file}: not a readable audit log ({e})") from None
        rows += parse_flare_audit(
            text, source=str(audit_file), job_id=job.job_key, site=site, timezone=settings.timezone
        )
    rows = unique_rows(rows)
    digest = hashlib.sha256("\n".join(sorted(r["event_id"] for r in rows)).encode()).hexdigest()
    choice = choose_model(job) if job.finished else None
    sidecar = choice.model.sidecar if choice and choice.model else None
    return _Plan(job, settings, rows, digest, choice, facts.static_params(job), facts.final_params(job, sidecar))


def _export_continued(
    sink: Any, plan: _Plan, state: mlflow_sink.RunState, report: ExportReport, later: str
) -> ExportReport:
    """A resumed job whose training was since exported from its continuation: only its own audit lines can be new.

    Its rounds, models and run-record events are already in the training's run and table; its
    FLARE ``audit.log`` files are not carried by the continuation, so they are added here.
    """
    report.run_id, report.continued_by = state.run_id or "", later
    report.model_note = f"resumed by job {later}: the training's rounds and model are exported with it"
    report.audit_rows = _merge_rows(sink, plan, plan.rows)
    report.nothing_new = report.audit_rows == 0
    if not report.nothing_new:
        _merge_rows(sink, plan, [_export_done_row(plan, report)])
    return report


def _up_to_date(plan: _Plan, state: mlflow_sink.RunState) -> bool:
    job = plan.job
    return (
        state.run is not None
        and state.audit_seq == len(job.trail)
        and state.audit_digest == plan.digest
        and state.round_models >= max(job.round_models, default=0)
        and (not job.finished or state.tag("status") == "finished")
        and (state.model_id is not None or plan.choice is None or plan.choice.model is None)
    )


def _log_run(client: Any, run_id: str, plan: _Plan, state: mlflow_sink.RunState, report: ExportReport) -> None:
    job = plan.job
    params = {**plan.static, **(plan.final if job.finished else {})}
    report.params = mlflow_sink.log_params(client, state, run_id, params)
    if not state.tag("config_logged"):
        mlflow_sink.log_files(client, run_id, list(job.config_paths.values()), "config")
    points = complete_rounds(job.training_events)
    report.metric_points = mlflow_sink.log_rounds(client, run_id, points, state.rounds_logged)
    report.rounds_logged = len([p for p in points if p.round >= state.rounds_logged])
    if report.rounds_logged:
        mlflow_sink.log_plot(client, run_id, points, f"{job.job_name} ({', '.join(job.job_ids)})")
    report.round_models = mlflow_sink.log_round_models(client, run_id, job, state.round_models)


def _log_and_register(client: Any, run_id: str, plan: _Plan, report: ExportReport) -> None:
    assert plan.choice is not None
    if plan.choice.model is None:
        mlflow_sink.set_tags(client, run_id, {"model_note": plan.choice.reason})
        return
    info = registry.log_model(plan.choice.model, run_id)
    mlflow_sink.set_tags(client, run_id, {"model_id": info.model_id or info.model_uri})
    metric = facts.key_metric(plan.job)
    value = final_validation(plan.job.training_events, metric.name)
    tags = facts.lineage_tags(plan.job, {**plan.static, **plan.final}, value, metric)
    name = plan.settings.registered_model(plan.static.get("task", "fitfed"))
    report.model_version = registry.register(info.model_uri, name, tags)
    decision = registry.decide_champion(client, name, report.model_version, tags)
    report.champion = decision.reason
    mlflow_sink.set_tags(
        client, run_id,
        {"registered_model": name, "registered_version": report.model_version, "champion_decision": decision.reason},
    )  # fmt: skip


def _progress_tags(plan: _Plan) -> dict[str, Any]:
    job = plan.job
    tags: dict[str, Any] = {
        "audit_seq": len(job.trail),
        "audit_head": job.head_hash,
        "audit_digest": plan.digest,
        "status": "finished" if job.finished else "running",
        "clubs": plan.final.get("clubs", ""),
        "config_logged": 1,
        "lineage_root": job.lineage_root,
        "job_ids": ",".join(job.job_ids),
    }
    if job.earlier:  # where each earlier job's record ended, to check it if that job is exported on its own
        tags["lineage_heads"] = json.dumps({e.job_key: e.events[-1]["hash"] for e in job.earlier})
    if job.resume_refusal:
        tags["resume_refused"] = job.resume_refusal[:5000]
    return tags


def _export_done_row(plan: _Plan, report: ExportReport) -> dict[str, Any]:
    job = plan.job
    target = plan.settings.target
    event_id = hashlib.sha256(f"{job.uid}:{job.head_hash}:{plan.digest}:{target}".encode()).hexdigest()
    params = {
        "target": target, "mlflow_run_id": report.run_id, "audit_head": job.head_hash, "events": len(job.trail),
        "rows": len(plan.rows), "registered_model": report.registered_model if report.model_version else None,
        "model_version": report.model_version,
    }  # fmt: skip
    return make_row(
        event_id=event_id, when=datetime.now(UTC), service=BRIDGE_SERVICE, action="export_done",
        identity={"email": None, "subject_name": "fitfed export"}, params=params,
        response={"status_code": 200, "result": report.champion or report.model_note or None},
        level=JOB_LEVEL, job_id=job.job_key, site="bridge",
    )  # fmt: skip


def _report(plan: _Plan) -> ExportReport:
    job = plan.job
    sources: dict[str, int] = {}
    for row in plan.rows:
        key = f"{row['service_name']}:{row['site']}"
        sources[key] = sources.get(key, 0) + 1
    choice = plan.choice
    return ExportReport(
        job_key=job.job_key, job_name=job.job_name, finished=job.finished, job_ids=job.job_ids, audit_sources=sources,
        model_note=choice.reason if choice else "the job is still running; its model is exported when it finishes",
        registered_model=plan.settings.registered_model(plan.static.get("task", "fitfed")),
        audit_table=plan.settings.audit_table(),
    )  # fmt: skip


def _mlflow_target(settings: BridgeSettings) -> mlflow_sink.MlflowTarget:
    if settings.target == "databricks":
        return mlflow_sink.databricks_target(settings.profile, settings.experiment_name)
    return mlflow_sink.local_target(settings.state_dir, settings.experiment_name)


def _audit_sink(settings: BridgeSettings) -> Any:
    if settings.target == "databricks":
        from databricks.sdk import WorkspaceClient

        from databricks_bridge.databricks_sink import DatabricksAuditSink

        client = WorkspaceClient(profile=settings.profile) if settings.profile else WorkspaceClient()
        volume = f"{settings.catalog}.{settings.schema_name}.{settings.volume}"
        return DatabricksAuditSink(
            client, warehouse_id=settings.warehouse_id or "", table=settings.audit_table(), volume=volume
        )
    from databricks_bridge.delta_sink import LocalWarehouse

    return LocalWarehouse(settings.state_dir / "warehouse")


def _merge_rows(sink: Any, plan: _Plan, rows: list[dict[str, Any]]) -> int:
    table = plan.settings.audit_table()
    if plan.settings.target == "databricks":
        batch = f"{plan.job.job_key}/{hashlib.sha256(''.join(r['event_id'] for r in rows).encode()).hexdigest()[:24]}"
        return sink.merge_audit_rows(rows, batch=batch)
    seen = sink.existing_ids(table, plan.job.job_ids)
    return sink.merge_audit_rows(table, [r for r in rows if r["event_id"] not in seen])
