"""Homomorphic encryption around FLARE's TenSEAL components: strong-enough parameters, and the club-side decryption.

FLARE's HE recipe (``FedAvgRecipeWithHE``) encrypts each club's update with CKKS before it leaves
the club, and the server adds ciphertexts without a secret key. Two things FLARE leaves to the user:

- **Parameters.** CKKS is approximate. With a small polynomial degree or scale, the sum the server
  computes decrypts to weights that are off by 1e-2 or more: training silently degrades.
  :func:`check_parameters` and :func:`check_context` measure the error of an aggregation like a
  real round's and refuse parameters whose error exceeds :data:`MAX_WEIGHT_ERROR`.
- **The final model.** The server only ever holds the encrypted global model. A club holding the key
  (under FLARE's HEBuilder every club holds the same secret key) decrypts it with
  :func:`decrypt_global_model` into the usual state dict and sidecar, which the bridge can register.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.he.homomorphic_encrypt import load_tenseal_context_from_workspace
from pydantic import BaseModel, ConfigDict, Field

from fitfed.models import ModelConfig, build_model

CLIENT_CONTEXT_FILE = "client_context.tenseal"
SERVER_CONTEXT_FILE = "server_context.tenseal"
CIPHERTEXT_FORMAT = "fitfed-ckks-model/1"
DECRYPTED_MODEL = "decrypted_global_model"

# The largest error, in absolute weight units, a round's encrypted aggregation may add to a weight.
# Model weights here are O(0.1-1); 1e-4 is far below what one SGD step changes, so HE cannot steer training.
MAX_WEIGHT_ERROR = 1e-4
# A probe shaped like a round: 3 clubs, weights ~N(0, 0.5), each pre-multiplied by its step count (as
# FLARE's HEModelEncryptor does), summed under encryption, then scaled by 1 / total steps.
_PROBE_STEPS = (40.0, 25.0, 60.0)
_PROBE_SIZE = 2048


class WeakHEParameters(ValueError):
    """CKKS parameters that cannot carry model weights accurately, or are not valid CKKS parameters."""


class HEParameters(BaseModel):
    """TenSEAL CKKS parameters, as NVFlare's HEBuilder takes them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    poly_modulus_degree: int = Field(default=8192, gt=0)
    coeff_mod_bit_sizes: list[int] = [60, 40, 40]
    scale_bits: int = Field(default=40, gt=0)


def check_parameters(params: HEParameters) -> float:
    """Measure the aggregation error these parameters give; refuse them above :data:`MAX_WEIGHT_ERROR`.

    Returns:
        The largest absolute weight error of the probe aggregation.

    Raises:
        WeakHEParameters: TenSEAL rejects the parameters, or they are too imprecise.
    """
    try:
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        context.global_scale = 2**params.scale_bits
    except ValueError as e:
        raise WeakHEParameters(f"HE parameters {_describe(params)} are not valid CKKS parameters: {e}") from None
    return _refuse_if_imprecise(context, _describe(params))


def check_context(context: ts.Context, where: str) -> float:
    """As :func:`check_parameters`, for a provisioned key-holding context (a club's ``client_context.tenseal``)."""
    if not context.has_secret_key():
        raise ValueError(f"{where}: this context holds no secret key, so its precision cannot be measured")
    return _refuse_if_imprecise(context, where)


def load_context(path: Path) -> ts.Context:
    """A TenSEAL context from a kit's startup folder, with a clear error when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no TenSEAL context. Kits get one when the federation is provisioned with HEBuilder "
            "(he.enabled in the roster); ask the federation admin for an HE-provisioned kit"
        )
    return ts.context_from(path.read_bytes())


def _refuse_if_imprecise(context: ts.Context, what: str) -> float:
    rng = np.random.default_rng(0)
    updates = [rng.normal(0.0, 0.5, _PROBE_SIZE) for _ in _PROBE_STEPS]
    expected = sum(s * u for s, u in zip(_PROBE_STEPS, updates, strict=True)) / sum(_PROBE_STEPS)
    try:
        encrypted = [ts.ckks_vector(context, s * u) for s, u in zip(_PROBE_STEPS, updates, strict=True)]
        total = encrypted[0]
        for part in encrypted[1:]:
            total = total + part
        decrypted = np.asarray((total * (1.0 / sum(_PROBE_STEPS))).decrypt())
    except ValueError as e:
        raise WeakHEParameters(
            f"HE parameters {what} cannot carry out an aggregation: {e}. "
            "Use poly_modulus_degree 8192, coeff_mod_bit_sizes [60, 40, 40] and scale_bits 40 (FLARE's defaults)"
        ) from None
    error = float(np.max(np.abs(decrypted - expected)))
    if error > MAX_WEIGHT_ERROR:
        raise WeakHEParameters(
            f"HE parameters {what} are too weak for model weights: an encrypted aggregation is off by up to "
            f"{error:.1e}, above fitfed's limit of {MAX_WEIGHT_ERROR:.0e}. Raise scale_bits (40 works) with "
            "matching middle coeff_mod_bit_sizes, and poly_modulus_degree to 8192 or more"
        )
    return error


def _describe(params: HEParameters) -> str:
    return (
        f"(poly_modulus_degree={params.poly_modulus_degree}, coeff_mod_bit_sizes={params.coeff_mod_bit_sizes}, "
        f"scale_bits={params.scale_bits})"
    )


class HEContextCheck(FLComponent):
    """A club-side job component: refuse the job before any training when the kit's HE context is too weak."""

    def __init__(self, context_file: str = CLIENT_CONTEXT_FILE):
        super().__init__()
        self.context_file = context_file

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Check once, as the job starts at this club."""
        if event_type != EventType.START_RUN:
            return
        try:
            error = check_context(load_tenseal_context_from_workspace(self.context_file, fl_ctx), self.context_file)
        except ValueError as e:  # WeakHEParameters, or a missing or unsigned context
            self.system_panic(f"fitfed refuses this HE job before training: {e}", fl_ctx)
            return
        self.log_info(fl_ctx, f"HE context checked: aggregation error {error:.1e} (limit {MAX_WEIGHT_ERROR:.0e})")


def encrypted_layers(weights: dict[str, Any]) -> dict[str, bytes] | None:
    """The serialized CKKS layers of a persisted global model, or None when it holds plain weights."""
    ciphertext = {k: v.serialize() if isinstance(v, ts.CKKSVector) else v for k, v in weights.items()}
    if not any(isinstance(v, bytes) for v in ciphertext.values()):
        return None
    plain = [k for k, v in ciphertext.items() if not isinstance(v, bytes)]
    if plain:
        raise ValueError(f"HE model with layers left in plaintext ({plain}): fitfed encrypts every layer")
    return ciphertext


def save_ciphertext_model(layers: dict[str, bytes], path: Path) -> None:
    """Write an encrypted global model: serialized CKKS vectors per layer, loadable with ``weights_only=True``."""
    torch.save({"format": CIPHERTEXT_FORMAT, "layers": layers}, path)


@dataclass(frozen=True)
class DecryptedModel:
    """Where a club wrote the decrypted final model, and what it decrypted."""

    weights: Path
    sidecar: Path
    source_sha256: str


def decrypt_global_model(ciphertext: Path, sidecar_path: Path, context: ts.Context, club: str) -> DecryptedModel:
    """Decrypt the server's encrypted final model with a club's key; write the state dict and its sidecar beside it.

    The sidecar is the server's, plus ``"encrypted": false``, ``"decrypted_by"`` and
    ``"decrypted_from_sha256"`` (the ciphertext file's hash), which the bridge checks before registering.
    """
    if not context.has_secret_key():
        raise ValueError(
            "this TenSEAL context holds no secret key (the server's never does): decrypt with a club's kit, "
            f"startup/{CLIENT_CONTEXT_FILE}"
        )
    raw = ciphertext.read_bytes()  # hash exactly the bytes that are decrypted
    stored = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if not isinstance(stored, dict) or stored.get("format") != CIPHERTEXT_FORMAT:
        raise ValueError(f"{ciphertext}: not an encrypted fitfed model (expected format {CIPHERTEXT_FORMAT})")
    sidecar = json.loads(sidecar_path.read_text())
    template = build_model(ModelConfig.model_validate(sidecar["model"]), len(sidecar["feature_names"]))
    state: dict[str, torch.Tensor] = {}
    for name, reference in template.state_dict().items():
        if name not in stored["layers"]:
            raise ValueError(f"{ciphertext}: layer {name!r} of the sidecar's model is missing")
        try:
            values = ts.ckks_vector_from(context, stored["layers"][name]).decrypt()
        except ValueError as e:
            raise ValueError(f"{ciphertext}: cannot decrypt layer {name!r} with this key ({e})") from None
        state[name] = torch.tensor(values[: reference.numel()], dtype=reference.dtype).reshape(reference.shape)
    out = ciphertext.with_name(f"{DECRYPTED_MODEL}.pt")
    torch.save(state, out)
    source = hashlib.sha256(raw).hexdigest()
    decrypted_sidecar = {**sidecar, "encrypted": False, "decrypted_by": club, "decrypted_from_sha256": source}
    decrypted_sidecar.pop("he", None)
    sidecar_out = out.with_suffix(".json")
    sidecar_out.write_text(json.dumps(decrypted_sidecar, indent=2) + "\n")
    return DecryptedModel(weights=out, sidecar=sidecar_out, source_sha256=source)
