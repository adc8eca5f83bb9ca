"""One round of aggregation over named club updates, with a report of what happened to each club.

This is the numpy core of :class:`fitfed.aggregation.aggregator.RobustAggregator`: it checks each
club's update (finite values, the same parameter layout as the others), applies norm bounding
and the chosen rule, and says who was rejected, clipped, trimmed or an outlier. Nothing is
dropped silently: every club that does not count fully appears in the report with a reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fitfed.aggregation.config import AggregatorConfig, NormBound, describe, required_updates
from fitfed.aggregation.robust import (
    InfeasibleAggregationError,
    NonFiniteUpdateError,
    as_stack,
    check_weights,
    norm_bound,
)
from fitfed.aggregation.rules import RuleOutcome, create_rule

OUTLIER_RATIO = 5.0  # an update this many times further from the median update than the typical club's is an outlier

Params = Mapping[str, np.ndarray]
Layout = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class RoundReport:
    """What one round of aggregation did with each club's update; holds no update values.

    Attributes:
        method: the rule and its parameters, e.g. ``krum(num_faulty=1)``.
        clubs: clubs whose updates were usable (finite, common layout), sorted.
        selected: clubs whose update entered the aggregate (all usable ones, except under (Multi-)Krum).
        rejected: club -> why its update was left out entirely.
        clipped: club -> the factor (< 1) its update was scaled by under norm bounding.
        norm_bound: the norm bound used this round, if any.
        trimmed_share: club -> share of its values a coordinate-wise rule trimmed (median, trimmed mean).
        expected_trimmed_share: the share a coordinate-wise rule trims from every club by design.
        deviation: club -> its update's distance from the coordinate-wise median of all updates (before
            norm bounding), over the median club's distance: about 1 for a typical club, whatever the rule.
        outliers: clubs whose deviation is at least ``OUTLIER_RATIO``.
    """

    method: str
    clubs: list[str]
    selected: list[str]
    rejected: dict[str, str] = field(default_factory=dict)
    clipped: dict[str, float] = field(default_factory=dict)
    norm_bound: float | None = None
    trimmed_share: dict[str, float] = field(default_factory=dict)
    expected_trimmed_share: float | None = None
    deviation: dict[str, float] = field(default_factory=dict)
    outliers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields, for the model's meta and the run record."""
        return asdict(self)


@dataclass(frozen=True)
class RoundResult:
    """The aggregated update (same keys, shapes and dtypes as the clubs') and the round's report."""

    params: dict[str, np.ndarray]
    report: RoundReport


def non_finite_reason(club: str, params: Params) -> str | None:
    """Why ``club``'s update must be rejected for NaN or Inf values (naming the parameters), or None."""
    bad = [key for key, value in params.items() if not np.isfinite(np.asarray(value, dtype=np.float64)).all()]
    if not bad:
        return None
    try:
        as_stack([np.concatenate([np.ravel(np.asarray(params[k], dtype=np.float64)) for k in bad])], [club])
    except NonFiniteUpdateError as e:
        return f"{e} (parameters: {', '.join(sorted(bad))})"
    return None  # pragma: no cover - as_stack always raises for a non-finite row


def aggregate_round(
    updates: Mapping[str, Params],
    weights: Mapping[str, float],
    config: AggregatorConfig,
    *,
    min_updates: int = 1,
    rejected: Mapping[str, str] | None = None,
) -> RoundResult:
    """Aggregate one round's updates with ``config``'s rule.

    Args:
        updates: club -> its weight difference, parameter name -> array.
        weights: club -> its aggregation weight (missing: 1.0).
        config: the rule, with optional norm bounding.
        min_updates: fewest usable updates the round may aggregate.
        rejected: clubs already rejected before this call (e.g. on arrival), with reasons.

    Raises:
        InfeasibleAggregationError: fewer usable updates than ``min_updates`` or than the rule needs.
    """
    rejected = dict(rejected or {})
    for club in sorted(updates):
        reason = non_finite_reason(club, updates[club])
        if reason:
            rejected[club] = reason
    layout, usable = _common_layout({c: u for c, u in updates.items() if c not in rejected}, rejected)
    _check_enough(config, usable, min_updates, rejected)
    stack = as_stack([_flatten(updates[c], layout) for c in usable], usable)
    w = check_weights([weights.get(c, 1.0) for c in usable], len(usable))
    deviation = _deviation(stack, usable)
    stack, factors, bound = _bound(stack, config.norm_bound, usable)
    outcome = create_rule(config.method)(stack, w, config)
    report = _report(config, usable, outcome, factors, bound, rejected, deviation)
    reference = updates[usable[0]]
    return RoundResult(_unflatten(outcome.aggregate, layout, reference), report)


def _layout(params: Params) -> Layout:
    return tuple(sorted((key, tuple(np.shape(value))) for key, value in params.items()))


def _common_layout(updates: Mapping[str, Params], rejected: dict[str, str]) -> tuple[Layout, list[str]]:
    """The parameter layout most clubs share (ties: the first club's); other clubs are rejected."""
    clubs = sorted(updates)
    layouts = {club: _layout(updates[club]) for club in clubs}
    counts = Counter(layouts[club] for club in clubs)  # in club order, so max() breaks ties by the first club
    common = max(counts, key=counts.__getitem__)
    for club in clubs:
        if layouts[club] != common:
            rejected[club] = f"club {club!r}: {_layout_difference(layouts[club], common)}; rejected"
    return common, [club for club in clubs if layouts[club] == common]


def _layout_difference(found: Layout, expected: Layout) -> str:
    found_d, expected_d = dict(found), dict(expected)
    parts = [f"missing parameter {k!r}" for k in sorted(expected_d.keys() - found_d.keys())]
    parts += [f"unexpected parameter {k!r}" for k in sorted(found_d.keys() - expected_d.keys())]
    parts += [
        f"parameter {k!r} has shape {found_d[k]}, expected {expected_d[k]}"
        for k in sorted(found_d.keys() & expected_d.keys())
        if found_d[k] != expected_d[k]
    ]
    return "; ".join(parts) + " (the layout most clubs sent)"


def _check_enough(config: AggregatorConfig, usable: list[str], min_updates: int, rejected: Mapping[str, str]) -> None:
    needed, why = required_updates(config)
    if len(usable) < max(needed, min_updates):
        left_out = f"; rejected: {sorted(rejected)}" if rejected else ""
        raise InfeasibleAggregationError(
            f"only {len(usable)} usable update(s) {usable}{left_out}: expected at least {max(needed, min_updates)} "
            f"(min_updates={min_updates}; {why}); skipping aggregation rather than build a global model from too few"
        )


def _flatten(params: Params, layout: Layout) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(params[key], dtype=np.float64)) for key, _ in layout])


def _unflatten(vector: np.ndarray, layout: Layout, reference: Params) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for key, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        dtype = np.asarray(reference[key]).dtype
        values = vector[start : start + size].reshape(shape)
        out[key] = (np.rint(values) if np.issubdtype(dtype, np.integer) else values).astype(dtype)
        start += size
    return out


def _bound(stack: np.ndarray, bound: NormBound | None, clubs: list[str]) -> tuple[np.ndarray, np.ndarray, float | None]:
    if bound is None:
        return stack, np.ones(len(stack)), None
    return norm_bound(stack, max_norm=bound.max_norm, median_multiple=bound.median_multiple, clubs=clubs)


def _deviation(stack: np.ndarray, clubs: list[str]) -> dict[str, float]:
    """Each update's distance from the coordinate-wise median update, relative to the median such distance."""
    distances = np.linalg.norm(stack - np.median(stack, axis=0), axis=1)
    typical = max(float(np.median(distances)), 1e-12)
    return {club: round(min(float(d) / typical, 1e6), 3) for club, d in zip(clubs, distances, strict=True)}


def _report(
    config: AggregatorConfig,
    clubs: list[str],
    outcome: RuleOutcome,
    factors: np.ndarray,
    bound: float | None,
    rejected: dict[str, str],
    deviation: dict[str, float],
) -> RoundReport:
    for i in np.flatnonzero(~outcome.selected):
        rejected[clubs[i]] = f"not selected by {describe(config)}"
    trimmed = {}
    if outcome.kept is not None:
        trimmed = {club: round(float(1 - outcome.kept[i].mean()), 3) for i, club in enumerate(clubs)}
    return RoundReport(
        method=describe(config),
        clubs=clubs,
        selected=[club for club, chosen in zip(clubs, outcome.selected, strict=True) if chosen],
        rejected=dict(sorted(rejected.items())),
        clipped={club: round(float(f), 4) for club, f in zip(clubs, factors, strict=True) if f < 1},
        norm_bound=bound,
        trimmed_share=trimmed,
        expected_trimmed_share=None
        if outcome.expected_trimmed_share is None
        else round(outcome.expected_trimmed_share, 3),
        deviation=deviation,
        outliers=[club for club, ratio in deviation.items() if ratio >= OUTLIER_RATIO],
    )
