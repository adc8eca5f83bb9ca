"""``fitfed resume``: continue a job whose server crashed, through FLARE's admin API (an ML lead's command).

The continuation is the crashed job's own definition, downloaded from the server, with a
:class:`fitfed.lineage.ResumePlan` added to its config folder and its ``meta.json``. Its
server (:class:`fitfed.server.resume.RoundCheckpointer`) starts from the crashed job's last
checkpoint or stops with the reason; this module then reports which.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvflare.fuel.flare_api.flare_api import Session

from fitfed.audit import verify_chain
from fitfed.lineage import RESUME_FILE, ResumePlan, load_resume_plan
from fitfed.report import find_record_dir
from fitfed.server.resume import CHECKPOINTER_ID
from fitfed.server.run_record import EVENTS_FILE

# Jobs that never started. (A crashed job stays RUNNING in FLARE 2.9's job store: its server process is gone.)
_UNFINISHED = ("SUBMITTED", "DISPATCHED")
META_RESUMED_FROM = "fitfed_resumed_from"
META_LINEAGE_ROOT = "fitfed_lineage_root"


class ResumeRefused(RuntimeError):
    """The job cannot be resumed; the message says why and what to do."""


@dataclass(frozen=True)
class Outcome:
    """What became of a continuation job.

    Args:
        job_id: the continuation.
        plan: its link to the job it resumes.
        status: FLARE's final status ("" when not waited for).
        resumed_at: the first round it ran (None if it refused to resume).
        refusal: why its server refused to resume, if it did.
        rounds: the rounds it completed.
    """

    job_id: str
    plan: ResumePlan
    status: str = ""
    resumed_at: int | None = None
    refusal: str | None = None
    rounds: tuple[int, ...] = ()


def resume(
    session: Session,
    job_id: str,
    *,
    definition: Path | None = None,
    wait: bool = True,
    poll_interval: float = 2.0,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Submit a continuation of ``job_id`` and, with ``wait``, follow it to its end.

    Args:
        session: an admin session (the ML lead's).
        job_id: the crashed job.
        definition: the job folder that was submitted; None downloads it from the server, which FLARE 2.9
            refuses for a job its crash left listed as RUNNING. The continuation's server refuses any change.
        wait: follow the continuation to its end and report how it went.
        poll_interval: seconds between status checks while waiting.
        say: where progress lines go.

    Raises:
        ResumeRefused: the job does not exist, is still running, completed, or kept no checkpoints.
    """
    meta = _meta(session, job_id)
    status = str(meta.get("status", ""))
    if status == "FINISHED:COMPLETED":
        raise ResumeRefused(f"job {job_id} completed all its rounds; there is nothing to resume")
    if status in _UNFINISHED:
        raise ResumeRefused(f"job {job_id} is {status}: it has not started, so there is nothing to resume")
    if status == "RUNNING":
        if job_id in {j.job_id for j in session.get_system_info().job_info}:
            raise ResumeRefused(
                f"job {job_id} is still running on the server; resume a job only after its server crashed "
                "(abort it first if it is stuck)"
            )
        say(
            f"job {job_id} is listed RUNNING but no server process runs it (its server restarted; FLARE 2.9 does "
            "not update a crashed job's status): continuing it"
        )
    with tempfile.TemporaryDirectory(prefix="fitfed-resume-") as tmp:
        source = definition or _download_definition(session, job_id, status, Path(tmp) / "download")
        _check_same_job(source, meta, job_id)
        folder, plan = prepare_continuation(source, job_id, Path(tmp) / "job")
        new_id = session.submit_job(str(folder))
    say(f"submitted job {new_id}: continues {job_id} (training {plan.lineage_root})")
    if not wait:
        return Outcome(job_id=new_id, plan=plan)
    meta = _follow(session, new_id, poll_interval, say)
    with tempfile.TemporaryDirectory(prefix="fitfed-resume-") as tmp:
        result = Path(session.download_job_result(new_id, str(Path(tmp) / "result")))
        events = _events(result)
    return _outcome(new_id, plan, meta.get("status", ""), events)


def prepare_continuation(definition: Path, job_id: str, out: Path) -> tuple[Path, ResumePlan]:
    """Copy a downloaded job definition to ``out`` as a continuation of ``job_id``.

    Raises:
        ResumeRefused: the definition is not a fitfed job that keeps resume checkpoints.
    """
    server_configs = list(definition.glob("*/config/config_fed_server.json"))
    if not server_configs:
        raise ResumeRefused(f"{definition}: job {job_id}'s definition has no server app; it is not a fitfed job")
    components = json.loads(server_configs[0].read_text()).get("components", [])
    if not any(c.get("id") == CHECKPOINTER_ID for c in components):
        raise ResumeRefused(
            f"job {job_id} kept no resume checkpoints (HE jobs keep none: the server holds only ciphertext; jobs "
            "exported before fitfed kept them neither). Start it again as a new job"
        )
    previous = load_resume_plan(server_configs[0].parent)
    plan = ResumePlan(resumed_from=job_id, lineage_root=job_id if previous is None else previous.lineage_root)
    shutil.copytree(definition, out, ignore=shutil.ignore_patterns("workspace", "__pycache__"))
    for config in out.glob("*/config"):
        (config / RESUME_FILE).write_text(plan.model_dump_json(indent=2) + "\n")
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update({META_RESUMED_FROM: job_id, META_LINEAGE_ROOT: plan.lineage_root})
    meta_path.write_text(json.dumps(meta, indent=4))
    return out, plan


def _meta(session: Session, job_id: str) -> dict[str, Any]:
    try:
        return session.get_job_meta(job_id)
    except Exception as e:  # noqa: BLE001 - FLARE raises several types for an unknown job
        raise ResumeRefused(f"the server knows no job {job_id} ({e}); list jobs with `nvflare job list`") from None


def _download_definition(session: Session, job_id: str, status: str, folder: Path) -> Path:
    """The job's definition from the server's job store: FLARE hands it out for finished jobs only."""
    if status == "RUNNING":
        raise ResumeRefused(
            f"job {job_id} is listed RUNNING since its server crashed, and FLARE 2.9 hands out no running job's "
            "definition: pass the job folder that was submitted with --job (for example jobs/<name>); the "
            "continuation's server checks it against the checkpoint and refuses any change"
        )
    downloaded = Path(session.download_job_result(job_id, str(folder)))
    for candidate in (downloaded, downloaded / job_id):  # FLARE downloads a job as <dest>/<job id>/
        if (candidate / "meta.json").is_file():
            return candidate
    raise ResumeRefused(f"job {job_id}: the server sent no job definition (no meta.json in {downloaded})")


def _check_same_job(definition: Path, meta: dict[str, Any], job_id: str) -> None:
    """A folder given with --job must at least be the same job by name; its server checks the rest."""
    path = definition / "meta.json"
    if not path.is_file():
        raise ResumeRefused(f"{definition}: not a job folder (no meta.json); pass the folder that was submitted")
    name, expected = json.loads(path.read_text()).get("name"), meta.get("name")
    if expected and name != expected:
        raise ResumeRefused(f"{definition} is job {name!r}, but job {job_id} is {expected!r}: pass that job's folder")


def _follow(session: Session, job_id: str, poll_interval: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Wait for the job to finish, saying so every half minute; Ctrl-C stops waiting, not the job."""
    start = time.monotonic()
    last = [start]

    def progress(_session: Session, _job_id: str, meta: dict[str, Any], *_args: Any) -> bool:
        now = time.monotonic()
        if now - last[0] >= 30:
            say(f"  job {job_id}: {meta.get('status')} after {now - start:.0f}s")
            last[0] = now
        return True

    try:
        _, meta = session.monitor_job_and_return_job_meta(job_id, poll_interval=poll_interval, cb=progress)
    except KeyboardInterrupt:
        say(f"stopped waiting; job {job_id} goes on. Follow it with `nvflare job list` or `fitfed resume --help`")
        raise
    return meta or {}


def _events(result: Path) -> list[dict[str, Any]]:
    try:
        return verify_chain(find_record_dir(result) / EVENTS_FILE)
    except FileNotFoundError:  # the job ended before its server wrote a record
        return []


def _outcome(job_id: str, plan: ResumePlan, status: str, events: list[dict[str, Any]]) -> Outcome:
    refusal = next((e["reason"] for e in events if e["event"] == "resume_refused"), None)
    resumed = next((e["next_round"] for e in events if e["event"] == "run_resumed"), None)
    rounds = tuple(e["round"] for e in events if e["event"] == "round_completed")
    return Outcome(job_id=job_id, plan=plan, status=status, resumed_at=resumed, refusal=refusal, rounds=rounds)
