"""``fitfed export`` (and ``python -m databricks_bridge``): a job result into MLflow and the audit table."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from databricks_bridge.errors import BridgeError
from databricks_bridge.settings import DEFAULT_STATE_DIR, BridgeSettings, settings_from_environment

if TYPE_CHECKING:
    from databricks_bridge.exporter import ExportReport

BRIDGE_EXTRA_HINT = (
    "fitfed export needs the bridge extra (MLflow, deltalake, databricks-sdk): pip install -e '.[bridge]'"
)

DESCRIPTION = """\
Exports a FLARE job's result to MLflow (one run per job: params, per-round metrics of the global
model and of each club, config, plot, per-round state dicts, the final model registered as
<catalog>.<schema>.<model> with the alias 'champion' if it beats the current one) and its audit
trail to the table <catalog>.<schema>.fl_audit_events. Exporting again adds only what is new.

Default: an embedded lakehouse in --state (MLflow on sqlite, Delta tables). With --databricks:
the workspace in DATABRICKS_HOST/DATABRICKS_TOKEN or --profile, a SQL warehouse for the table.
"""
EXAMPLES = """\
examples:
  fitfed export demo_output/workspace/fedavg_churn
  fitfed export ./downloads/7c1f2a4e-... --state ~/fitfed_lakehouse
  DATABRICKS_HOST=https://... DATABRICKS_TOKEN=... fitfed export JOB --databricks --warehouse-id abc123 \\
      --catalog ml --schema federation
"""


def add_export_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``export`` to a subcommand parser (``fitfed``'s); it sets ``handler``."""
    export = commands.add_parser(
        "export",
        help="export a job result to MLflow and the audit table (embedded lakehouse or Databricks)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(export)
    export.set_defaults(handler=run_export)
    return export


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_result", type=Path, help="simulator job workspace, downloaded job, or server run folder")
    parser.add_argument(
        "--state", type=Path, help=f"local lakehouse folder (default $FITFED_LAKEHOUSE or {DEFAULT_STATE_DIR}/)"
    )
    parser.add_argument("--databricks", action="store_true", help="export to the Databricks workspace instead")
    parser.add_argument("--catalog", help="Unity Catalog catalog (default $FITFED_UC_CATALOG or main)")
    parser.add_argument("--schema", help="Unity Catalog schema (default $FITFED_UC_SCHEMA or fitfed)")
    parser.add_argument("--model", help="registered model name (default <task>_model)")
    parser.add_argument("--experiment", help="MLflow experiment (default fitfed, or /Shared/fitfed on Databricks)")
    parser.add_argument("--warehouse-id", help="SQL warehouse for the audit table (default $DATABRICKS_WAREHOUSE_ID)")
    parser.add_argument("--profile", help="~/.databrickscfg profile (default $DATABRICKS_CONFIG_PROFILE)")
    parser.add_argument("--log-timezone", help="IANA zone of FLARE's audit.log times (default: this machine's)")


def settings_from_args(args: argparse.Namespace) -> BridgeSettings:
    """Settings from the command line over the environment."""
    return settings_from_environment(
        target="databricks" if args.databricks else "local",
        state_dir=args.state,
        catalog=args.catalog,
        schema_name=args.schema,
        model_name=args.model,
        experiment=args.experiment,
        warehouse_id=args.warehouse_id,
        profile=args.profile,
        log_timezone=args.log_timezone,
    )


def run_export(args: argparse.Namespace) -> int:
    """Export and print what happened; a BridgeError is one line on stderr and exit status 1."""
    try:
        settings = settings_from_args(args)
        return export_and_print(args.job_result, settings)
    except BridgeError as e:
        print(f"fitfed export: error: {e}", file=sys.stderr)
        return 1


def export_and_print(job_result: Path, settings: BridgeSettings) -> int:
    """Export one job result and print the report; exit status 1 if the bridge extra is missing.

    Raises:
        BridgeError: as :func:`databricks_bridge.export_job`.
    """
    try:
        from databricks_bridge.exporter import export_job
    except ImportError as e:
        print(f"{BRIDGE_EXTRA_HINT} ({e})", file=sys.stderr)
        return 1
    print(format_report(export_job(job_result, settings), settings))
    return 0


def export_after_demo(job_workspace: Path, state_dir: Path) -> int:
    """The demo's last step: export its job into a lakehouse next to it, so the model and audit table show."""
    print(f"\nexporting the job to the local lakehouse in {state_dir}/ (fitfed export)")
    try:
        return export_and_print(job_workspace, BridgeSettings(state_dir=state_dir))
    except BridgeError as e:
        print(f"fitfed export: error: {e}", file=sys.stderr)
        return 1


def format_report(report: ExportReport, settings: BridgeSettings) -> str:
    """What a user reads after an export: what was written, where, and how to look at it."""
    status = "finished" if report.finished else "still running"
    if report.continued_by:
        status = f"interrupted, resumed by job {report.continued_by} and exported with it"
    lines = [f"job {report.job_name} ({report.job_key}), {status}"]
    if len(report.job_ids) > 1:
        lines.append(f"  training      {' -> '.join(report.job_ids)}: resumed after a crash, one MLflow run")
    if report.nothing_new:
        lines.append(f"  nothing new: already exported as it is (MLflow run {report.run_id}); nothing was changed")
    elif report.continued_by:
        lines.append(f"  MLflow run {report.run_id}: the training's, already exported with job {report.continued_by}")
        lines.append(f"  audit table   {report.audit_table}: +{report.audit_rows} row(s) of this job's audit.log files")
    else:
        run = "new MLflow run" if report.new_run else "MLflow run"
        lines.append(
            f"  {run} {report.run_id} in experiment {settings.experiment_name!r}: {report.params} params, "
            f"{report.metric_points} metric points over {report.rounds_logged} round(s), "
            f"{report.round_models} round model(s)"
        )
        if report.model_version:
            lines.append(f"  model         {report.registered_model} version {report.model_version}")
            lines.append(f"  champion      {report.champion}")
        elif report.finished or not report.model_note.startswith("the job is still running"):
            lines.append(f"  model         not registered: {report.model_note}")
        sources = ", ".join(f"{n} {k}" for k, n in sorted(report.audit_sources.items()))
        lines.append(f"  audit table   {report.audit_table}: +{report.audit_rows} row(s) (from {sources})")
    lines += _where_to_look(report, settings)
    return "\n".join(lines)


def _where_to_look(report: ExportReport, settings: BridgeSettings) -> list[str]:
    if settings.target == "databricks":
        return [f"  open it: the experiment {settings.experiment_name} and Catalog Explorer > {report.audit_table}"]
    from databricks_bridge.delta_sink import LocalWarehouse

    warehouse = LocalWarehouse(settings.state_dir / "warehouse")
    path = warehouse.table_path(report.audit_table)
    lines = [f"  Delta table   {path}"]
    if (path / "_delta_log").is_dir():
        jobs = set(report.job_ids or [report.job_key])
        rows = [r for r in warehouse.read(report.audit_table).to_pylist() if r["job_id"] in jobs]
        counts = Counter(r["action_name"] for r in rows)
        whose = "this job" if len(jobs) == 1 else "this training"
        lines.append(
            f"  audit rows of {whose} ({len(rows)}): " + ", ".join(f"{a} {n}" for a, n in sorted(counts.items()))
        )
        lines += _preview(sorted(rows, key=lambda r: (r["event_time"], r["event_id"])))
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    command = os.path.relpath(mlflow_bin) if mlflow_bin.is_file() else "mlflow"
    database = (settings.state_dir / "mlflow.db").resolve()
    lines.append(f"  open MLflow:  {command} ui --backend-store-uri sqlite:///{database} --port 5000")
    return lines


def _preview(rows: list[dict], each_end: int = 3) -> list[str]:
    """The first and last few rows of a job's audit trail, as a user would query them."""
    shown = rows if len(rows) <= 2 * each_end else [*rows[:each_end], None, *rows[-each_end:]]
    lines = []
    for row in shown:
        if row is None:
            lines.append("    ...")
            continue
        when = row["event_time"].strftime("%Y-%m-%d %H:%M:%S")
        round_text = "" if row["round"] is None else f"round {row['round']}"
        line = f"    {when} UTC  {row['site']:<10} {row['service_name']:<14} {row['action_name']:<18} {round_text}"
        lines.append(line.rstrip())
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m databricks_bridge JOB_RESULT [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m databricks_bridge", description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _arguments(parser)
    return run_export(parser.parse_args(argv))
