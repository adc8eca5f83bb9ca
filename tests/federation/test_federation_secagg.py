"""Pairwise-masking secure aggregation on real processes: a provisioned server and four clubs on localhost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from federation.conftest import running_federation
from federation.harness import Federation
from fitfed.audit import verify_chain
from fitfed.jobs import JobSettings, build_recipe, export_into, load_job_module
from fitfed.report import find_record_dir
from fitfed.round_timing import RoundTiming
from fitfed.secagg.config import SecureAggregation
from fitfed.secagg.encoding import rounding_error

pytestmark = pytest.mark.slow

JOBS = Path(__file__).resolve().parents[2] / "jobs"
CLUBS = ["club_01", "club_02", "club_03", "club_04"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Four clubs of its own: the later tests here kill clubs."""
    with running_federation(tmp_path_factory.mktemp("secagg_federation"), clubs=4) as fed:
        yield fed


def _settings(job: str, **update) -> JobSettings:
    """The job with SGD (see test_federation_he: Adam would amplify a 1e-8 difference into a learning-rate step)."""
    module = load_job_module(JOBS / f"{job}.py")
    train = module.SETTINGS.train.model_copy(update={"optimizer": "sgd", "learning_rate": 0.05})
    return module.SETTINGS.model_copy(update={"train": train, **update})


def _export(tmp_path: Path, job: str, settings: JobSettings) -> Path:
    module = load_job_module(JOBS / f"{job}.py")
    return export_into(build_recipe(module, settings), tmp_path / job)


def _submit(federation: Federation, folder: Path) -> str:
    with federation.session("lead@fed.example") as session:
        return session.submit_job(str(folder))


def _finish(federation: Federation, job_id: str, download: Path) -> tuple[dict, Path]:
    with federation.session("lead@fed.example") as session:
        meta = session.wait_for_job(job_id, timeout=300, poll_interval=1.0)
        result = Path(session.download_job_result(job_id, str(download)))
    return meta, find_record_dir(result)


def _events(federation: Federation, job_id: str) -> list[dict]:
    path = federation.kit(federation.roster.server.host) / job_id / "fitfed" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def test_masked_job_gives_plaintext_fedavg_on_four_clubs(federation: Federation, tmp_path: Path):
    # Setup: the masked churn job and its plaintext twin (same model, seeds, data, clubs), every club every round
    common = {"num_rounds": 3, "min_clients": 4, "min_updates": 4}
    masked = _settings("fedavg_masked_churn", secure_aggregation=SecureAggregation(threshold=3), **common)
    plain = _settings("fedavg_churn", **common)

    # Execute
    runs = {}
    for name, job, settings in (("masked", "fedavg_masked_churn", masked), ("plain", "fedavg_churn", plain)):
        job_id = _submit(federation, _export(tmp_path, job, settings))
        runs[name] = _finish(federation, job_id, tmp_path / f"{name}_result")

    # Assert: both completed; the server received only masked vectors in the masked job
    (masked_meta, masked_record), (plain_meta, plain_record) = runs["masked"], runs["plain"]
    assert masked_meta["status"] == plain_meta["status"] == "FINISHED:COMPLETED"
    events = verify_chain(masked_record / "events.jsonl")
    updates = [e for e in events if e["event"] == "site_update"]
    assert len(updates) == 4 * 3 and {u["payload"] for u in updates} == {"masked"}
    assert [e["round"] for e in events if e["event"] == "round_completed"] == [0, 1, 2]
    trails = [e for e in events if e["event"] == "secure_aggregation"]
    assert [t["round"] for t in trails] == [0, 1, 2]
    for trail in trails:
        assert trail["aggregated"] == CLUBS and trail["dropped_before_masking"] == []
        assert [s["step"] for s in trail["steps"]] == ["advertise", "share", "masked_update", "unmask"]
        assert all(s["took_part"] == CLUBS and s["dropped"] == [] for s in trail["steps"])

    # Assert: the unmasked global model is plaintext FedAvg's, within fixed point's error over the rounds
    got = torch.load(masked_record / "global_model.pt", weights_only=True)
    want = torch.load(plain_record / "global_model.pt", weights_only=True)
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst < 1e-5, worst  # fixed point adds <= 4 * 2^-25 per round; float32 training keeps it that size
    assert rounding_error(4) < 2e-7
