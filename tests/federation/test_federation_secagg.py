"""Pairwise-masking secure aggregation on real processes: a provisioned server and four clubs on localhost."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from federation.conftest import running_federation
from federation.harness import Federation
from fitfed.audit import verify_chain
from fitfed.jobs import JobSettings, build_recipe, export_into, load_job_module
from fitfed.report import find_record_dir
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
    for trail in trails:  # names, steps and reasons only: no keys, seeds, shares or masked values
        assert set(trail) == {"event", "round", "threshold", "selected", "steps", "aggregated",
                              "dropped_before_masking", "time", "seq", "prev_hash", "hash"}  # fmt: skip
        assert all(set(s) == {"step", "seconds", "took_part", "dropped", "reasons"} for s in trail["steps"])
        assert trail["aggregated"] == CLUBS and trail["dropped_before_masking"] == []
        assert [s["step"] for s in trail["steps"]] == ["advertise", "share", "masked_update", "unmask"]
        assert all(s["took_part"] == CLUBS and s["dropped"] == [] for s in trail["steps"])

    # Assert: the unmasked global model is plaintext FedAvg's, within fixed point's error over the rounds
    got = torch.load(masked_record / "global_model.pt", weights_only=True)
    want = torch.load(plain_record / "global_model.pt", weights_only=True)
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst < 1e-5, worst  # fixed point adds <= 4 * 2^-25 per round; float32 training keeps it that size
    assert rounding_error(4) < 2e-7


def test_dp_in_the_clubs_strict_scope_runs_before_masking(federation: Federation, tmp_path: Path):
    # Setup: the masked job under the clubs' strict scope (update-level DP: clip, noise, charge the ledger)
    settings = _settings("fedavg_masked_churn", num_rounds=2, min_clients=4, min_updates=4,
                         secure_aggregation=SecureAggregation(threshold=3))  # fmt: skip
    folder = _export(tmp_path, "fedavg_masked_churn", settings)
    meta_file = folder / "meta.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "scope": "strict"}))

    # Execute
    meta, record = _finish(federation, _submit(federation, folder), tmp_path / "download")

    # Assert: every update was noised in the club's scope, then masked. The DP filter refuses anything but
    # float weight differences, so had masking run first, no club could have sent anything.
    assert meta["status"] == "FINISHED:COMPLETED"
    updates = [e for e in verify_chain(record / "events.jsonl") if e["event"] == "site_update"]
    assert len(updates) == 4 * 2 and all(u["accepted"] for u in updates)
    assert {(u["privacy_scope"], u["payload"]) for u in updates} == {("strict", "masked")}
    assert all(u["metrics"]["privacy_epsilon"] > 0 for u in updates)


def test_forged_and_substituted_keys_are_refused_with_the_federations_real_identities(federation: Federation):
    # Setup: the real kits' identities and CA, as the server and clubs load them
    from fitfed.secagg.identity import ClubIdentity, KeyRefused, load_ca
    from fitfed.secagg.protocol import ClubRound, RoundContext, ServerRound

    ca = load_ca(federation.kit(federation.roster.server.host) / "startup" / "rootCA.pem")
    kits = {c: ClubIdentity.from_kit(federation.kit(c) / "startup", c) for c in ("club_01", "club_02")}
    context = RoundContext(job_id="job", round=0, threshold=2, roster=("club_01", "club_02"))
    server = ServerRound(context, ca, length=8)

    # Execute / Assert: club_01's key signed for club_02's name is refused; club_02's own is accepted
    forged = ClubRound(context, ClubIdentity("club_02", kits["club_01"]._key, kits["club_01"].certificate), ca)
    with pytest.raises(KeyRefused, match="belongs to \\['club_01'\\], not to club_02"):
        server.receive_advertisement("club_02", forged.advertise())
    server.receive_advertisement("club_02", ClubRound(context, kits["club_02"], ca).advertise())

    # Execute / Assert: a key substituted in transit fails club_02's own signature check at club_01
    club_01 = ClubRound(context, kits["club_01"], ca)
    server.receive_advertisement("club_01", club_01.advertise())
    relayed = [a.model_dump() for a in server.advertisements]
    relayed[1]["cipher_public"] = bytes(32)
    with pytest.raises(KeyRefused, match="club_02: the signature over its keys does not verify"):
        club_01.share(relayed)


def _hold_at_training(federation: Federation, job_id: str, clubs: list[str], round_number: int) -> dict:
    """Freeze every club (client and job process) the moment the server sends the round's training task.

    A club needs a task poll (0.2 s) plus training to answer, so none has answered when the freeze lands.
    """
    log = federation.kit(federation.roster.server.host) / "process.out"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        sent = [line for line in log.read_text(errors="replace").splitlines()
                if f"run={job_id}" in line and "Sending task train to" in line]  # fmt: skip
        if len(sent) > round_number:
            break
        time.sleep(0.01)
    else:
        raise TimeoutError(f"job {job_id}: round {round_number}'s training task was not sent")
    trees = {}
    for club in clubs:
        parent = psutil.Process(federation.processes[club].pid)
        trees[club] = [parent, *parent.children(recursive=True)]  # FLARE runs the club's job in its own process
        _signal(trees[club], signal.SIGSTOP)
    return trees


def _signal(tree: list, sig: int) -> None:
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


def _wait_for(federation: Federation, job_id: str, found, what: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = next((e for e in _events(federation, job_id) if found(e)), None)
        if match is not None:
            return match
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: {what} did not happen within {timeout}s")


def test_a_club_killed_after_masking_leaves_the_round_to_the_others(federation: Federation, tmp_path: Path):
    # Setup: 3 rounds, t=3 of the 4 clubs
    settings = _settings("fedavg_masked_churn", num_rounds=3, min_clients=3, min_updates=3,
                         secure_aggregation=SecureAggregation(threshold=3, step_timeout=15))  # fmt: skip
    job_id = _submit(federation, _export(tmp_path, "fedavg_masked_churn", settings))

    # Execute: hold every club as round 1's training goes out; let the victim alone send its masked update,
    # kill it (its client and its job process), then let the others go on
    trees = _hold_at_training(federation, job_id, CLUBS, round_number=1)
    victim = "club_02"
    _signal(trees[victim], signal.SIGCONT)
    _wait_for(federation, job_id, lambda e: e["event"] == "site_update" and e["round"] == 1 and e["site"] == victim,
              "the victim's round 1 update")  # fmt: skip
    _signal(trees.pop(victim), signal.SIGKILL)
    federation.kill(victim)
    for tree in trees.values():
        _signal(tree, signal.SIGCONT)
    meta, record = _finish(federation, job_id, tmp_path / "download")

    # Assert: all three rounds completed; in round 1 the victim's masked update counts, its unmask reply is missing
    assert meta["status"] == "FINISHED:COMPLETED"
    events = verify_chain(record / "events.jsonl")
    assert [e["round"] for e in events if e["event"] == "round_completed"] == [0, 1, 2]
    trail = next(e for e in events if e["event"] == "secure_aggregation" and e["round"] == 1)
    steps = {s["step"]: s for s in trail["steps"]}
    assert victim in steps["masked_update"]["took_part"] and steps["unmask"]["dropped"] == [victim]
    assert "failed" in steps["unmask"]["reasons"][victim]  # unreachable, or timed out
    assert trail["aggregated"] == CLUBS
    later = next(e for e in events if e["event"] == "secure_aggregation" and e["round"] == 2)
    assert later["aggregated"] == [c for c in CLUBS if c != victim]

    # Assert: round 1's global model is exactly the weighted FedAvg of the four clubs' updates, recomputed here
    before = torch.load(record / "rounds" / "global_model_round_1.pt", weights_only=True)
    after = torch.load(record / "rounds" / "global_model_round_2.pt", weights_only=True)
    expected = _fedavg_round(federation, settings, before, round_number=1)
    worst = max(float((after[k] - expected[k]).abs().max()) for k in expected)
    assert worst < 1e-5, worst


def _fedavg_round(federation: Federation, settings: JobSettings, start: dict, round_number: int) -> dict:
    """Train every club's round on its own data as its client script does, and average as FedAvg does."""
    from nvflare.app_common.abstract.fl_model import FLModel

    from fitfed.client import train_round
    from fitfed.task import load_site_data, make_model

    config = settings.train
    total, weights = None, 0.0
    for club in CLUBS:
        site = yaml.safe_load((federation.kit(club) / "local" / "fitfed_site.yaml").read_text())
        data = load_site_data(Path(site["data_path"]), config.task)
        model = make_model(config.model, data.num_features, seed=config.seed)
        model.load_state_dict(start)
        out = train_round(model, data, config, FLModel(params=start, current_round=round_number), None, None)
        weight = float(out.meta["NUM_STEPS_CURRENT_ROUND"])
        diff = {k: out.params[k].double() - start[k].double() for k in start}
        total = {k: weight * v for k, v in diff.items()} if total is None else {
            k: total[k] + weight * diff[k] for k in diff}  # fmt: skip
        weights += weight
    return {k: (start[k].double() + total[k] / weights).float() for k in start}


def test_fewer_than_t_clubs_aborts_the_round_and_keeps_the_last_good_model(federation: Federation, tmp_path: Path):
    """A club that stops answering (frozen, still connected) after masking leaves two of t=3 to unmask.

    A club whose process dies is soon dropped by FLARE, which itself ends a job below min_clients (>= t);
    a club that stays connected but silent is what the protocol's own step timeout catches.
    """
    # Setup: three clubs are left; t=3, and 3 s for each protocol step
    left = sorted(federation.processes.keys() - {federation.roster.server.host})
    assert len(left) == 3
    settings = _settings("fedavg_masked_churn", num_rounds=5, min_clients=3, min_updates=3,
                         secure_aggregation=SecureAggregation(threshold=3, step_timeout=3))  # fmt: skip
    job_id = _submit(federation, _export(tmp_path, "fedavg_masked_churn", settings))

    # Execute: hold every club as round 1's training goes out; let the chosen club send its masked update,
    # then freeze it (it stays connected) and let the others go on
    trees = _hold_at_training(federation, job_id, left, round_number=1)
    frozen = left[0]
    _signal(trees[frozen], signal.SIGCONT)
    _wait_for(federation, job_id, lambda e: e["event"] == "site_update" and e["round"] == 1 and e["site"] == frozen,
              "the frozen club's round 1 update")  # fmt: skip
    _signal(trees[frozen], signal.SIGSTOP)
    for club in left[1:]:
        _signal(trees[club], signal.SIGCONT)
    try:
        meta, record = _finish(federation, job_id, tmp_path / "download")
    finally:
        _signal(trees[frozen], signal.SIGKILL)  # SIGKILL ends a stopped process too
        federation.kill(frozen)

    # Assert: the job stopped and says why; round 1's trail names the step and the silent club
    assert meta["status"] != "FINISHED:COMPLETED"
    events = verify_chain(record / "events.jsonl")
    aborted = [e for e in events if e["event"] == "round_aborted"]
    assert len(aborted) == 1 and aborted[0]["round"] == 1
    assert "completed the unmask step, fewer than the threshold t=3" in aborted[0]["reason"]
    assert "stays as it was after 1 completed round(s)" in aborted[0]["reason"]
    trail = next(e for e in events if e["event"] == "secure_aggregation" and e["round"] == 1)
    unmask = trail["steps"][-1]
    assert unmask["step"] == "unmask" and unmask["dropped"] == [frozen], "the freeze came too late to test this"
    assert "TIMEOUT" in unmask["reasons"][frozen]
    assert [e["round"] for e in events if e["event"] == "round_completed"] == [0]

    # Assert: the global model is round 0's, and no model was made for the aborted round
    assert [p.name for p in (record / "rounds").glob("*.pt")] == ["global_model_round_1.pt"]
    final = torch.load(record / "global_model.pt", weights_only=True)
    last = torch.load(record / "rounds" / "global_model_round_1.pt", weights_only=True)
    assert all(torch.equal(final[k], last[k]) for k in last)
