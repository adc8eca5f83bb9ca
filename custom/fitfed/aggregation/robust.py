"""Robust aggregation rules as pure numpy functions on a stack of club updates.

Every rule takes ``stack``, an ``(n, d)`` array holding one flattened weight difference per
club, and optionally ``clubs``, the n club names, used only to say in an error which club
sent a bad update. Each rule validates its input (shape, NaN/Inf, parameters) before it
computes anything, so a bad update is refused with a message and never reaches a global model.

References:
    - Coordinate-wise median and trimmed mean: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust
      Distributed Learning: Towards Optimal Statistical Rates", ICML 2018, arXiv:1803.01498.
    - Krum and Multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
      Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    - Norm bounding: Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?",
      arXiv:1911.07963, 2019.
    - Weighted mean (FedAvg): McMahan et al., "Communication-Efficient Learning of Deep Networks from
      Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


class UpdateError(ValueError):
    """One or more clubs sent an update that cannot be aggregated; ``clubs`` names them."""

    def __init__(self, message: str, clubs: Sequence[str]):
        super().__init__(message)
        self.clubs = tuple(clubs)


class NonFiniteUpdateError(UpdateError):
    """An update holds NaN or Inf values."""


class ShapeMismatchError(UpdateError):
    """An update's shape (or parameter layout) differs from the others'."""


class InfeasibleAggregationError(ValueError):
    """A rule cannot run on this many updates with these parameters (e.g. Krum with n < 2f + 3)."""


def as_stack(updates: ArrayLike | Sequence[ArrayLike], clubs: Sequence[str] | None = None) -> np.ndarray:
    """Validate updates and return them as one finite float64 ``(n, d)`` array.

    Args:
        updates: an ``(n, d)`` array, or n one-dimensional arrays of equal length.
        clubs: the n club names (default ``club_0``, ``club_1``, ...), for error messages.

    Raises:
        InfeasibleAggregationError: there are no updates.
        ShapeMismatchError: an update is not one-dimensional or its length differs from the first's.
        NonFiniteUpdateError: an update holds NaN or Inf; every such club is named.
    """
    rows = [np.asarray(row, dtype=np.float64) for row in updates]
    names = _club_names(clubs, len(rows))
    if not rows:
        raise InfeasibleAggregationError("no updates to aggregate: expected at least 1, found 0; skipping aggregation")
    expected = rows[0].shape
    for name, row in zip(names, rows, strict=True):
        if row.ndim != 1 or row.shape != expected:
            raise ShapeMismatchError(
                f"club {name!r}: update has shape {row.shape}, expected {expected} like club {names[0]!r}; "
                "rejecting it (was the club's model built from a different task spec or model config?)",
                [name],
            )
    stack = np.stack(rows)
    bad = [i for i in range(len(rows)) if not np.isfinite(stack[i]).all()]
    if bad:
        counts = ", ".join(f"{names[i]!r} ({int((~np.isfinite(stack[i])).sum())} value(s))" for i in bad)
        raise NonFiniteUpdateError(
            f"update(s) from club(s) {counts} hold NaN or Inf: expected finite numbers; rejecting them so they "
            "never reach the global model (check those clubs' learning rate and data)",
            [names[i] for i in bad],
        )
    return stack


def check_weights(weights: ArrayLike | None, n: int) -> np.ndarray:
    """Aggregation weights as a float64 vector of length ``n`` (all ones when ``weights`` is None).

    Raises:
        ValueError: the weights have the wrong length, or are not finite and positive.
    """
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights has shape {w.shape}: expected one weight per update, shape ({n},)")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"weights={w.tolist()!r}: expected finite positive numbers (e.g. local step counts)")
    return w


def weighted_mean(stack: ArrayLike, weights: ArrayLike | None = None, clubs: Sequence[str] | None = None) -> np.ndarray:
    """FedAvg: the mean of the updates, weighted by ``weights`` (e.g. each club's local steps)."""
    s = as_stack(stack, clubs)
    w = check_weights(weights, len(s))
    return (w[:, None] * s).sum(axis=0) / w.sum()


def coordinate_median(stack: ArrayLike, clubs: Sequence[str] | None = None) -> np.ndarray:
    """Coordinate-wise median (Yin et al. 2018); with an even count, the mean of the two middle values.

    Unweighted on purpose: weights are reported by the clubs themselves, so a weighted median would
    let one club that overstates its weight choose the result.
    """
    return np.median(as_stack(stack, clubs), axis=0)


def kept_after_trimming(stack: np.ndarray, num_trimmed: int) -> np.ndarray:
    """Boolean ``(n, d)`` mask: False where a value is among the ``num_trimmed`` lowest or highest of its coordinate.

    Ties are broken by club order (a stable sort), so the mask is deterministic; tied values are
    equal, so which of them is trimmed never changes an unweighted result.
    """
    n = stack.shape[0]
    ranks = np.empty_like(stack, dtype=np.int64)
    order = np.argsort(stack, axis=0, kind="stable")
    np.put_along_axis(ranks, order, np.arange(n)[:, None].repeat(stack.shape[1], axis=1), axis=0)
    return (ranks >= num_trimmed) & (ranks < n - num_trimmed)


def num_trimmed(n: int, beta: float) -> int:
    """Updates trimmed from each end of every coordinate: ``floor(beta * n)``.

    Raises:
        ValueError: beta is not in [0, 0.5), which would trim every update.
    """
    if not 0 <= beta < 0.5:
        raise ValueError(
            f"beta={beta!r}: expected 0 <= beta < 0.5 (beta is trimmed from each end, so 0.5 or more trims "
            "every update); use e.g. 0.2, or the coordinate-wise median"
        )
    return math.floor(beta * n + 1e-9)  # 1e-9: 0.2 * 5 is 1.0000000000000002 or 0.9999999999999999 in floats


def trimmed_mean(
    stack: ArrayLike, beta: float, weights: ArrayLike | None = None, clubs: Sequence[str] | None = None
) -> np.ndarray:
    """Coordinate-wise trimmed mean (Yin et al. 2018), optionally weighted among the values kept.

    In every coordinate, the ``floor(beta * n)`` lowest and highest values are dropped and the rest
    averaged with their clubs' weights.

    Args:
        stack: ``(n, d)`` updates.
        beta: fraction trimmed from each end, 0 <= beta < 0.5.
        weights: per-club weights (default: equal).
        clubs: club names for error messages.

    Example:
        >>> trimmed_mean([[1.0], [2.0], [3.0], [100.0]], beta=0.25).tolist()
        [2.5]
    """
    s = as_stack(stack, clubs)
    w = check_weights(weights, len(s))
    kept = kept_after_trimming(s, num_trimmed(len(s), beta))
    kept_weights = kept * w[:, None]
    return (kept_weights * s).sum(axis=0) / kept_weights.sum(axis=0)


def krum_scores(stack: ArrayLike, f: int, clubs: Sequence[str] | None = None) -> np.ndarray:
    """Krum score of each update: the sum of squared distances to its ``n - f - 2`` nearest other updates.

    Raises:
        InfeasibleAggregationError: fewer than ``2f + 3`` updates (Blanchard et al.'s condition).
    """
    s = as_stack(stack, clubs)
    n = len(s)
    if f < 0:
        raise ValueError(f"f={f!r}: expected the assumed number of faulty clubs, an integer >= 0")
    if n < 2 * f + 3:
        raise InfeasibleAggregationError(
            f"Krum with f={f} faulty clubs needs n >= 2f+3 = {2 * f + 3} updates, found n={n}; "
            "lower f or add clubs; skipping aggregation"
        )
    distances = np.stack([((s - s[i]) ** 2).sum(axis=1) for i in range(n)])
    nearest = n - f - 2
    return np.array([np.sort(np.delete(distances[i], i))[:nearest].sum() for i in range(n)])


def multikrum_select(stack: ArrayLike, f: int, m: int, clubs: Sequence[str] | None = None) -> np.ndarray:
    """Indices of the ``m`` updates with the lowest Krum scores, best first (Multi-Krum; Krum is m = 1).

    Ties go to the earlier club (a stable sort), so the choice is deterministic.

    Raises:
        InfeasibleAggregationError: n < 2f + 3, or m outside 1..n - f.

    Example:
        >>> multikrum_select([[0.0], [0.1], [0.2], [0.3], [9.0]], f=1, m=1).tolist()
        [1]
    """
    scores = krum_scores(stack, f, clubs)
    n = len(scores)
    if not 1 <= m <= n - f:
        raise InfeasibleAggregationError(
            f"Multi-Krum m={m!r}: expected 1 <= m <= n - f = {n - f}, so that no more than the honest "
            "updates can be chosen; lower m; skipping aggregation"
        )
    return np.argsort(scores, kind="stable")[:m]


def norm_bound(
    stack: ArrayLike,
    *,
    max_norm: float | None = None,
    median_multiple: float | None = None,
    clubs: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scale down every update whose L2 norm exceeds a bound (Sun et al. 2019).

    The bound is ``max_norm``, or ``median_multiple`` times the median norm of this round's updates.

    Returns:
        The clipped stack, each update's scale factor (1.0 when not clipped) and the bound used.

    Raises:
        ValueError: not exactly one of max_norm and median_multiple is given, or it is not positive.
    """
    if (max_norm is None) == (median_multiple is None):
        raise ValueError(
            f"set exactly one of max_norm={max_norm!r} and median_multiple={median_multiple!r}: "
            "a fixed bound, or a multiple of the round's median update norm"
        )
    for name, value in (("max_norm", max_norm), ("median_multiple", median_multiple)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r}: expected a finite number > 0")
    s = as_stack(stack, clubs)
    norms = np.linalg.norm(s, axis=1)
    bound = float(max_norm if max_norm is not None else median_multiple * np.median(norms))
    factors = np.where(norms > bound, bound / np.where(norms > 0, norms, 1.0), 1.0)
    return s * factors[:, None], factors, bound


def _club_names(clubs: Sequence[str] | None, n: int) -> list[str]:
    if clubs is None:
        return [f"club_{i}" for i in range(n)]
    if len(clubs) != n:
        raise ValueError(f"clubs has {len(clubs)} name(s): expected one per update, {n}")
    return list(clubs)
