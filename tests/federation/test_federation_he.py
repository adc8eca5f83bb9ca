"""Homomorphic encryption on real processes: the server holds no key, sees only ciphertext, and gets FedAvg's answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
import torch
import yaml
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from databricks_bridge import BridgeSettings, export_job
from federation.harness import Federation
from fitfed.audit import verify_chain
from fitfed.cli import main as fitfed_main
from fitfed.jobs import build_recipe, export_into, load_job_module
from fitfed.privacy.he import CIPHERTEXT_FORMAT, CLIENT_CONTEXT_FILE, SERVER_CONTEXT_FILE, load_context
from fitfed.report import find_record_dir
from fitfed.task import make_model

pytestmark = pytest.mark.slow

JOBS = Path(__file__).resolve().parents[2] / "jobs"
ROUNDS = 2
# CKKS with FLARE's default parameters (degree 8192, scale 2^40) adds about 1e-6 per aggregation; the two
# runs then train from weights that differ by that much. 1e-4 is far below any effect of training.
CKKS_TOLERANCE = 1e-4


def _export(tmp_path: Path, job: str) -> Path:
    """The job with every club in every round, so both runs aggregate the same three updates, trained with SGD.

    SGD, not the demo's Adam: Adam divides each step by the gradient's running size, so where a gradient is
    near zero a 1e-6 difference in the received model flips a whole learning-rate step, and a comparison over
    rounds would measure Adam's sensitivity rather than HE's error.
    """
    module = load_job_module(JOBS / f"{job}.py")
    train = module.SETTINGS.train.model_copy(update={"optimizer": "sgd", "learning_rate": 0.05})
    settings = module.SETTINGS.model_copy(update={"num_rounds": ROUNDS, "min_updates": 3, "train": train})
    return export_into(build_recipe(module, settings), tmp_path / "jobs")


def _run(federation: Federation, folder: Path, download: Path) -> tuple[dict, Path]:
    with federation.session("lead@fed.example") as session:
        job_id = session.submit_job(str(folder))
        meta = session.wait_for_job(job_id, timeout=300, poll_interval=1.0)
        result = Path(session.download_job_result(job_id, str(download)))
    return meta, find_record_dir(result)


@pytest.fixture(scope="module")
def runs(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    """The HE churn job and its plaintext twin (same model, seeds, data and clubs), run on the same federation."""
    tmp = tmp_path_factory.mktemp("he_runs")
    return {
        "he": _run(federation, _export(tmp, "fedavg_he_churn"), tmp / "he"),
        "plain": _run(federation, _export(tmp, "fedavg_churn"), tmp / "plain"),
    }


def test_server_context_holds_no_secret_key_and_cannot_decrypt(federation: Federation):
    # Setup: a club encrypts a vector with its context, as its job does
    server = load_context(federation.kit(federation.roster.server.host) / "startup" / SERVER_CONTEXT_FILE)
    club = load_context(federation.kit("club_01") / "startup" / CLIENT_CONTEXT_FILE)
    ciphertext = ts.ckks_vector(club, [0.25, -1.5, 3.0]).serialize()

    # Execute / Assert: the server's copy of the ciphertext cannot be decrypted with the server's context
    assert not server.has_secret_key() and server.is_public()
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(server, ciphertext).decrypt()
    assert np.allclose(ts.ckks_vector_from(club, ciphertext).decrypt(), [0.25, -1.5, 3.0], atol=1e-6)


def test_server_receives_and_stores_only_ciphertext(federation: Federation, runs: dict[str, tuple[dict, Path]]):
    # Setup
    meta, record = runs["he"]
    server = load_context(federation.kit(federation.roster.server.host) / "startup" / SERVER_CONTEXT_FILE)

    # Assert: every update the server received was CKKS ciphertext (the server's own record says so)
    assert meta["status"] == "FINISHED:COMPLETED"
    updates = [e for e in verify_chain(record / "events.jsonl") if e["event"] == "site_update"]
    assert len(updates) == 3 * ROUNDS and {u["payload"] for u in updates} == {"ckks"}

    # Assert: what it stored, final and per round, is ciphertext it cannot open
    stored = [record / "global_model.pt", *sorted((record / "rounds").glob("*.pt"))]
    assert len(stored) == 1 + ROUNDS
    for path in stored:
        model = torch.load(path, weights_only=True)
        assert model["format"] == CIPHERTEXT_FORMAT
        for layer in model["layers"].values():
            assert isinstance(layer, bytes)
            with pytest.raises(ValueError, match="secret_key"):
                ts.ckks_vector_from(server, layer).decrypt()
    assert json.loads((record / "global_model.json").read_text())["encrypted"] is True


def test_decrypted_he_model_equals_plaintext_fedavg(federation: Federation, runs: dict[str, tuple[dict, Path]]):
    # Setup
    _, he_record = runs["he"]
    plain_meta, plain_record = runs["plain"]
    assert plain_meta["status"] == "FINISHED:COMPLETED"

    # Execute: a club decrypts the final model with its key, as its IT team would
    assert fitfed_main(["he", "decrypt", str(he_record.parent), "--kit", str(federation.kit("club_02"))]) == 0

    # Assert: the decrypted model is the plaintext FedAvg model of the same run, within CKKS tolerance
    decrypted = torch.load(he_record / "decrypted_global_model.pt", weights_only=True)
    plain = torch.load(plain_record / "global_model.pt", weights_only=True)
    assert decrypted.keys() == plain.keys()
    worst = max(float((decrypted[k] - plain[k]).abs().max()) for k in plain)
    assert worst < CKKS_TOLERANCE
    train = load_job_module(JOBS / "fedavg_churn.py").SETTINGS.train
    initial = make_model(train.model, len(train.task.encoded_feature_names()), seed=train.seed).state_dict()
    moved = max(float((plain[k] - initial[k]).abs().max()) for k in plain)
    assert moved > 100 * CKKS_TOLERANCE  # training moved the weights far more than the tolerance
    sidecar = json.loads((he_record / "decrypted_global_model.json").read_text())
    assert sidecar["encrypted"] is False and sidecar["decrypted_by"] == "club_02"
    assert len(sidecar["decrypted_from_sha256"]) == 64


def test_bridge_registers_the_clubs_decrypted_model_never_the_ciphertext(
    federation: Federation, runs: dict[str, tuple[dict, Path]], tmp_path: Path
):
    # Setup: a club decrypts the final model (as in the test above; decrypting again rewrites the same files)
    _, record = runs["he"]
    assert fitfed_main(["he", "decrypt", str(record.parent), "--kit", str(federation.kit("club_01"))]) == 0

    # Execute
    exported = export_job(record.parent, BridgeSettings(state_dir=tmp_path / "lakehouse"))

    # Assert: version 1 is the decrypted model, said to be so
    assert exported.model_version == "1" and exported.model_note == "decrypted by key-holding club 'club_01'"


def _independent_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon of `rounds` Gaussian mechanisms (sample rate 1), straight from Opacus's RDP analysis."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=rounds, orders=orders)
    return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def test_dp_in_the_clubs_strict_scope_runs_before_encryption(federation: Federation, tmp_path: Path):
    # Setup: the clubs' strict scope (site template: clip 1.0, noise 1.0); club_03's budget affords one round only
    policy = json.loads((federation.kit("club_01") / "local" / "privacy.json").read_text())
    strict = next(s for s in policy["scopes"] if s["name"] == "strict")
    noise = strict["task_result_filters"][0]["args"]["noise_multiplier"]
    one, two = (_independent_epsilon(noise, r, 1e-5) for r in (1, 2))
    site = yaml.safe_load((federation.kit("club_03") / "local" / "fitfed_site.yaml").read_text())
    federation.set_privacy_budget("club_03", Path(site["data_path"]), epsilon=(one + two) / 2)
    module = load_job_module(JOBS / "fedavg_he_churn.py")
    folder = export_into(build_recipe(module, module.SETTINGS.model_copy(update={"num_rounds": 2})), tmp_path)
    meta_file = folder / "meta.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "scope": "strict"}))

    # Execute
    meta, record = _run(federation, folder, tmp_path / "download")

    # Assert: the job completes; club_03 refused its second round, the others went on (min_updates 2)
    assert meta["status"] == "FINISHED:COMPLETED"
    events = verify_chain(record / "events.jsonl")
    updates = [e for e in events if e["event"] == "site_update" and e["accepted"]]
    assert {(u["round"], u["site"]) for u in updates} == {
        (0, "club_01"), (0, "club_02"), (0, "club_03"), (1, "club_01"), (1, "club_02")
    }  # fmt: skip
    # Each update was noised in the club's strict scope (the filter refuses ciphertext) and then encrypted
    assert {(u["privacy_scope"], u["payload"]) for u in updates} == {("strict", "ckks")}
    for update in updates:
        expected = one if update["round"] == 0 else two
        assert update["metrics"]["privacy_epsilon"] == pytest.approx(expected, rel=1e-6)

    # Assert: each club's own ledger holds its spends, and club_03's the refusal with its reason
    job_id = record.parent.parent.name if record.parent.name == "workspace" else record.parent.name
    for club, rounds in (("club_01", 2), ("club_03", 1)):
        ledger = verify_chain(federation.kit(club) / "local" / "fitfed_privacy_ledger.jsonl")
        spent = [e for e in ledger if e["event"] == "round_spent" and e["job_id"] == job_id]
        assert len(spent) == rounds and spent[-1]["epsilon_job"] == pytest.approx([one, two][rounds - 1], rel=1e-6)
    refusals = [e for e in verify_chain(federation.kit("club_03") / "local" / "fitfed_privacy_ledger.jsonl")
                if e["event"] == "refused" and e["job_id"] == job_id]  # fmt: skip
    assert len(refusals) == 1 and "budget" in refusals[0]["reason"]
