"""Clubs that drop out mid-job: the rounds go on with the others while min_updates holds, else the job ends."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.conftest import running_federation
from federation.harness import Federation
from fitfed.audit import verify_chain
from fitfed.jobs import build_recipe, export_into, load_job_module
from fitfed.report import find_record_dir
from fitfed.round_timing import RoundTiming

pytestmark = pytest.mark.slow
JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """A federation of its own: these tests kill clubs."""
    with running_federation(tmp_path_factory.mktemp("dropout_federation")) as fed:
        yield fed


def _restart(federation: Federation, clubs: list[str]) -> None:
    federation.wait_until_gone(clubs)
    for club in clubs:
        federation.start_client(club)
    federation.wait_for_clients(["club_01", "club_02", "club_03"])


def _job(tmp_path: Path, rounds: int) -> Path:
    """FedAvg churn with min_clients 2 of the 3 clubs, at FLARE's own 2.5 s rounds.

    With fitfed's 0.25 s rounds the whole job can finish before a club killed after round 0 is gone,
    so the kill would not land mid-job.
    """
    module = load_job_module(JOBS / "fedavg_churn.py")
    settings = module.SETTINGS.model_copy(
        update={"num_rounds": rounds, "min_clients": 2, "min_updates": 2, "timing": RoundTiming.flare_defaults()}
    )
    return export_into(build_recipe(module, settings), tmp_path)


def _wait_for_round(federation: Federation, job_id: str, round_number: int, timeout: float = 120) -> None:
    events = federation.kit(federation.roster.server.host) / job_id / "fitfed" / "events.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events.is_file():
            done = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
            if any(e["event"] == "round_completed" and e["round"] == round_number for e in done):
                return
        time.sleep(0.2)
    raise TimeoutError(f"round {round_number} of job {job_id} did not complete in {timeout}s")


def test_club_killed_and_restarted_mid_job_is_reported_and_the_job_finishes(federation: Federation, tmp_path: Path):
    # Execute: kill club_03 (its whole process group) once round 0 is done, as a crashed machine would; restart it
    # while the job still runs
    rounds = 16
    with federation.session("lead@fed.example") as session:
        job_id = session.submit_job(str(_job(tmp_path, rounds=rounds)))
        _wait_for_round(federation, job_id, 0)
        federation.kill("club_03")
        _restart(federation, ["club_03"])
        assert session.get_job_meta(job_id)["status"] == "RUNNING"  # restarted mid-job
        meta = session.wait_for_job(job_id, timeout=240, poll_interval=1.0)
        result = Path(session.download_job_result(job_id, str(tmp_path / "download")))

    # Assert: every round completed; after the kill only the two live clubs contributed, the restarted club too
    # (FLARE cannot bring it back into a running job); the trail says who dropped and that it cannot rejoin
    assert meta["status"] == "FINISHED:COMPLETED"
    events = verify_chain(find_record_dir(result) / "events.jsonl")
    completed = [e for e in events if e["event"] == "round_completed"]
    assert [e["round"] for e in completed] == list(range(rounds))
    assert completed[0]["sites"] == ["club_01", "club_02", "club_03"]
    assert all(e["sites"] == ["club_01", "club_02"] for e in completed[-3:])
    dropped = [e for e in events if e["event"] == "site_dropped"]
    assert [e["site"] for e in dropped] == ["club_03"]
    assert "cannot rejoin this job even if it restarts" in dropped[0]["reason"]
    assert "club_03" in federation.connected_clubs()  # back for the next job


def test_below_min_clients_the_job_ends_clearly(federation: Federation, tmp_path: Path):
    # Execute: two of three clubs die once round 0 is done; min_clients is 2
    with federation.session("lead@fed.example") as session:
        job_id = session.submit_job(str(_job(tmp_path, rounds=20)))
        _wait_for_round(federation, job_id, 0)
        federation.kill("club_02")
        federation.kill("club_03")
        meta = session.wait_for_job(job_id, timeout=240, poll_interval=1.0)
        result = Path(session.download_job_result(job_id, str(tmp_path / "download")))

    # Assert: it ended long before its 20 rounds, failed rather than completed, and the trail has both drops
    assert meta["status"] == "FINISHED:EXECUTION_EXCEPTION"
    events = verify_chain(find_record_dir(result) / "events.jsonl")
    assert sum(e["event"] == "round_completed" for e in events) < 20
    assert sorted(e["site"] for e in events if e["event"] == "site_dropped") in (
        ["club_02", "club_03"],
        ["club_02"],
        ["club_03"],
    )
