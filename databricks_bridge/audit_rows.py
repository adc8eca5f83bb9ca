"""Rows of the ``fl_audit_events`` table: FLARE's ``audit.log`` lines and fitfed's own run-record events.

The columns mirror Databricks ``system.access.audit`` (``event_id``, ``event_time`` in UTC,
``event_date``, ``service_name``, ``action_name``, ``user_identity``, ``request_params`` as a
map, ``response``, ``audit_level``), plus ``job_id``, ``site`` and ``round``. Every parser here
is plain Python, so the local export, the Databricks mode and the Spark entry point share it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from databricks_bridge.errors import BridgeError

TABLE_NAME = "fl_audit_events"
FLARE_SERVICE = "nvflare"
FITFED_SERVICE = "fitfed"
BRIDGE_SERVICE = "fitfed.bridge"
JOB_LEVEL = "JOB_LEVEL"  # events of one job: its tasks, rounds, updates
FEDERATION_LEVEL = "FEDERATION_LEVEL"  # admin commands against a site (FLARE's user form)

SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("event_date", pa.date32()),
        ("service_name", pa.string()),
        ("action_name", pa.string()),
        ("user_identity", pa.struct([("email", pa.string()), ("subject_name", pa.string())])),
        ("request_params", pa.map_(pa.string(), pa.string())),
        ("response", pa.struct([("status_code", pa.int32()), ("error_message", pa.string()), ("result", pa.string())])),
        ("audit_level", pa.string()),
        ("job_id", pa.string()),
        ("site", pa.string()),
        ("round", pa.int32()),
    ]
)
COLUMNS = tuple(SCHEMA.names)

# The same columns as SQL DDL, for CREATE TABLE and for read_files(schema => ...) on Databricks and Spark.
DDL = (
    "event_id STRING, event_time TIMESTAMP, event_date DATE, service_name STRING, action_name STRING, "
    "user_identity STRUCT<email: STRING, subject_name: STRING>, request_params MAP<STRING, STRING>, "
    "response STRUCT<status_code: INT, error_message: STRING, result: STRING>, audit_level STRING, "
    "job_id STRING, site STRING, round INT"
)

# FLARE's Auditor (nvflare/fuel/sec/audit.py) writes two forms, each field optional where FLARE omits it:
#   [E:<uuid>][R:<ref>][T:<datetime.now()>][U:<user>][A:<action>]<msg>            (admin commands)
#   [E:<uuid>][R:<ref>][T:<datetime.now()>][S:<scope>][J:<job>][A:<task>#<id>]<msg>   (job events)
_FLARE_LINE = re.compile(
    r"^\[E:(?P<E>[^\]]*)\](?:\[R:(?P<R>[^\]]*)\])?\[T:(?P<T>[^\]]*)\](?:\[U:(?P<U>[^\]]*)\])?"
    r"(?:\[S:(?P<S>[^\]]*)\])?(?:\[J:(?P<J>[^\]]*)\])?(?:\[A:(?P<A>[^\]]*)\])?(?P<msg>.*)$"
)
_EXPECTED_FORM = "expected FLARE's '[E:<uuid>][T:<time>][U:<user>][A:<action>]...' or '[E:..][T:..][S:..][J:<job>]...'"
EPSILON_METRICS = ("privacy_epsilon", "dp_epsilon", "epsilon")
SIMULATOR_JOB_ID = "simulate_job"


def job_key(events: list[dict[str, Any]], fallback: str = "") -> str:
    """The job id the audit table and MLflow use: FLARE's, except the simulator's, which names every job alike.

    A simulator run becomes ``simulate_job-<12 hex>``, from the hash of its run record's first event.
    """
    job_id = str(events[0].get("job_id") or fallback) if events else fallback
    return f"{SIMULATOR_JOB_ID}-{events[0]['hash'][:12]}" if job_id == SIMULATOR_JOB_ID else job_id


def parse_flare_audit(
    text: str, *, source: str, job_id: str, site: str, timezone: ZoneInfo | None = None
) -> list[dict[str, Any]]:
    """Parse the lines of one FLARE ``audit.log`` into rows.

    FLARE writes local wall-clock times without a zone; they are read in ``timezone`` (default:
    this machine's zone) and stored in UTC, with the original text kept in ``request_params``.

    Args:
        text: the file's content.
        source: the file's name, for error messages.
        job_id: the job the file belongs to (used where a line names none).
        site: the site that wrote the file.
        timezone: the zone the site's clock was in.

    Raises:
        BridgeError: naming ``source`` and the line of a malformed record. A last line without a
            newline is a record still being written and is left for the next export.
    """
    lines = text.split("\n")
    complete = lines[:-1] if not text.endswith("\n") else lines
    rows = []
    for number, line in enumerate(complete, start=1):
        if line.strip():
            rows.append(_flare_row(line.rstrip("\r"), f"{source}:{number}", job_id, site, timezone))
    return rows


def _flare_row(line: str, where: str, job_id: str, site: str, timezone: ZoneInfo | None) -> dict[str, Any]:
    match = _FLARE_LINE.match(line)
    fields = match.groupdict() if match else {}
    if not match or not (fields["U"] is not None and fields["A"] is not None or fields["J"] is not None):
        raise BridgeError(f"{where}: not a FLARE audit record ({_EXPECTED_FORM}); got {line[:80]!r}")
    try:
        uuid.UUID(fields["E"])
        logged = datetime.fromisoformat(fields["T"])
    except ValueError as e:
        raise BridgeError(f"{where}: malformed FLARE audit record ({e}); got {line[:80]!r}") from None
    when = (logged.replace(tzinfo=timezone) if timezone else logged.astimezone()) if logged.tzinfo is None else logged
    params = {"logged_time": fields["T"], "ref": fields["R"], "message": fields["msg"].strip() or None}
    if fields["J"] is not None:
        task, _, task_id = (fields["A"] or "").partition("#")
        action = task if task and task != "?" else "job_event"
        params.update(scope=fields["S"], task_name=task or None, task_id=task_id or None, flare_job_id=fields["J"])
        # The simulator calls every job simulate_job; its lines belong to the job being read.
        job = job_id if fields["J"] in ("", SIMULATOR_JOB_ID) else fields["J"]
        identity, level = {"email": None, "subject_name": site}, JOB_LEVEL
    else:
        action = fields["A"].split(" ", 1)[0] or "?"
        params["command"] = fields["A"]
        user = fields["U"]
        identity, level, job = {"email": user if "@" in user else None, "subject_name": user}, FEDERATION_LEVEL, job_id
    return make_row(
        event_id=fields["E"], when=when, service=FLARE_SERVICE, action=action, identity=identity,
        params=params, level=level, job_id=job, site=site,
    )  # fmt: skip


def fitfed_rows(events: Iterable[dict[str, Any]], *, job_id: str) -> Iterator[dict[str, Any]]:
    """Rows for fitfed's hash-chained run-record events; each row's ``event_id`` is the event's hash."""
    for event in events:
        kind = event.get("event", "unknown")
        site = event.get("site") or "server"
        when = datetime.fromtimestamp(float(event.get("time", 0)), tz=UTC)
        response = None
        action = {"round_completed": "round_ended"}.get(kind, kind)
        if kind == "site_update":
            action = "update_accepted" if event.get("accepted") else "update_rejected"
            response = {"status_code": 200 if event.get("accepted") else 400, "error_message": event.get("reason")}
        elif kind == "round_aborted":
            response = {"status_code": 500, "error_message": event.get("reason")}
        elif event.get("reason"):  # a site that could not evaluate, a site that dropped out
            response = {"error_message": event["reason"]}
        params = {k: v for k, v in event.items() if k not in ("event", "time", "site", "hash", "metrics", "reason")}
        params.update({f"metric.{k}": v for k, v in (event.get("metrics") or {}).items()})
        yield make_row(
            event_id=event["hash"], when=when, service=FITFED_SERVICE, action=action,
            identity={"email": None, "subject_name": site}, params=params, response=response,
            level=JOB_LEVEL, job_id=job_id, site=site, round_number=event.get("round"),
        )  # fmt: skip
        epsilon = next((event["metrics"][k] for k in EPSILON_METRICS if k in (event.get("metrics") or {})), None)
        if kind == "site_update" and epsilon is not None:
            yield make_row(
                event_id=f"{event['hash']}-dp", when=when, service=FITFED_SERVICE, action="dp_budget_spent",
                identity={"email": None, "subject_name": site}, params={"epsilon": epsilon, "seq": event.get("seq")},
                level=JOB_LEVEL, job_id=job_id, site=site, round_number=event.get("round"),
            )  # fmt: skip


def make_row(
    *,
    event_id: str,
    when: datetime,
    service: str,
    action: str,
    identity: dict[str, str | None],
    params: dict[str, Any],
    level: str,
    job_id: str,
    site: str,
    response: dict[str, Any] | None = None,
    round_number: int | None = None,
) -> dict[str, Any]:
    """One table row; ``request_params`` values become strings (JSON for lists and numbers), ``None`` dropped."""
    utc = when.astimezone(UTC)
    return {
        "event_id": event_id,
        "event_time": utc,
        "event_date": utc.date(),
        "service_name": service,
        "action_name": action,
        "user_identity": identity,
        "request_params": {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items() if v is not None},
        "response": None
        if response is None
        else {"status_code": None, "error_message": None, "result": None, **response},  # fmt: skip
        "audit_level": level,
        "job_id": job_id,
        "site": site,
        "round": round_number,
    }


def to_arrow(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows as an Arrow table with the table's schema (maps as key/value pairs)."""
    arrow_rows = [{**row, "request_params": list(row["request_params"].items())} for row in rows]
    return pa.Table.from_pylist(arrow_rows, schema=SCHEMA)


def to_json_lines(rows: list[dict[str, Any]]) -> bytes:
    """The rows as JSON lines, times in ISO 8601 UTC: the staging format Databricks reads with ``read_files``."""
    out = []
    for row in rows:
        record = {**row, "event_time": row["event_time"].isoformat(), "event_date": row["event_date"].isoformat()}
        out.append(json.dumps(record, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode("utf-8")


def unique_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with each ``event_id`` once (the first wins), in order."""
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["event_id"] not in seen:
            seen.add(row["event_id"])
            unique.append(row)
    return unique


def site_of(relative: PurePath) -> str:
    """Which site wrote an audit file, from its path inside a job result.

    ``server/…`` (simulator), ``workspace/…`` (``nvflare job download``) and files at the top are
    the server's; ``<site>/…`` is that site's; ``LOG_audit.log_<site>`` (a downloaded job component)
    names its site.
    """
    if relative.name.startswith("LOG_audit.log_"):
        return relative.name.removeprefix("LOG_audit.log_")
    if len(relative.parts) == 1 or relative.parts[0] in ("server", "workspace"):
        return "server"
    return relative.parts[0]


def is_audit_file(path: PurePath) -> bool:
    """FLARE's audit file, as a site writes it or as a downloaded job component."""
    return path.name == "audit.log" or path.name.startswith("LOG_audit.log_")
