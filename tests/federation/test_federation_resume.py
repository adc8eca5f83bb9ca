"""A server killed mid-job: `fitfed resume` continues from the last completed round, or says why it cannot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from federation.conftest import running_federation
from federation.harness import Federation
from fitfed.audit import last_hash, verify_chain
from fitfed.continuation import META_RESUMED_FROM
from fitfed.jobs import build_recipe, export_into, load_job_module
from fitfed.privacy.accounting import epsilon_spent
from fitfed.privacy.ledger import ledger_path
from fitfed.report import find_record_dir
from fitfed.round_timing import RoundTiming
from fitfed.server.checkpoint import checkpoint_path, read_manifest

pytestmark = pytest.mark.slow
JOBS = Path(__file__).resolve().parents[2] / "jobs"
FITFED = str(Path(sys.executable).parent / "fitfed")
LEAD = "lead@fed.example"
CLUBS = ["club_01", "club_02", "club_03"]
ROUNDS = 5
CRASH_ROUND = 2
HEARTBEAT_TIMEOUT = 8.0  # the server's, as harness.install_server_policy sets it


@dataclass(frozen=True)
class Crashed:
    """A SCAFFOLD job whose server was SIGKILLed in round CRASH_ROUND, and the server restarted."""

    job_id: str
    definition: Path
    rounds_completed: int


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """A federation of its own: these tests kill its server."""
    with running_federation(tmp_path_factory.mktemp("resume_federation")) as fed:
        yield fed


@pytest.fixture(scope="module")
def crashed(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Crashed:
    definition = _job("scaffold_churn", tmp_path_factory.mktemp("crashed_job"), ROUNDS)
    with federation.session(LEAD) as session:
        job_id = session.submit_job(str(definition))
    _crash_server_in_round(federation, job_id, CRASH_ROUND)
    record = _record(federation, job_id)
    return Crashed(job_id, definition, sum(e["event"] == "round_completed" for e in verify_chain(record)))


def _job(name: str, folder: Path, rounds: int, scope: str | None = None) -> Path:
    """A job at FLARE's own 2.5 s rounds, so that a kill lands mid-round."""
    module = load_job_module(JOBS / f"{name}.py")
    settings = module.SETTINGS.model_copy(update={"num_rounds": rounds, "timing": RoundTiming.flare_defaults()})
    definition = export_into(build_recipe(module, settings), folder)
    if scope is not None:
        meta = json.loads((definition / "meta.json").read_text())
        (definition / "meta.json").write_text(json.dumps({**meta, "scope": scope}, indent=2))
    return definition


def _record(federation: Federation, job_id: str) -> Path:
    return federation.kit(federation.roster.server.host) / job_id / "fitfed" / "events.jsonl"


def _wait_for(
    federation: Federation, job_id: str, found: Callable[[dict[str, Any]], bool], timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = _record(federation, job_id)
        lines = path.read_text().splitlines() if path.is_file() else []
        if any(found(json.loads(line)) for line in lines if line.strip()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: the awaited event did not happen within {timeout}s")


def _crash_server_in_round(federation: Federation, job_id: str, round_number: int) -> None:
    """SIGKILL the server (and its job process) once a club's update for the round is in; then restart it."""
    _wait_for(federation, job_id, lambda e: e["event"] == "site_update" and e["round"] == round_number)
    federation.crash(federation.roster.server.host)
    federation.start_server()
    federation.wait_for_clients(CLUBS, timeout=120)
    # The restarted server drops the clubs' first registrations once its heartbeat timeout passes (they re-register
    # at once); a job deployed in between loses them. Let that happen first.
    time.sleep(HEARTBEAT_TIMEOUT + 4)
    federation.wait_for_clients(CLUBS, timeout=120)


def _resume(federation: Federation, job_id: str, definition: Path | None = None) -> subprocess.CompletedProcess:
    """The ML lead's command, as a process, with the lead's admin kit (and the job folder that was submitted)."""
    command = [FITFED, "resume", job_id, "--kit", str(federation.kit(LEAD))]
    command += [] if definition is None else ["--job", str(definition)]
    return subprocess.run(command, env=federation.env, capture_output=True, text=True, timeout=480)


def _continuation_id(output: str) -> str:
    return next(line.split()[2].rstrip(":") for line in output.splitlines() if line.startswith("submitted job "))


def _download(federation: Federation, job_id: str, folder: Path) -> Path:
    with federation.session(LEAD) as session:
        return find_record_dir(Path(session.download_job_result(job_id, str(folder))))


def _final_model(record: Path) -> dict[str, torch.Tensor]:
    return torch.load(record / "global_model.pt", weights_only=True)


def test_a_job_killed_mid_round_resumes_and_ends_as_an_uninterrupted_run(
    federation: Federation, crashed: Crashed, tmp_path: Path
):
    # Arrange: the same job, uninterrupted
    with federation.session(LEAD) as session:
        reference_id = session.submit_job(str(crashed.definition))
        assert session.wait_for_job(reference_id, timeout=300, poll_interval=1.0)["status"] == "FINISHED:COMPLETED"
    reference = _download(federation, reference_id, tmp_path / "reference")
    assert 1 <= crashed.rounds_completed < ROUNDS  # the kill landed mid-job

    # Execute
    done = _resume(federation, crashed.job_id, crashed.definition)

    # Assert: the continuation completed the remaining rounds and says so
    assert done.returncode == 0, done.stdout + done.stderr
    continuation_id = _continuation_id(done.stdout)
    assert f"resumed at round {crashed.rounds_completed}" in done.stdout
    record = _download(federation, continuation_id, tmp_path / "continuation")
    events = verify_chain(record / "events.jsonl")
    resumed = next(e for e in events if e["event"] == "run_resumed")
    assert resumed["resumed_from"] == resumed["lineage_root"] == crashed.job_id
    assert resumed["next_round"] == crashed.rounds_completed
    # ... linked to the crashed job's trail, which it carries, with continuous round numbers and no round lost
    original = verify_chain(record / "lineage" / crashed.job_id / "events.jsonl")
    assert resumed["resumed_from_events_hash"] == last_hash(record / "lineage" / crashed.job_id / "events.jsonl")[0]
    before = [e["round"] for e in original if e["event"] == "round_completed"]
    after = [e["round"] for e in events if e["event"] == "round_completed"]
    assert before + after == list(range(ROUNDS))
    assert sorted(p.name for p in (record / "rounds").iterdir()) == sorted(
        f"global_model_round_{r}.pt" for r in range(1, ROUNDS + 1)
    )
    # ... and, with deterministic seeds, the same final model as the uninterrupted run (SCAFFOLD: both control
    # variates, the server's from the checkpoint and each club's from its kit, carried over)
    resumed_model, reference_model = _final_model(record), _final_model(reference)
    largest = max(float((resumed_model[k] - reference_model[k]).abs().max()) for k in reference_model)
    assert largest < 3e-5, largest  # summation order differs with arrival order; 3.4e-6 was measured
    assert json.loads((record / "global_model.json").read_text())["rounds"] == ROUNDS
    with federation.session(LEAD) as session:
        assert session.get_job_meta(continuation_id)[META_RESUMED_FROM] == crashed.job_id


def test_a_corrupt_checkpoint_or_a_changed_config_is_refused_with_the_reason(
    federation: Federation, crashed: Crashed, tmp_path: Path
):
    checkpoint = checkpoint_path(_record(federation, crashed.job_id).parent)
    intact = checkpoint.read_bytes()
    manifest = read_manifest(checkpoint)
    try:
        # Execute: a flipped byte in the checkpoint's state
        corrupt = bytearray(intact)
        corrupt[-100] ^= 0xFF
        checkpoint.write_bytes(bytes(corrupt))
        refused = _resume(federation, crashed.job_id, crashed.definition)
    finally:
        checkpoint.write_bytes(intact)

    # Assert: the server refused before training anything, and the lead is told why
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "corrupt checkpoint" in refused.stderr and "truncated or altered" in refused.stderr
    refused_record = _download(federation, _continuation_id(refused.stdout), tmp_path / "refused")
    events = verify_chain(refused_record / "events.jsonl")
    assert [e["event"] for e in events if e["event"] in ("resume_refused", "round_started")] == ["resume_refused"]

    # Execute: the same job resumed with a changed learning rate
    changed = shutil.copytree(crashed.definition, tmp_path / "changed" / crashed.definition.name)
    config = changed / "app" / "config" / "fitfed_train.json"
    original = config.read_text()
    config.write_text(original.replace('"learning_rate": 0.1', '"learning_rate": 0.2'))
    assert config.read_text() != original
    refused = _resume(federation, crashed.job_id, changed)

    # Assert: refused, naming the change; the crashed job's checkpoint is as it was
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "the configuration changed" in refused.stderr
    assert read_manifest(checkpoint) == manifest

    # Execute + Assert: without the job folder, FLARE cannot hand out a job it lists as RUNNING: told what to pass
    no_folder = _resume(federation, crashed.job_id)
    assert no_folder.returncode == 1 and "pass the job folder that was submitted with --job" in no_folder.stderr

    # Execute + Assert: a completed job is refused before anything is submitted
    with federation.session(LEAD) as session:
        completed_id = next(j["job_id"] for j in session.list_jobs() if j["status"] == "FINISHED:COMPLETED")
    done = _resume(federation, completed_id)
    assert done.returncode == 1 and "completed all its rounds; there is nothing to resume" in done.stderr
    assert "Traceback" not in done.stderr


def test_after_a_crash_the_dp_ledger_counts_the_lost_round_at_most_once(federation: Federation, tmp_path: Path):
    # Arrange: update-level DP in every club's strict scope, charged to each club's ledger
    rounds = 4
    definition = _job("fedavg_churn", tmp_path, rounds, scope="strict")
    with federation.session(LEAD) as session:
        job_id = session.submit_job(str(definition))
    _crash_server_in_round(federation, job_id, 2)

    # Execute
    done = _resume(federation, job_id, definition)
    assert done.returncode == 0, done.stdout + done.stderr
    continuation_id = _continuation_id(done.stdout)

    # Assert: per club, the training is charged as one job: an uninterrupted run's rounds plus at most the
    # one the crash interrupted, which the ledger shows twice (once per FLARE job)
    partial_rounds = []
    for club in CLUBS:
        entries = [
            e for e in verify_chain(ledger_path(federation.kit(club)))
            if e["event"] == "round_spent" and e["job_id"] == job_id
        ]  # fmt: skip
        in_crashed = [e for e in entries if e["run_job_id"] is None]
        in_continuation = [e for e in entries if e["run_job_id"] == continuation_id]
        assert len(in_crashed) + len(in_continuation) == len(entries)
        resumed_at = rounds - len(in_continuation)
        partial = len(in_crashed) - resumed_at
        assert partial in (0, 1), (club, len(in_crashed), resumed_at)
        final = entries[-1]
        assert final["steps_job"] == rounds + partial
        assert final["epsilon_job"] == pytest.approx(epsilon_spent(1.0, 1.0, rounds + partial, final["delta"], "rdp"))
        partial_rounds.append(partial)
    assert any(partial_rounds)  # the crash came after at least one club had released its round-2 update
    shutil.rmtree(tmp_path, ignore_errors=True)
