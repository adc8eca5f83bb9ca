"""The registry of aggregation rules: each name in :data:`fitfed.aggregation.config.METHODS` maps to one rule.

A rule turns a validated ``(n, d)`` stack of updates and their weights into the aggregate, and
says which updates it used: wholly (``selected``) and, for coordinate-wise rules, per value
(``kept``). Rules are looked up with :func:`create_rule`; a new rule is added with
:func:`register_rule` and a config class in ``config.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fitfed.aggregation.config import KrumConfig, MultiKrumConfig, TrimmedMeanConfig
from fitfed.aggregation.robust import (
    coordinate_median,
    kept_after_trimming,
    multikrum_select,
    num_trimmed,
    trimmed_mean,
    weighted_mean,
)


@dataclass(frozen=True)
class RuleOutcome:
    """What a rule produced.

    Attributes:
        aggregate: the aggregated update, shape ``(d,)``.
        selected: ``(n,)`` booleans; False for an update the rule left out entirely.
        kept: ``(n, d)`` booleans for coordinate-wise rules (False where a value was trimmed), else None.
        expected_trimmed_share: the share of each club's values a coordinate-wise rule trims by design.
    """

    aggregate: np.ndarray
    selected: np.ndarray
    kept: np.ndarray | None = None
    expected_trimmed_share: float | None = None


Rule = Callable[[np.ndarray, np.ndarray, Any], RuleOutcome]
_RULES: dict[str, Rule] = {}


def register_rule(name: str) -> Callable[[Rule], Rule]:
    """Register ``rule`` under ``name`` (a decorator)."""

    def add(rule: Rule) -> Rule:
        if name in _RULES:
            raise ValueError(f"aggregation rule {name!r} is already registered")
        _RULES[name] = rule
        return rule

    return add


def create_rule(name: str) -> Rule:
    """The rule registered as ``name``.

    Raises:
        ValueError: no such rule; the message lists the valid names.
    """
    try:
        return _RULES[name]
    except KeyError:
        raise ValueError(f"aggregation method={name!r} is not registered; valid names: {sorted(_RULES)}") from None


def registered_rules() -> list[str]:
    """The names of every registered rule."""
    return sorted(_RULES)


@register_rule("fedavg")
def _fedavg(stack: np.ndarray, weights: np.ndarray, config: Any) -> RuleOutcome:
    return RuleOutcome(weighted_mean(stack, weights), np.ones(len(stack), dtype=bool))


@register_rule("median")
def _median(stack: np.ndarray, weights: np.ndarray, config: Any) -> RuleOutcome:
    n = len(stack)
    trimmed = (n - 1) // 2  # the median keeps the middle value (odd n) or the two middle values (even n)
    kept = kept_after_trimming(stack, trimmed)
    return RuleOutcome(coordinate_median(stack), np.ones(n, dtype=bool), kept, 2 * trimmed / n)


@register_rule("trimmed_mean")
def _trimmed_mean(stack: np.ndarray, weights: np.ndarray, config: TrimmedMeanConfig) -> RuleOutcome:
    n = len(stack)
    trimmed = num_trimmed(n, config.trim_fraction)
    kept = kept_after_trimming(stack, trimmed)
    aggregate = trimmed_mean(stack, config.trim_fraction, weights)
    return RuleOutcome(aggregate, np.ones(n, dtype=bool), kept, 2 * trimmed / n)


@register_rule("krum")
def _krum(stack: np.ndarray, weights: np.ndarray, config: KrumConfig) -> RuleOutcome:
    chosen = multikrum_select(stack, config.num_faulty, 1)
    return RuleOutcome(stack[chosen[0]].copy(), _mask(len(stack), chosen))


@register_rule("multikrum")
def _multikrum(stack: np.ndarray, weights: np.ndarray, config: MultiKrumConfig) -> RuleOutcome:
    m = config.num_selected or len(stack) - config.num_faulty
    chosen = multikrum_select(stack, config.num_faulty, m)
    return RuleOutcome(weighted_mean(stack[chosen], weights[chosen]), _mask(len(stack), chosen))


def _mask(n: int, chosen: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask
