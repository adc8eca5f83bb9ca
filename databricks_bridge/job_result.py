"""Reading a FLARE job's result: a simulator workspace, a downloaded job, or a server's run folder.

Three layouts hold the same things:

- simulator: ``<workspace>/<job>/server/simulate_job/{fitfed,app_server}/`` and ``<workspace>/<job>/<site>/``;
- ``nvflare job download`` (or the admin API's ``download_job_result``): ``<job_id>/{meta.json,job/,workspace/}``,
  where ``workspace/`` is the server's run folder (``fitfed/``, ``app_server/``, ``audit.log``, ``log.txt``);
- a server's run folder itself, ``<server workspace>/<job_id>/``, for exporting a job while it runs.

A job resumed after a server crash also carries the run records of the jobs it continues
(``fitfed/lineage/``); they are read and linked here too (see :mod:`databricks_bridge.lineage`).
Everything is read and checked here, before the export writes anything.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from databricks_bridge.audit_rows import is_audit_file, site_of
from databricks_bridge.audit_rows import job_key as _job_key
from databricks_bridge.errors import BridgeError, TamperedTrailError
from databricks_bridge.lineage import LINEAGE_DIR, EarlierJob, link_lineage, resume_refusal, training_events
from fitfed.audit import ChainError, verify_chain
from fitfed.server.run_record import EVENTS_FILE, FINAL_MODEL, RECORD_DIR, ROUNDS_DIR

DECRYPTED_MODEL = "decrypted_global_model"  # what a key-holding club writes for an HE job (see docs/bridge.md)
TRAIN_CONFIG = "fitfed_train.json"
SERVER_CONFIG = "config_fed_server.json"
CLIENT_CONFIG = "config_fed_client.json"
_LAYOUT_HINT = (
    "JOB_RESULT is a simulator job workspace (<workspace>/<job>, holding server/simulate_job/fitfed/), a job "
    "downloaded with `nvflare job download` (<job_id>/, holding workspace/fitfed/), or a server run folder"
)


@dataclass
class JobResult:
    """One job's result, read and verified.

    Attributes:
        root: the job's top folder (the simulator's ``<workspace>/<job>``, the download's ``<job_id>``).
        record_dir: fitfed's ``fitfed/`` folder in the server's run folder.
        events: the run record's events, hash chain verified.
        configs: the server app's config files by name (``fitfed_train.json`` and FLARE's configs), parsed.
        config_paths: where each config file was found.
        meta: the job's ``meta.json`` (empty if absent).
        audit_logs: FLARE audit files present, as (site, path).
        round_models: per-round global state dicts, by the round after which each was taken.
        earlier: for a job resumed after a crash, the jobs it continues, oldest first (see ``lineage``).
    """

    root: Path
    record_dir: Path
    events: list[dict[str, Any]]
    configs: dict[str, dict[str, Any]]
    config_paths: dict[str, Path]
    meta: dict[str, Any] = field(default_factory=dict)
    audit_logs: list[tuple[str, Path]] = field(default_factory=list)
    round_models: dict[int, Path] = field(default_factory=dict)
    earlier: list[EarlierJob] = field(default_factory=list)

    @property
    def uid(self) -> str:
        """The hash of the run's first event: unique per run, even where FLARE's job id is not."""
        return self.events[0]["hash"]

    @property
    def job_id(self) -> str:
        """FLARE's job id, as the run record names it."""
        return str(self.events[0].get("job_id") or self.meta.get("job_id") or self.root.name)

    @property
    def job_key(self) -> str:
        """The job id used in MLflow and the audit table; the simulator calls every job simulate_job."""
        return _job_key(self.events, self.job_id)

    @property
    def job_name(self) -> str:
        """The job's name (``fedavg_churn``)."""
        return str(self.meta.get("name") or self.meta.get("job_folder_name") or self.root.name)

    @property
    def head_hash(self) -> str:
        """The hash of the run record's last event: the head of the audit trail."""
        return self.events[-1]["hash"]

    @property
    def finished(self) -> bool:
        """Whether the run record says the run finished."""
        return any(e.get("event") == "run_finished" for e in self.events)

    @property
    def resume_refusal(self) -> str | None:
        """Why the server refused to resume the job this one was to continue (it then trained nothing)."""
        return resume_refusal(self.events)

    @property
    def lineage_uid(self) -> str:
        """The uid of the training's first job: one MLflow run holds a job and its continuations."""
        return self.earlier[0].events[0]["hash"] if self.earlier else self.uid

    @property
    def lineage_root(self) -> str:
        """The job id of the training's first job (this job's own, unless it is a continuation)."""
        return self.earlier[0].job_key if self.earlier else self.job_key

    @property
    def job_ids(self) -> list[str]:
        """The training's jobs, oldest first, ending with this one."""
        return [*(e.job_key for e in self.earlier), self.job_key]

    @property
    def records(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """The training's run records, oldest first, as (file, events): the earlier jobs' copies, then this job's."""
        return [*((e.source, e.events) for e in self.earlier), (str(self.record_dir / EVENTS_FILE), self.events)]

    @property
    def trail(self) -> list[dict[str, Any]]:
        """Every event of the training's run records, in order: the audit trail an export pins."""
        return [e for _, events in self.records for e in events]

    @property
    def training_events(self) -> list[dict[str, Any]]:
        """The events metrics and facts come from: the earlier jobs' kept rounds, then this job's record."""
        return training_events(self.earlier, self.events)

    @property
    def train_config(self) -> dict[str, Any]:
        """The job's TrainConfig, as raw JSON (fields added by later fitfed versions pass through)."""
        return self.configs[TRAIN_CONFIG]

    def model_paths(self, name: str = FINAL_MODEL) -> tuple[Path, Path]:
        """The state dict and sidecar of a model the run record wrote (``global_model``, ``best_global_model``)."""
        return self.record_dir / f"{name}.pt", self.record_dir / f"{name}.json"

    def decrypted_models(self) -> list[Path]:
        """Sidecars of decrypted models that key-holding clubs wrote anywhere in the job result."""
        return sorted(self.root.rglob(f"{RECORD_DIR}/{DECRYPTED_MODEL}.json"))


def load_job_result(path: Path) -> JobResult:
    """Find, read and verify a job result.

    Raises:
        BridgeError: a missing or partial job result, naming the file that is missing or unreadable.
        TamperedTrailError: the run record's hash chain, or that of a record copy a continuation carries,
            does not verify, or a copy is not the record the continuation resumed from.
    """
    path = Path(path)
    if not path.is_dir():
        raise BridgeError(f"{path}: no such folder. {_LAYOUT_HINT}.")
    record_dir = _record_dir(path)
    root, run_dir = _job_root(record_dir)
    events = read_events(record_dir / EVENTS_FILE)
    configs, config_paths = _configs(root, run_dir)
    meta_file = next((p for p in (root / "meta.json", run_dir / "meta.json") if p.is_file()), None)
    job = JobResult(
        root=root,
        record_dir=record_dir,
        events=events,
        configs=configs,
        config_paths=config_paths,
        meta=read_json(meta_file) if meta_file else {},
        audit_logs=_audit_logs(root),
        round_models=_round_models(record_dir / ROUNDS_DIR),
    )
    folder = record_dir / LINEAGE_DIR
    copies = {p.parent.name: (str(p), read_events(p)) for p in sorted(folder.glob(f"*/{EVENTS_FILE}"))}
    job.earlier = link_lineage(job.job_key, events, copies, str(folder))
    return job


def read_events(events_file: Path) -> list[dict[str, Any]]:
    """The run record's events after verifying its hash chain.

    A line still being written (no newline yet) gets a moment to finish before the chain is judged.
    """
    for attempt in range(3):
        try:
            events = verify_chain(events_file)
            break
        except ChainError as e:
            still_writing = not events_file.read_bytes().endswith(b"\n")
            if not still_writing or attempt == 2:
                raise TamperedTrailError(
                    f"refusing to export: {e}. A hash-chained run record never changes once written; "
                    "export the job result as FLARE wrote it."
                ) from None
            time.sleep(0.2)
    if not events or events[0].get("event") != "run_started":
        raise BridgeError(f"{events_file}: does not start with a run_started event; the run record is partial")
    return events


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file, or a BridgeError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BridgeError(f"{path}: not readable JSON ({e}); the job result is damaged or partial") from None


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record_dir(path: Path) -> Path:
    if (path / EVENTS_FILE).is_file():
        return path
    found = sorted(p.parent for p in path.rglob(f"{RECORD_DIR}/{EVENTS_FILE}"))
    if not found:
        raise BridgeError(f"{path}: no fitfed run record ({RECORD_DIR}/{EVENTS_FILE}) below it. {_LAYOUT_HINT}.")
    if len(found) > 1:
        listing = ", ".join(str(p) for p in found[:5])
        raise BridgeError(f"{path}: holds {len(found)} job records ({listing}); pass one job's folder")
    return found[0]


def _job_root(record_dir: Path) -> tuple[Path, Path]:
    """(the job's top folder, the server's run folder) for a record dir in any of the three layouts."""
    run_dir = record_dir.parent
    if run_dir.parent.name == "server":  # simulator: <ws>/<job>/server/<job_id>/fitfed
        return run_dir.parent.parent, run_dir
    if run_dir.name == "workspace" and (run_dir.parent / "meta.json").is_file():  # downloaded job
        return run_dir.parent, run_dir
    return run_dir, run_dir


def _configs(root: Path, run_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    """The server app's configs: from the run folder's app_*/config/, else the download's job definition."""
    candidates = sorted(run_dir.glob(f"app_*/config/{TRAIN_CONFIG}")) or sorted(
        (root / "job").glob(f"**/config/{TRAIN_CONFIG}")
    )
    if not candidates:
        raise BridgeError(
            f"{run_dir}: no app_*/config/{TRAIN_CONFIG} (the job's training config); the job result is partial. "
            f"Download the whole job (`nvflare job download`) or pass the simulator's whole job workspace."
        )
    config_dir = candidates[0].parent
    paths = {name: config_dir / name for name in (TRAIN_CONFIG, SERVER_CONFIG, CLIENT_CONFIG)}
    configs = {name: read_json(p) for name, p in paths.items() if p.is_file()}
    return configs, {name: p for name, p in paths.items() if p.is_file()}


def _audit_logs(root: Path) -> list[tuple[str, Path]]:
    logs = [p for p in sorted(root.rglob("*")) if p.is_file() and is_audit_file(p)]
    return [(site_of(p.relative_to(root)), p) for p in logs]


def _round_models(folder: Path) -> dict[int, Path]:
    models = {}
    for path in sorted(folder.glob(f"{FINAL_MODEL}_round_*.pt")):
        suffix = path.stem.rsplit("_", 1)[-1]
        if suffix.isdigit():
            models[int(suffix)] = path
    return models
