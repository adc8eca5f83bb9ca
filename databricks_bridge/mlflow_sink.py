"""One MLflow run per training, written incrementally: what an earlier export logged is never logged again.

A training is a FLARE job, or a job and the continuations that resumed it after a server crash:
exporting any of them adds to the same run. The run is found by the tag ``fitfed.run_uid`` (the
hash of the first event of the training's first run record); ``fitfed.lineage_root`` and
``fitfed.job_ids`` name its jobs. Its tags also remember how far earlier exports got:
``fitfed.audit_seq``/``fitfed.audit_head`` (the training's run records exported so far),
``fitfed.rounds_logged`` (metric steps), ``fitfed.round_models`` (per-round state dicts),
``fitfed.lineage_heads`` (where each resumed job's record ended) and ``fitfed.model_id``. Metric
points and their progress tag go in one ``log_batch``, so an interrupted export neither loses nor
repeats a round.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag

from databricks_bridge.errors import BridgeError, TamperedTrailError
from databricks_bridge.job_result import JobResult
from databricks_bridge.metrics import RoundPoint, plot_rounds

TAG = "fitfed."
_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics, 100 params, 100 tags
UC_SDK_ARTIFACTS = "MLFLOW_USE_DATABRICKS_SDK_MODEL_ARTIFACTS_REPO_FOR_UC"


@dataclass(frozen=True)
class MlflowTarget:
    """Where MLflow tracking and the model registry are, and any environment they need."""

    tracking_uri: str
    registry_uri: str
    experiment: str
    artifact_location: str | None = None
    environment: tuple[tuple[str, str], ...] = ()


def local_target(state_dir: Path, experiment: str) -> MlflowTarget:
    """Sqlite tracking and registry in ``state_dir/mlflow.db``, artifacts under ``state_dir/artifacts``."""
    state_dir = state_dir.resolve()
    uri = f"sqlite:///{state_dir / 'mlflow.db'}"
    return MlflowTarget(uri, uri, experiment, (state_dir / "artifacts").as_uri())


def databricks_target(profile: str | None, experiment: str) -> MlflowTarget:
    """Databricks tracking and the Unity Catalog registry, model files through the SDK's Files API."""
    suffix = f"://{profile}" if profile else ""
    environment = [(UC_SDK_ARTIFACTS, "true")]
    if profile:  # MLflow's SDK-based artifact repositories read the profile from the environment
        environment.append(("DATABRICKS_CONFIG_PROFILE", profile))
    return MlflowTarget(f"databricks{suffix}", f"databricks-uc{suffix}", experiment, None, tuple(environment))


@contextmanager
def mlflow_session(target: MlflowTarget) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API at ``target`` for the block, then put everything back."""
    previous_uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    previous_env = {name: os.environ.get(name) for name, _ in target.environment}
    mlflow_logger = logging.getLogger("mlflow")
    previous_level = mlflow_logger.level
    os.environ.update(dict(target.environment))
    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_registry_uri(target.registry_uri)
    mlflow_logger.setLevel(logging.WARNING)  # not MLflow's INFO chatter (database set-up) in the command's output
    try:
        yield MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.registry_uri)
    finally:
        mlflow_logger.setLevel(previous_level)
        mlflow.set_tracking_uri(previous_uris[0])
        mlflow.set_registry_uri(previous_uris[1])
        for name, value in previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class RunState:
    """How far earlier exports of this job got (all zero/None for a job not exported yet)."""

    run: Run | None = None
    audit_seq: int = 0
    audit_head: str | None = None
    audit_digest: str | None = None
    rounds_logged: int = 0
    round_models: int = 0
    model_id: str | None = None
    registered_version: str | None = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id, None before the first export."""
        return self.run.info.run_id if self.run else None

    def tag(self, name: str) -> str | None:
        """One of the run's ``fitfed.`` tags."""
        return self.run.data.tags.get(TAG + name) if self.run else None

    @property
    def job_ids(self) -> list[str]:
        """The jobs exported into the run, oldest first (a run exported before lineages: its one job)."""
        ids = self.tag("job_ids") or self.tag("job_id")
        return ids.split(",") if ids else []


def experiment_id(client: MlflowClient, target: MlflowTarget) -> str:
    """The experiment's id, creating it (with the explicit artifact root, locally) if needed."""
    experiment = client.get_experiment_by_name(target.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(target.experiment, artifact_location=target.artifact_location)


def run_state(client: MlflowClient, experiment: str, job: JobResult) -> RunState:
    """The run of the job's training and its progress tags."""
    uid = job.lineage_uid
    runs = client.search_runs([experiment], filter_string=f"tags.`{TAG}run_uid` = '{uid}'", max_results=2)
    if not runs:
        return RunState()
    state = RunState(run=runs[0])
    state.audit_seq = int(state.tag("audit_seq") or 0)
    state.audit_head = state.tag("audit_head")
    state.audit_digest = state.tag("audit_digest")
    state.rounds_logged = int(state.tag("rounds_logged") or 0)
    state.round_models = int(state.tag("round_models") or 0)
    state.model_id = state.tag("model_id")
    state.registered_version = state.tag("registered_version")
    return state


def continued_by(job: JobResult, state: RunState) -> str | None:
    """The later job the training was exported from, if this job was resumed and that continuation exported."""
    ids = state.job_ids
    return ids[-1] if job.job_key in ids[:-1] else None


def check_continuity(job: JobResult, state: RunState) -> None:
    """Refuse a run record that does not extend what was exported before.

    A record that verifies on its own can still have been rewritten from scratch; comparing it
    with the head hash an earlier export stored catches that, and a truncated record. A training's
    trail is its jobs' records in order. A job whose training was since exported from a
    continuation must end exactly where the continuation's copy of it ended.

    Raises:
        TamperedTrailError: naming the events file.
    """
    if state.run is None or state.audit_seq == 0:
        return
    later = continued_by(job, state)
    if later is not None:
        exported = json.loads(state.tag("lineage_heads") or "{}").get(job.job_key)
        if job.head_hash != exported:
            raise TamperedTrailError(
                f"refusing to export: {job.records[-1][0]} ends with event {job.head_hash}, but job {later}, which "
                f"resumed job {job.job_key}, carried its record ending with event {exported} to MLflow run "
                f"{state.run_id}; this copy is older than, or differs from, the record that was exported"
            )
        return
    trail = job.trail
    if len(trail) < state.audit_seq:
        files = " + ".join(source for source, _ in job.records)
        raise TamperedTrailError(
            f"refusing to export: {files} {'has' if len(job.records) == 1 else 'have'} {len(trail)} events, but "
            f"{state.audit_seq} were already exported to MLflow run {state.run_id}; the run record was truncated or "
            "replaced"
        )
    if trail[state.audit_seq - 1]["hash"] != state.audit_head:
        source, index = _locate(job, state.audit_seq - 1)
        raise TamperedTrailError(
            f"refusing to export: {source} event {index} does not match the audit head "
            f"{state.audit_head} exported to MLflow run {state.run_id}; the run record was rewritten"
        )


def _locate(job: JobResult, position: int) -> tuple[str, int]:
    """Which run record holds the training trail's event ``position``, and its index there."""
    for source, events in job.records[:-1]:
        if position < len(events):
            return source, position
        position -= len(events)
    return job.records[-1][0], position


def create_run(client: MlflowClient, experiment: str, job: JobResult) -> str:
    """Start the run of the job's training, named for its first job and dated from its first event."""
    first = job.trail[0]
    tags = {
        TAG + "run_uid": job.lineage_uid,
        TAG + "job_id": job.lineage_root,
        TAG + "flare_job_id": str(first.get("job_id") or job.job_id),
        TAG + "job_name": job.job_name,
        TAG + "source": "fitfed export",
    }
    run = client.create_run(experiment, start_time=int(float(first["time"]) * 1000), tags=tags, run_name=job.job_name)
    return run.info.run_id


def log_params(client: MlflowClient, state: RunState, run_id: str, params: dict[str, str]) -> int:
    """Log params the run lacks; an existing param with another value means the job result changed.

    Raises:
        BridgeError: a param whose value differs from the one exported before.
    """
    existing = state.run.data.params if state.run else {}
    for key, value in params.items():
        if key in existing and existing[key] != value[:6000]:
            raise BridgeError(
                f"param {key!r} was exported as {existing[key]!r} to run {run_id}, the job result now says {value!r}; "
                "this is not the job result that was exported"
            )
    new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
    for start in range(0, len(new), 100):
        client.log_batch(run_id, params=new[start : start + 100])
    return len(new)


def log_rounds(client: MlflowClient, run_id: str, points: list[RoundPoint], already: int) -> int:
    """Log the metrics of rounds ``already`` onwards; the progress tag rides in the same batch."""
    new = [p for p in points if p.round >= already]
    metrics = [Metric(k, v, p.time_ms, p.round) for p in new for k, v in p.mlflow_metrics().items() if v is not None]
    progress = [RunTag(TAG + "rounds_logged", str(new[-1].round + 1))] if new else []
    for start in range(0, max(len(metrics), 1), _BATCH):
        last = start + _BATCH >= len(metrics)
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH], tags=progress if last else [])
    return len(metrics)


def log_files(client: MlflowClient, run_id: str, files: list[Path], folder: str) -> None:
    """Log local files under an artifact folder."""
    for path in files:
        client.log_artifact(run_id, str(path), folder)


def log_round_models(client: MlflowClient, run_id: str, job: JobResult, already: int) -> int:
    """Log the per-round global state dicts not yet logged (``rounds/global_model_round_<r>.pt``)."""
    new = {r: p for r, p in job.round_models.items() if r > already}
    log_files(client, run_id, [new[r] for r in sorted(new)], "rounds")
    if new:
        client.set_tag(run_id, TAG + "round_models", str(max(new)))
    return len(new)


def log_plot(client: MlflowClient, run_id: str, points: list[RoundPoint], title: str) -> None:
    """Replace the run's ``plots/metrics_by_round.png``."""
    folder = Path(tempfile.mkdtemp(prefix="fitfed-plot-"))
    try:
        log_files(client, run_id, [plot_rounds(points, folder / "metrics_by_round.png", title)], "plots")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    """Set several ``fitfed.`` tags in one call."""
    client.log_batch(run_id, tags=[RunTag(TAG + k, str(v)) for k, v in tags.items()])


def finish_run(client: MlflowClient, run_id: str, job: JobResult) -> None:
    """Mark the run finished (failed: a resume the server refused) at the time the job's run record finished."""
    end = next(e for e in reversed(job.events) if e.get("event") == "run_finished")
    status = "FAILED" if job.resume_refusal else "FINISHED"
    client.set_terminated(run_id, status, end_time=int(float(end["time"]) * 1000))
