"""The global model a job wrote, loaded safely, and the rule that keeps ciphertext out of the registry.

Weights are read with ``torch.load(weights_only=True)``: a job result comes from elsewhere, and
a plain state dict of tensors is all fitfed writes. The model is rebuilt from its sidecar
(``fitfed.models.build_model`` with the sidecar's model config and feature count).

Homomorphic encryption: in an HE job the server only ever holds ciphertext, so its
``global_model.pt`` is never registered. A club holding the key may decrypt the final model
and write ``fitfed/decrypted_global_model.pt`` with a sidecar (the server sidecar's fields plus
``"encrypted": false``, ``"decrypted_by": "<club>"`` and ``"decrypted_from_sha256"``, the
SHA-256 of the server's ciphertext ``global_model.pt``). Copied anywhere into the job result,
that is the model the bridge registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from databricks_bridge.errors import BridgeError
from databricks_bridge.job_result import JobResult, read_json, sha256_of
from fitfed.models import ModelConfig, build_model

_SIDECAR_KEYS = ("model", "feature_names")


@dataclass
class GlobalModel:
    """A model ready to log: the module, its sidecar, and where its weights came from."""

    module: nn.Module
    sidecar: dict[str, Any]
    weights: Path
    sidecar_path: Path

    @property
    def feature_names(self) -> list[str]:
        """Input columns, in order."""
        return list(self.sidecar["feature_names"])


@dataclass
class ModelChoice:
    """Which model the registry gets, or why none: ``model`` is None exactly when ``reason`` says why."""

    model: GlobalModel | None
    reason: str


def load_model(weights: Path, sidecar_path: Path) -> GlobalModel:
    """Rebuild the model from its sidecar and load its state dict.

    Raises:
        BridgeError: naming the sidecar or weights file that is missing, corrupt or does not fit.
    """
    for path in (weights, sidecar_path):
        if not path.is_file():
            raise BridgeError(f"{path}: missing; the run finished but its model files are incomplete")
    sidecar = read_json(sidecar_path)
    missing = [k for k in _SIDECAR_KEYS if k not in sidecar]
    if missing:
        raise BridgeError(f"{sidecar_path}: lacks {missing}; not a fitfed model sidecar")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise BridgeError(
            f"{weights}: not a readable PyTorch state dict ({type(e).__name__}: {str(e)[:120]}); "
            "the file is corrupt or truncated"
        ) from None
    try:
        module = build_model(ModelConfig(**sidecar["model"]), len(sidecar["feature_names"]))
        module.load_state_dict(state, strict=True)
    except (ValidationError, RuntimeError, TypeError, AttributeError) as e:
        raise BridgeError(
            f"{weights}: does not fit the model its sidecar {sidecar_path.name} describes ({str(e)[:160]})"
        ) from None
    return GlobalModel(module=module.eval(), sidecar=sidecar, weights=weights, sidecar_path=sidecar_path)


def is_encrypted(job: JobResult, sidecar: dict[str, Any] | None) -> bool:
    """Whether the job's server-side model is HE ciphertext: its sidecar, train config or FLARE components say so."""
    if sidecar and (sidecar.get("encrypted") or (sidecar.get("he") or {}).get("enabled")):
        return True
    train_he = job.train_config.get("he") or job.train_config.get("homomorphic_encryption") or {}
    if isinstance(train_he, dict) and train_he.get("enabled"):
        return True
    return any(".app_opt.he." in path for path in component_paths(job))


def choose_model(job: JobResult) -> ModelChoice:
    """The final model to register: the server's, or for an HE job the one a key-holding club decrypted.

    A job whose server refused to resume the job it was to continue trained nothing; what its
    persistor holds is no model of the training, so nothing is registered.
    """
    if job.resume_refusal:
        return ModelChoice(None, f"the job trained nothing, its resume was refused: {job.resume_refusal}")
    weights, sidecar_path = job.model_paths()
    sidecar = read_json(sidecar_path) if sidecar_path.is_file() else None
    if not is_encrypted(job, sidecar):
        if not weights.is_file() and not sidecar_path.is_file():
            return ModelChoice(None, f"the run finished without a global model ({weights} is absent)")
        return ModelChoice(load_model(weights, sidecar_path), "the server's final global model")
    source = sha256_of(weights) if weights.is_file() else None
    for candidate in job.decrypted_models():
        decrypted = read_json(candidate)
        if decrypted.get("encrypted") is False and source and decrypted.get("decrypted_from_sha256") == source:
            model = load_model(candidate.with_suffix(".pt"), candidate)
            return ModelChoice(model, f"decrypted by key-holding club {decrypted.get('decrypted_by', '?')!r}")
    return ModelChoice(
        None,
        "HE job: the server's global_model.pt is ciphertext and is never registered, and no club's decrypted "
        "model for it was found (a key-holding club writes fitfed/decrypted_global_model.pt with a sidecar whose "
        f"decrypted_from_sha256 is {source or 'the ciphertext file hash'}; copy it into {job.root} and export again)",
    )


def component_paths(job: JobResult) -> list[str]:
    """Class paths of every FLARE component, workflow and filter in the job's server and client configs."""
    paths: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("path"), str):
                paths.append(node["path"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for name, config in job.configs.items():
        if name.startswith("config_fed_"):
            walk(config)
    return paths


def input_example(model: GlobalModel):  # noqa: ANN201 - a pandas DataFrame
    """Two rows of zeros with the model's feature names: shape and names only, never member data."""
    import pandas as pd

    return pd.DataFrame({name: [0.0, 0.0] for name in model.feature_names}, dtype="float32")
