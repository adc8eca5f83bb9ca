"""Typed settings that travel from the job to each site, and the site's own settings.

The job writes one ``fitfed_train.json`` (a :class:`TrainConfig`) into every client app's
config folder; the training script validates it with the same model. Where a site's data
lives, and how much privacy it will spend, are never in the job: one job serves every club.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fitfed.models import ModelConfig
from fitfed.spec import TaskSpec

TRAIN_CONFIG_FILE = "fitfed_train.json"
SITE_CONFIG_FILE = "fitfed_site.yaml"
DATA_ENV_VAR = "FITFED_DATA"

Algorithm = Literal["fedavg", "fedprox", "scaffold", "fedopt"]
Accountant = Literal["rdp", "prv"]
WeightBy = Literal["steps", "rows"]


class DPSGDConfig(BaseModel):
    """Sample-level differential privacy for local training (DP-SGD with Opacus).

    Args:
        noise_multiplier: Gaussian noise std as a multiple of ``max_grad_norm``.
        max_grad_norm: each member's per-sample gradient is clipped to this L2 norm.
        target_delta: the delta at which each round's epsilon is reported.
        accountant: Opacus accountant, "rdp" (default) or "prv" (tighter, slower).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    noise_multiplier: float = Field(gt=0)
    max_grad_norm: float = Field(gt=0)
    target_delta: float = Field(default=1e-5, gt=0, lt=1)
    accountant: Accountant = "rdp"


class TrainConfig(BaseModel):
    """How each site trains in every round.

    Args:
        task: the task spec every site's CSV is validated against.
        model: which model to build.
        algorithm: the federated algorithm, so the client applies FedProx or SCAFFOLD terms.
        local_epochs: passes over the site's training rows per round (exclusive with local_steps).
        local_steps: optimizer steps per round (exclusive with local_epochs).
        batch_size: rows per optimizer step.
        optimizer: "sgd" or "adam".
        learning_rate: the optimizer's step size.
        momentum: SGD momentum (ignored by Adam).
        seed: seeds batch order and model initialisation at every site.
        weight_by: what a site's update weighs in the server's average: "steps" (FLARE's default, the
            optimizer steps it took) or "rows" (its training rows, as in McMahan et al. and FLamby). With
            ``local_steps`` every site takes the same steps, so "steps" is an unweighted mean.
        dp: if set, every site trains with DP-SGD (see :mod:`fitfed.privacy.dp_sgd`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskSpec
    model: ModelConfig = ModelConfig()
    algorithm: Algorithm = "fedavg"
    local_epochs: int | None = Field(default=None, ge=1)
    local_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    seed: int = 0
    weight_by: WeightBy = "steps"
    dp: DPSGDConfig | None = None

    @model_validator(mode="after")
    def _one_training_length(self) -> TrainConfig:
        if (self.local_epochs is None) == (self.local_steps is None):
            raise ValueError(
                f"set exactly one of local_epochs={self.local_epochs!r} and local_steps={self.local_steps!r}"
            )
        if self.algorithm == "scaffold" and self.optimizer != "sgd":
            raise ValueError(
                f"algorithm='scaffold' needs optimizer='sgd' (its correction assumes SGD), got {self.optimizer!r}"
            )
        if self.dp is not None and self.algorithm == "scaffold":
            raise ValueError(
                "dp cannot be combined with algorithm='scaffold': its control variates carry un-noised gradients "
                "to the server; use fedavg, fedprox or fedopt with dp"
            )
        return self


class PrivacyBudget(BaseModel):
    """A club's total differential-privacy budget over all jobs, at one delta.

    Args:
        epsilon: the most epsilon the club will spend, summed over every job and mechanism.
        delta: the delta every spend is accounted at; keep it well below 1 / members.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)


class SiteConfig(BaseModel):
    """A site's own fitfed settings, kept in its kit's ``local/fitfed_site.yaml``.

    Args:
        data_path: the site's CSV, absolute or relative to the kit.
        privacy_budget: the club's privacy budget; jobs that spend privacy are refused beyond it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_path: Path
    privacy_budget: PrivacyBudget | None = None


def site_config_path(workspace_root: Path) -> Path:
    """Where a kit keeps its fitfed settings: ``<kit>/local/fitfed_site.yaml``."""
    return workspace_root / "local" / SITE_CONFIG_FILE


def load_site_config(workspace_root: Path) -> SiteConfig | None:
    """The kit's :class:`SiteConfig`, or None when it has no ``local/fitfed_site.yaml``."""
    site_file = site_config_path(workspace_root)
    if not site_file.is_file():
        return None
    return SiteConfig.model_validate(yaml.safe_load(site_file.read_text()))


def site_data_path(site_name: str, workspace_root: Path | None = None) -> Path:
    """Where this site's CSV is: ``$FITFED_DATA``, else the kit's ``local/fitfed_site.yaml``.

    ``FITFED_DATA`` is either the CSV itself or a folder holding ``<site_name>.csv`` (the
    simulator's case, where every simulated site shares one environment).
    """
    from_env = os.environ.get(DATA_ENV_VAR)
    if from_env:
        path = Path(from_env)
        return path / f"{site_name}.csv" if path.is_dir() else path
    root = workspace_root or Path.cwd()
    config = load_site_config(root)
    if config is None:
        raise FileNotFoundError(
            f"site {site_name!r} has no data location: set {DATA_ENV_VAR} to the CSV (or a folder of <site>.csv), "
            f"or write data_path into {site_config_path(root)}"
        )
    return config.data_path if config.data_path.is_absolute() else root / config.data_path
