"""HE parameters too weak for weights are refused; a club decrypts the server's ciphertext model exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import tenseal as ts
import torch
import yaml

from fitfed.cli import main as fitfed_main
from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings
from fitfed.models import ModelConfig
from fitfed.privacy.he import (
    MAX_WEIGHT_ERROR,
    HEParameters,
    WeakHEParameters,
    check_context,
    check_parameters,
    decrypt_global_model,
    encrypted_layers,
    save_ciphertext_model,
)
from fitfed.provision import RosterError, load_roster
from fitfed.server.run_record import model_sidecar
from fitfed.spec import load_spec
from fitfed.task import make_model

REPO = Path(__file__).resolve().parents[2]


def _context(degree: int = 8192, bits: tuple[int, ...] = (60, 40, 40), scale: int = 40) -> ts.Context:
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=degree, coeff_mod_bit_sizes=list(bits))
    context.global_scale = 2**scale
    return context


def test_flares_default_parameters_pass_with_a_tiny_error():
    assert check_parameters(HEParameters()) < MAX_WEIGHT_ERROR / 10


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (HEParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=[30, 20, 30], scale_bits=20), "too weak"),
        (HEParameters(poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 20, 20, 60], scale_bits=20), "too weak"),
        (HEParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 60, 60], scale_bits=40), "not valid CKKS"),
    ],
)
def test_weak_or_invalid_parameters_are_refused(params: HEParameters, message: str):
    with pytest.raises(WeakHEParameters, match=message):
        check_parameters(params)


def test_roster_with_weak_he_is_refused_before_any_kit_exists(tmp_path: Path):
    # Setup
    raw = yaml.safe_load((REPO / "provisioning" / "roster.example.yaml").read_text())
    raw["he"] = {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [30, 20, 30], "scale_bits": 20}
    roster = tmp_path / "roster.yaml"
    roster.write_text(yaml.safe_dump(raw))

    # Execute / Assert: the roster names the field and the fix
    with pytest.raises(RosterError, match=r"he: .*too weak for model weights.*Raise scale_bits"):
        load_roster(roster)
    assert fitfed_main(["provision", "init", "--roster", str(roster), "--out", str(tmp_path / "p.yml")]) == 1
    assert not (tmp_path / "p.yml").exists()


def test_a_context_without_secret_key_cannot_be_checked_or_decrypt():
    public = _context()
    public.make_context_public()
    with pytest.raises(ValueError, match="no secret key"):
        check_context(public, "server_context.tenseal")


def _encrypted_model(tmp_path: Path, context: ts.Context) -> tuple[dict[str, torch.Tensor], Path, Path]:
    """A global model as the server stores it in an HE job: ciphertext layers plus the run's sidecar."""
    config = TrainConfig(task=load_spec("churn"), model=ModelConfig(name="mlp", hidden_units=8), local_epochs=1)
    model = make_model(config.model, len(config.task.encoded_feature_names()), seed=3)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = encrypted_layers({k: ts.ckks_vector(context, v.flatten().tolist()) for k, v in weights.items()})
    assert layers is not None
    record = tmp_path / "fitfed"
    record.mkdir()
    save_ciphertext_model(layers, record / "global_model.pt")
    sidecar = {**model_sidecar(config, job_id="j1", job_name="he", rounds=2, sites=["a", "b"]), "encrypted": True}
    (record / "global_model.json").write_text(json.dumps(sidecar))
    return weights, record / "global_model.pt", record / "global_model.json"


def test_club_decrypts_the_servers_model_into_weights_and_sidecar(tmp_path: Path):
    # Setup
    context = _context()
    weights, ciphertext, sidecar = _encrypted_model(tmp_path, context)

    # Execute
    written = decrypt_global_model(ciphertext, sidecar, context, club="club_01")

    # Assert: the plain state dict loads safely, matches the weights, and its sidecar names source and club
    decrypted = torch.load(written.weights, weights_only=True)
    assert max(float((decrypted[k] - weights[k]).abs().max()) for k in weights) < 1e-5
    meta = json.loads(written.sidecar.read_text())
    assert meta["encrypted"] is False and meta["decrypted_by"] == "club_01"
    assert meta["feature_names"] == json.loads(sidecar.read_text())["feature_names"]
    assert meta["decrypted_from_sha256"] == hashlib.sha256(ciphertext.read_bytes()).hexdigest()


def test_the_servers_public_context_cannot_decrypt(tmp_path: Path):
    context = _context()
    _, ciphertext, sidecar = _encrypted_model(tmp_path, context)
    public = ts.context_from(context.serialize(save_secret_key=False))
    with pytest.raises(ValueError, match="no secret key"):
        decrypt_global_model(ciphertext, sidecar, public, club="server")


def test_plain_weights_are_not_ciphertext():
    assert encrypted_layers({"w": torch.zeros(2)}) is None


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"train": {"algorithm": "scaffold"}}, "train.algorithm must be 'fedavg'"),
        ({"aggregator": {"method": "median"}}, "cannot be combined"),
    ],
)
def test_he_job_settings_refuse_what_encryption_cannot_do(update: dict, message: str):
    base = {
        "name": "he_job",
        "num_rounds": 2,
        "min_clients": 3,
        "he": True,
        "train": {"task": load_spec("churn").model_dump(), "local_epochs": 1},
    }
    for key, value in update.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    with pytest.raises(ValueError, match=message):
        JobSettings.model_validate(base)


def test_he_job_is_refused_by_the_simulator_command_with_the_way_forward(tmp_path: Path, capsys):
    assert fitfed_main(["run", "fedavg_he_churn", "--data", str(tmp_path)]) == 1
    assert "nvflare job submit" in capsys.readouterr().err
