"""The job option ``secure_aggregation``: pairwise masking with a threshold t, and what it refuses to combine with."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SecureAggregation(BaseModel):
    """Aggregate club updates under pairwise masking, so the server learns only their weighted sum.

    Args:
        method: "masking" (Bonawitz et al. 2017); see docs/secure-aggregation.md.
        threshold: t, the fewest clubs that must stay to the end of a round for it to be unmasked; at most
            the job's min_clients. A larger t tolerates fewer drop-outs but needs more clubs to collude
            with the server to open one club's update (more than half the round's clubs is the usual choice).
        step_timeout: seconds each club has to answer a protocol exchange before it counts as dropped (the job's
            first exchange also waits up to 5 minutes for the clubs' jobs to start).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["masking"] = "masking"
    threshold: int = Field(ge=2)
    step_timeout: int = Field(default=120, ge=1)


def check_secure_aggregation(config: SecureAggregation, *, algorithm: str, min_clients: int, he: bool,
                             robust: str | None) -> None:  # fmt: skip
    """Refuse settings masking cannot honour, saying why and what to change."""
    if config.threshold > min_clients:
        raise ValueError(
            f"secure_aggregation threshold t={config.threshold} exceeds min_clients={min_clients}: a round could "
            f"start with fewer clubs than it needs to unmask. Fix: lower the threshold or raise min_clients"
        )
    if algorithm not in ("fedavg", "fedprox"):
        raise ValueError(
            f"secure_aggregation runs FedAvg's weighted mean under masks: train.algorithm must be 'fedavg' or "
            f"'fedprox', not {algorithm!r}, whose server step needs more than the sum"
        )
    if he:
        raise ValueError(
            "secure_aggregation and he=True cannot be combined: both hide each update from the server, and masking "
            "already does so without a shared secret key. Fix: choose one (docs/secure-aggregation.md compares them)"
        )
    if robust is not None:
        raise ValueError(
            f"secure_aggregation cannot be combined with aggregator {robust}: robust aggregation must read each "
            "club's update, and under masking the server sees only their sum. Fix: remove the aggregator, or "
            "turn secure aggregation off"
        )
