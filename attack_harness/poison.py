"""The attacks a test or benchmark can make a club perform (never available to a production job).

- ``sign_flip``: send ``-scale`` times the honest update (Blanchard et al. 2017's omniscient-style
  reversal; ``scale`` 10 is the issue's "sign-flipped updates scaled by 10").
- ``gaussian``: send Gaussian noise with standard deviation ``noise_std`` instead of the update
  (Blanchard et al. 2017's "Gaussian" Byzantine worker).
- ``label_flip``: train honestly on flipped labels (data poisoning; Fang et al., USENIX Security 2020).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

AttackKind = Literal["none", "sign_flip", "gaussian", "label_flip"]


class AttackConfig(BaseModel):
    """What one attacking club does.

    Args:
        kind: the attack.
        scale: sign_flip multiplies the honest update by ``-scale``.
        noise_std: gaussian's per-coordinate standard deviation.
        seed: seeds gaussian's noise, together with the club's name and the round.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AttackKind
    scale: float = Field(default=1.0, gt=0)
    noise_std: float = Field(default=1.0, gt=0)
    seed: int = 0

    @property
    def poisons_update(self) -> bool:
        """Whether the attack changes the update the club sends (label_flip changes its data instead)."""
        return self.kind in ("sign_flip", "gaussian")

    def label(self) -> str:
        """A short name for tables, e.g. ``sign_flip_x10``."""
        if self.kind == "sign_flip":
            return f"sign_flip_x{self.scale:g}"
        if self.kind == "gaussian":
            return f"gaussian_std{self.noise_std:g}"
        return self.kind


def attack_rng(attack: AttackConfig, site: str, round_number: int) -> np.random.Generator:
    """The same noise for the same club and round, in the simulator and in the benchmark's loop."""
    return np.random.default_rng([attack.seed, round_number, zlib.crc32(site.encode())])


def poison_update(
    update: Mapping[str, np.ndarray], attack: AttackConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The weight difference the attacking club sends instead of ``update`` (same keys, shapes, dtypes)."""
    if attack.kind == "sign_flip":
        return {k: (-attack.scale * np.asarray(v)).astype(np.asarray(v).dtype) for k, v in update.items()}
    if attack.kind == "gaussian":
        return {
            k: rng.normal(0.0, attack.noise_std, np.shape(v)).astype(np.asarray(v).dtype) for k, v in update.items()
        }
    return {k: np.asarray(v) for k, v in update.items()}


def flip_labels(labels: np.ndarray) -> np.ndarray:
    """0/1 labels swapped."""
    return (1 - np.asarray(labels)).astype(np.asarray(labels).dtype)
