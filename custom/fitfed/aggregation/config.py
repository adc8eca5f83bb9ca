"""Which aggregator a job uses: a typed, validated choice checked against the federation's size.

A job selects one rule (``fedavg``, ``median``, ``trimmed_mean``, ``krum``, ``multikrum``) and may
add norm bounding to any of them. Settings that cannot work with the job's number of updates
per round (Krum with fewer than 2f + 3 clubs, a trim fraction that trims nobody) fail when the
job is configured, never silently during training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

METHODS = ("fedavg", "median", "trimmed_mean", "krum", "multikrum")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NormBound(_Strict):
    """Clip each update's L2 norm before aggregating (Sun et al. 2019, arXiv:1911.07963).

    Args:
        max_norm: a fixed bound on every update's norm.
        median_multiple: the bound is this multiple of the round's median update norm (robust to the
            scale of the model, at the cost of trusting that most clubs are honest).
    """

    max_norm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    median_multiple: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _exactly_one(self) -> NormBound:
        if (self.max_norm is None) == (self.median_multiple is None):
            raise ValueError(
                f"norm_bound: set exactly one of max_norm={self.max_norm!r} and "
                f"median_multiple={self.median_multiple!r} (a fixed bound, or a multiple of the round's median norm)"
            )
        return self


class _Rule(_Strict):
    norm_bound: NormBound | None = None


class FedAvgConfig(_Rule):
    """The sample-weighted mean of the updates (McMahan et al. 2017); no protection unless norm-bounded."""

    method: Literal["fedavg"] = "fedavg"


class MedianConfig(_Rule):
    """The coordinate-wise median (Yin et al. 2018)."""

    method: Literal["median"] = "median"


class TrimmedMeanConfig(_Rule):
    """The coordinate-wise trimmed mean (Yin et al. 2018).

    Args:
        trim_fraction: beta, the share of updates dropped from each end of every coordinate, 0 < beta < 0.5.
    """

    method: Literal["trimmed_mean"] = "trimmed_mean"
    trim_fraction: float

    @field_validator("trim_fraction")
    @classmethod
    def _trims_some_but_not_all(cls, value: float) -> float:
        if not 0 < value < 0.5:
            raise ValueError(
                f"trim_fraction={value!r}: expected 0 < trim_fraction < 0.5; it is trimmed from each end, so 0.5 "
                "or more would trim every update and 0 trims none. Fix: use e.g. 0.2, or method='median'"
            )
        return value


class KrumConfig(_Rule):
    """Krum (Blanchard et al. 2017): each round, the one update closest to its n - f - 2 nearest others.

    Args:
        num_faulty: f, the number of faulty or malicious clubs assumed per round, at least 1.
    """

    method: Literal["krum"] = "krum"
    num_faulty: int = Field(ge=1)


class MultiKrumConfig(_Rule):
    """Multi-Krum (Blanchard et al. 2017): the weighted mean of the m updates with the best Krum scores.

    Args:
        num_faulty: f, the number of faulty or malicious clubs assumed per round, at least 1.
        num_selected: m, the updates averaged each round; default n - f (every update Krum does not suspect).
    """

    method: Literal["multikrum"] = "multikrum"
    num_faulty: int = Field(ge=1)
    num_selected: int | None = Field(default=None, ge=1)


AggregatorConfig = Annotated[
    FedAvgConfig | MedianConfig | TrimmedMeanConfig | KrumConfig | MultiKrumConfig,
    Field(discriminator="method"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AggregatorConfig)


def parse_aggregator(data: Mapping[str, Any] | BaseModel) -> AggregatorConfig:
    """Validate an aggregator choice given as a dict (e.g. from JSON) or an already-built config."""
    if isinstance(data, BaseModel):
        data = data.model_dump()
    return _ADAPTER.validate_python(dict(data))


def describe(config: AggregatorConfig) -> str:
    """One line naming the rule and its parameters, for logs and reports."""
    fields = config.model_dump(exclude={"method", "norm_bound"}, exclude_none=True)
    if config.norm_bound is not None:
        fields["norm_bound"] = config.norm_bound.model_dump(exclude_none=True)
    details = ", ".join(f"{k}={v}" for k, v in fields.items())
    return f"{config.method}({details})"


def required_updates(config: AggregatorConfig) -> tuple[int, str]:
    """The fewest updates per round the rule works with, and why."""
    if isinstance(config, TrimmedMeanConfig):
        beta = config.trim_fraction
        n = math.ceil(1 / beta - 1e-9)
        return (
            n,
            f"trim_fraction={beta} trims floor({beta} * n) updates from each end, "
            f"which is 0 (no protection) below n={n}",
        )
    if isinstance(config, KrumConfig | MultiKrumConfig):
        f = config.num_faulty
        n, why = 2 * f + 3, f"{config.method} with num_faulty={f} needs n >= 2f+3 = {2 * f + 3} (Blanchard et al. 2017)"
        if isinstance(config, MultiKrumConfig) and config.num_selected is not None and config.num_selected + f > n:
            n = config.num_selected + f
            why += f", and num_selected={config.num_selected} needs n >= num_selected + num_faulty = {n}"
        return n, why
    return 1, f"{config.method} works with any number of updates"


def check_feasible(config: AggregatorConfig, num_updates: int, *, setting: str = "min_updates") -> None:
    """Refuse an aggregator that cannot work when only ``num_updates`` updates arrive in a round.

    Raises:
        ValueError: naming the rule, its requirement, the setting and its value, and the fix.
    """
    needed, why = required_updates(config)
    if num_updates < needed:
        raise ValueError(
            f"aggregator {describe(config)} cannot work with {setting}={num_updates}: {why}. Fix: raise "
            f"{setting} (and min_clients) to at least {needed}, or choose a rule with fewer requirements"
        )


def refuse_with_encrypted_updates(config: AggregatorConfig | None, scheme: str = "homomorphic encryption") -> None:
    """Refuse a fitfed aggregator together with encrypted updates (HE): call this wherever HE is enabled.

    Every fitfed aggregator, even ``fedavg`` with norm bounding, reads each club's update in plaintext
    on the server; under HE the server only ever sees the encrypted sum. The two are mutually exclusive.

    Raises:
        ValueError: ``config`` is set.
    """
    if config is not None:
        raise ValueError(
            f"aggregator {describe(config)} and {scheme} cannot be combined: robust aggregation must see each "
            f"club's update in plaintext, while {scheme} lets the server see only their encrypted sum. Fix: "
            "remove the aggregator setting (plain FedAvg works under encryption) or turn encryption off"
        )
