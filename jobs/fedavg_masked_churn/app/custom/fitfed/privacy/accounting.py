"""Epsilon of a run of Gaussian mechanisms, from Opacus's accountants (no privacy maths of our own).

A history is Opacus's own format: a list of ``(noise_multiplier, sample_rate, steps)``
segments. DP-SGD steps are Poisson-subsampled Gaussian mechanisms with
``sample_rate = batch_size / rows``; a club's noised update (update-level DP) is one
Gaussian mechanism per round over the club's whole data, that is ``sample_rate = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import get_args

import numpy as np
from opacus.accountants import IAccountant, RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis

from fitfed.config import Accountant

Segment = tuple[float, float, int]
"""``(noise_multiplier, sample_rate, steps)``: ``steps`` identical mechanisms in a row."""

ACCOUNTANTS: tuple[str, ...] = get_args(Accountant)


def make_accountant(accountant: str = "rdp", history: Sequence[Segment] = ()) -> IAccountant:
    """An Opacus accountant that has already counted ``history`` (runs of one mechanism merged).

    Raises:
        ValueError: ``accountant`` is not one of :data:`ACCOUNTANTS`, or a segment is out of range.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant={accountant!r} is not supported; use one of {', '.join(ACCOUNTANTS)}")
    merged: list[Segment] = []
    for noise_multiplier, sample_rate, steps in history:
        _check_segment(noise_multiplier, sample_rate, steps)
        segment = (float(noise_multiplier), float(sample_rate), int(steps))
        if merged and merged[-1][:2] == segment[:2]:  # as Opacus's step() keeps runs of one mechanism
            segment = (*segment[:2], merged.pop()[2] + segment[2])
        if segment[2] > 0:
            merged.append(segment)
    counted = create_accountant(accountant)
    counted.history = merged
    return counted


def epsilon_of(history: Sequence[Segment], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after every mechanism in ``history`` (0 when it is empty)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta!r}: expected 0 < delta < 1")
    counted = make_accountant(accountant, history)
    return _epsilon(tuple(counted.history), delta, accountant)


def epsilon_spent(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon at ``delta`` after ``steps`` Gaussian mechanisms with this noise and sampling rate.

    Example:
        >>> round(epsilon_spent(1.0, 1.0, 1, 1e-5), 2)  # one noised club update
        4.73
    """
    return epsilon_of([(noise_multiplier, sample_rate, steps)], delta, accountant)


@lru_cache(maxsize=256)
def _epsilon(history: tuple[Segment, ...], delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    if accountant == "rdp":
        # RDPAccountant.get_epsilon, with each mechanism's one-step RDP cached: compute_rdp is that
        # times the steps, and costs some 50 ms a call, which would otherwise dominate a round.
        rdp = sum(steps * _rdp_one_step(noise, rate) for noise, rate, steps in history)
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(epsilon)
    counted = make_accountant(accountant, history)
    # PRV's subsampling maths takes log(1 - q), which is -inf (and correct) when q = 1.
    with np.errstate(divide="ignore"):
        return float(counted.get_epsilon(delta=delta))


@lru_cache(maxsize=64)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    rdp.setflags(write=False)  # shared by every later call
    return rdp


def _check_segment(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier={noise_multiplier!r}: expected > 0 (no noise gives no privacy)")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate={sample_rate!r}: expected 0 < sample_rate <= 1")
    if steps < 0:
        raise ValueError(f"steps={steps!r}: expected >= 0")
