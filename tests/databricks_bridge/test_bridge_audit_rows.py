"""FLARE audit.log lines and fitfed events become rows shaped like system.access.audit; SQL stays safe."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

import pytest

from databricks_bridge import sql
from databricks_bridge.audit_rows import (
    COLUMNS,
    FEDERATION_LEVEL,
    JOB_LEVEL,
    fitfed_rows,
    job_key,
    parse_flare_audit,
    site_of,
    to_arrow,
)
from databricks_bridge.errors import BridgeError

# Lines exactly as nvflare/fuel/sec/audit.py writes them: str(datetime.now()), no zone.
ADMIN_LINE = (
    "[E:6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b][T:2026-03-01 09:30:00.250000][U:lead@club.example]"
    "[A:submit_job fedavg_churn]"
)
JOB_LINE = (
    "[E:0b9e8d7c-6b5a-4c3d-9e2f-1a0b9c8d7e6f][R:6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b][T:2026-03-01 09:31:00]"
    "[S:public][J:7c1f2a4e-aaaa-bbbb-cccc-000011112222][A:train#5d6e7f80-1111-2222-3333-444455556666]"
    'sent task to client "club_01"'
)


def test_admin_command_line():
    # Execute
    [row] = parse_flare_audit(
        ADMIN_LINE + "\n", source="audit.log", job_id="job-1", site="server", timezone=ZoneInfo("Europe/Berlin")
    )

    # Assert: Berlin winter time is UTC+1
    assert row["event_id"] == "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"
    assert row["event_time"] == datetime(2026, 3, 1, 8, 30, 0, 250000, tzinfo=UTC)
    assert row["event_date"].isoformat() == "2026-03-01"
    assert (row["service_name"], row["action_name"], row["audit_level"]) == ("nvflare", "submit_job", FEDERATION_LEVEL)
    assert row["user_identity"] == {"email": "lead@club.example", "subject_name": "lead@club.example"}
    assert row["request_params"] == {"logged_time": "2026-03-01 09:30:00.250000", "command": "submit_job fedavg_churn"}
    assert (row["job_id"], row["site"], row["round"]) == ("job-1", "server", None)
    assert list(row) == list(COLUMNS)


def test_job_event_line():
    # Execute
    [row] = parse_flare_audit(JOB_LINE + "\n", source="a", job_id="ignored", site="club_01", timezone=ZoneInfo("UTC"))

    # Assert: the line's own job id wins; time without fraction (str(datetime) drops .000000) parses
    assert row["job_id"] == "7c1f2a4e-aaaa-bbbb-cccc-000011112222"
    assert (row["action_name"], row["audit_level"], row["site"]) == ("train", JOB_LEVEL, "club_01")
    assert row["event_time"] == datetime(2026, 3, 1, 9, 31, tzinfo=UTC)
    params = row["request_params"]
    assert params["task_id"] == "5d6e7f80-1111-2222-3333-444455556666"
    assert params["ref"] == "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"
    assert params["scope"] == "public"
    assert params["message"] == 'sent task to client "club_01"'


def test_line_from_a_real_flare_server():
    # A line of a real FLARE 2.9 server's job audit.log (tests/federation): no [R:], no [S:]
    line = (
        "[E:d0b45a4c-199c-4bbd-96a1-ef22beb0beed][T:2026-11-21 07:12:39.680068][J:75164ef9-5033-42b3-a34b-5f803eea9d9f]"
        '[A:train#9c092ca7-c176-4e4b-9004-0806301cb547]sent task to client "club_02"'
    )
    [row] = parse_flare_audit(line + "\n", source="a", job_id="75164ef9", site="server", timezone=ZoneInfo("UTC"))
    assert (row["action_name"], row["job_id"]) == ("train", "75164ef9-5033-42b3-a34b-5f803eea9d9f")
    assert row["request_params"]["message"] == 'sent task to client "club_02"' and "scope" not in row["request_params"]


def test_simulator_job_lines_belong_to_the_job_read():
    line = JOB_LINE.replace("[J:7c1f2a4e-aaaa-bbbb-cccc-000011112222]", "[J:simulate_job]")
    [row] = parse_flare_audit(line + "\n", source="a", job_id="simulate_job-0123456789ab", site="server")
    assert row["job_id"] == "simulate_job-0123456789ab"
    assert row["request_params"]["flare_job_id"] == "simulate_job"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("INFO server started", "not a FLARE audit record"),
        ("[E:not-a-uuid][T:2026-03-01 09:30:00][U:a][A:b]", "malformed FLARE audit record"),
        ("[E:6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b][T:yesterday][U:a][A:b]", "malformed FLARE audit record"),
        ("[E:6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b][T:2026-03-01 09:30:00]", "not a FLARE audit record"),
    ],
)
def test_malformed_line_names_file_and_line(line: str, reason: str):
    text = ADMIN_LINE + "\n" + line + "\n"
    with pytest.raises(BridgeError, match=rf"^site/audit.log:2: {reason}"):
        parse_flare_audit(text, source="site/audit.log", job_id="j", site="server")


def test_line_still_being_written_is_left_for_later():
    rows = parse_flare_audit(ADMIN_LINE + "\n" + JOB_LINE[:40], source="a", job_id="j", site="server")
    assert len(rows) == 1


def test_fitfed_events_become_rows():
    # Prepare: an accepted update with DP's epsilon, a rejected one, and an event this bridge does not know
    events = [
        {"time": 1.5, "event": "site_update", "round": 2, "site": "club_01", "accepted": True, "seq": 4,
         "metrics": {"accuracy": 0.8, "privacy_epsilon": 1.25}, "hash": "h4"},
        {"time": 2.0, "event": "site_update", "round": 2, "site": "club_02", "accepted": False, "seq": 5,
         "reason": "the site's task failed", "hash": "h5"},
        {"time": 3.0, "event": "aggregation_report", "round": 2, "method": "trimmed_mean", "seq": 6, "hash": "h6"},
    ]  # fmt: skip

    # Execute
    rows = list(fitfed_rows(events, job_id="job-1"))

    # Assert
    assert [(r["event_id"], r["action_name"]) for r in rows] == [
        ("h4", "update_accepted"), ("h4-dp", "dp_budget_spent"), ("h5", "update_rejected"), ("h6", "aggregation_report")
    ]  # fmt: skip
    accepted, dp, rejected, other = rows
    assert accepted["request_params"]["metric.accuracy"] == "0.8" and accepted["response"]["status_code"] == 200
    assert (accepted["site"], accepted["round"], accepted["event_time"].year) == ("club_01", 2, 1970)
    assert dp["request_params"]["epsilon"] == "1.25"
    assert rejected["response"] == {"status_code": 400, "error_message": "the site's task failed", "result": None}
    assert other["request_params"]["method"] == "trimmed_mean" and other["site"] == "server"
    assert to_arrow(rows).num_rows == 4


def test_simulator_job_key_is_unique_per_run():
    assert job_key([{"job_id": "simulate_job", "hash": "ab" * 32}]) == "simulate_job-abababababab"
    assert job_key([{"job_id": "7c1f2a4e", "hash": "ab" * 32}]) == "7c1f2a4e"


@pytest.mark.parametrize(
    ("path", "site"),
    [
        ("server/simulate_job/audit.log", "server"),
        ("workspace/audit.log", "server"),
        ("audit.log", "server"),
        ("club_02/simulate_job/audit.log", "club_02"),
        ("LOG_audit.log_club_03", "club_03"),
    ],
)
def test_site_of_audit_file(path: str, site: str):
    assert site_of(PurePosixPath(path)) == site


def test_sql_names_and_paths_are_checked():
    assert sql.quoted_name("ml.fl.fl_audit_events") == "`ml`.`fl`.`fl_audit_events`"
    with pytest.raises(ValueError, match="name='ml.fl.t; DROP TABLE x'"):
        sql.quoted_name("ml.fl.t; DROP TABLE x")
    with pytest.raises(ValueError, match="volume_file="):
        sql.staged_rows("/Volumes/ml/fl/v/../../etc/passwd")
    merge = sql.merge_from("ml.fl.fl_audit_events", sql.staged_rows("/Volumes/ml/fl/v/job/abc.json"))
    assert merge.startswith("MERGE INTO `ml`.`fl`.`fl_audit_events` AS t USING (SELECT * FROM read_files(")
    assert "ON t.event_id = s.event_id WHEN NOT MATCHED THEN INSERT" in merge
