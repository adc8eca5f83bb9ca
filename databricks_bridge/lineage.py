"""A continuation's training: the earlier jobs whose run records it carries, linked, and where each was cut.

A job resumed after a server crash (``fitfed resume``) is a new FLARE job with a self-contained
run record: its ``run_resumed`` event names the job it resumed (``resumed_from``), the round it
went on from (``next_round``) and the hash of the last event of that job's record, and
``fitfed/lineage/<job id>/events.jsonl`` holds a copy of that record (and of the records of the
jobs before it). Each copy's hash chain is verified, and it must end with exactly the event its
successor resumed from: a copy that was altered, truncated, extended or swapped is refused like
an altered run record.

The training's rounds are each earlier job's rounds before its successor's ``next_round``, then
the continuation's. A round the crash interrupted was lost and redone: it stays in the audit
table (with a ``run_interrupted`` row saying so), never in the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from databricks_bridge.audit_rows import FITFED_SERVICE, JOB_LEVEL, fitfed_rows, job_key, make_row
from databricks_bridge.errors import BridgeError, TamperedTrailError

LINEAGE_DIR = "lineage"  # <fitfed record>/lineage/<job id>/events.jsonl, as fitfed.server.resume writes it


@dataclass(frozen=True)
class EarlierJob:
    """An earlier job of the training, as the continuation carries it.

    Attributes:
        job_key: its job id, as the audit table and MLflow name it.
        source: its record's copy, for messages.
        events: its run record, hash chain verified, ending with the event its successor resumed from.
        resumed: its successor's ``run_resumed`` event.
        resumed_by: its successor's job id.
    """

    job_key: str
    source: str
    events: list[dict[str, Any]]
    resumed: dict[str, Any]
    resumed_by: str

    @property
    def next_round(self) -> int:
        """The round its successor went on from: the rounds before it are the training's."""
        return int(self.resumed["next_round"])

    @property
    def kept(self) -> list[dict[str, Any]]:
        """Its events of the rounds the training kept."""
        return [e for e in self.events if isinstance(e.get("round"), int) and e["round"] < self.next_round]

    @property
    def lost_rounds(self) -> list[int]:
        """Rounds it started that its successor ran again (the one the crash interrupted)."""
        return sorted({e["round"] for e in self.events if isinstance(e.get("round"), int)} - {*range(self.next_round)})


def resumed_event(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record's ``run_resumed`` event; None for a job that continues no other."""
    return next((e for e in events if e.get("event") == "run_resumed"), None)


def resume_refusal(events: list[dict[str, Any]]) -> str | None:
    """Why the job's server refused to resume the job it was to continue; None if it did not refuse."""
    return next((str(e.get("reason")) for e in events if e.get("event") == "resume_refused"), None)


def link_lineage(
    key: str, events: list[dict[str, Any]], copies: Mapping[str, tuple[str, list[dict[str, Any]]]], folder: str
) -> list[EarlierJob]:
    """The jobs a continuation continues, oldest first, each matched to its successor's ``run_resumed``.

    Args:
        key: the continuation's job id.
        events: its verified run record.
        copies: the verified record copies it carries, by job id: (where the copy is, its events).
        folder: where the copies are (``…/fitfed/lineage``), for messages.

    Raises:
        BridgeError: a copy that is missing, or a lineage that names another first job.
        TamperedTrailError: a copy that is not the record its successor resumed from.
    """
    earlier: list[EarlierJob] = []
    successor, successor_key = events, key
    while (resumed := resumed_event(successor)) is not None:
        job_id = str(resumed.get("resumed_from"))
        if job_id not in copies:
            raise BridgeError(
                f"{folder}/{job_id}/events.jsonl: missing; job {successor_key} resumed job {job_id} and carries its "
                "run record there. The job result is partial: export the continuation's whole result"
            )
        source, record = copies[job_id]
        if record[0].get("job_id") != job_id:
            raise TamperedTrailError(
                f"refusing to export: {source} is the run record of job {record[0].get('job_id')}, not of job {job_id}"
            )
        expected = resumed.get("resumed_from_events_hash")
        if record[-1]["hash"] != expected:
            raise TamperedTrailError(
                f"refusing to export: {source} ends with event {len(record) - 1} ({record[-1]['hash']}), but job "
                f"{successor_key} resumed job {job_id} after event {expected}; the copy was truncated, extended or "
                "replaced"
            )
        earlier.insert(0, EarlierJob(job_key(record, job_id), source, record, resumed, successor_key))
        successor, successor_key = record, earlier[0].job_key
    root = (resumed_event(events) or {}).get("lineage_root")
    if earlier and root != earlier[0].events[0].get("job_id"):
        raise BridgeError(
            f"{earlier[0].source}: the first job of job {key}'s training is {root}, but the "
            f"oldest run record it carries is job {earlier[0].job_key}'s; the lineage is incomplete"
        )
    return earlier


def training_events(earlier: list[EarlierJob], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events the training's metrics and facts come from: each earlier job's kept rounds, then the job's own."""
    return [*(e for job in earlier for e in job.kept), *events]


def lineage_rows(earlier: list[EarlierJob]) -> list[dict[str, Any]]:
    """The earlier jobs' events as audit rows under their own job ids, each followed by its ``run_interrupted`` row."""
    rows: list[dict[str, Any]] = []
    for job in earlier:
        rows += fitfed_rows(job.events, job_id=job.job_key)
        rows.append(interrupted_row(job))
    return rows


def interrupted_row(job: EarlierJob) -> dict[str, Any]:
    """Where an earlier job stopped and what its successor ran again, from its record and the ``run_resumed``.

    The row's id is the successor's ``run_resumed`` hash: each resumption of a job is one row.
    """
    last = job.events[-1]
    rounds = [e["round"] for e in job.events if isinstance(e.get("round"), int)]
    finished = any(e.get("event") == "run_finished" for e in job.events)
    how = "ended before its last round" if finished else "ends without run_finished: its server stopped mid-run"
    lost = job.lost_rounds
    redone = f"round{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))}"
    what = f"redid {redone}" if lost else f"went on from round {job.next_round}"
    message = f"the run record {how}; job {job.resumed_by} {what}"
    params = {
        "resumed_by": job.resumed_by, "last_completed_round": job.next_round - 1, "lost_rounds": lost,
        "redone_from_round": job.next_round, "last_event_seq": last.get("seq"), "last_event_hash": last["hash"],
        "checkpoint_sha256": job.resumed.get("checkpoint_sha256"),
    }  # fmt: skip
    return make_row(
        event_id=f"{job.resumed['hash']}-interrupted", when=datetime.fromtimestamp(float(last.get("time", 0)), tz=UTC),
        service=FITFED_SERVICE, action="run_interrupted", identity={"email": None, "subject_name": "server"},
        params=params, response={"status_code": 500, "error_message": message},
        level=JOB_LEVEL, job_id=job.job_key, site="server", round_number=max(rounds, default=None),
    )  # fmt: skip
