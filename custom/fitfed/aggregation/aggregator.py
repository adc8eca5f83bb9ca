"""RobustAggregator: fitfed's aggregation rules as an NVFlare ``ModelAggregator`` component.

A thin adapter: it collects each club's weight difference as it arrives, rejecting NaN/Inf at
once (so FLARE records that contribution as not accepted), and at the end of the round hands
everything to :func:`fitfed.aggregation.round.aggregate_round`. The aggregated difference goes
back to FLARE's FedAvg controller, which adds it to the global model; the round's report rides
along in the result's meta, where fitfed's run recorder writes it to the audit trail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DataKind
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.client.config import TransferType

from fitfed.aggregation.config import AggregatorConfig, check_feasible, describe, parse_aggregator
from fitfed.aggregation.robust import NonFiniteUpdateError, UpdateError
from fitfed.aggregation.round import OUTLIER_RATIO, RoundReport, aggregate_round, non_finite_reason
from fitfed.aggregation.summary import REPORT_KEY


class RobustAggregator(ModelAggregator):
    """Aggregates clubs' weight differences with a robust rule, reporting every club left out or clipped.

    Args:
        config: the aggregator choice as a plain dict, e.g. ``{"method": "krum", "num_faulty": 1}``
            (see :mod:`fitfed.aggregation.config`); a dict so that FLARE can write it into the job's config.
        min_updates: fewest usable updates a round may aggregate; below it the round (and job) stops.

    Raises:
        ValueError: the config is invalid, or cannot work with ``min_updates`` updates.

    Example:
        >>> aggregator = RobustAggregator({"method": "trimmed_mean", "trim_fraction": 0.2}, min_updates=5)
    """

    expected_data_kind = DataKind.WEIGHT_DIFF  # FLARE's recipes check this against aggregator_data_kind

    def __init__(self, config: dict[str, Any], min_updates: int = 1):
        super().__init__()
        if min_updates < 1:
            raise ValueError(f"min_updates={min_updates!r}: expected at least 1")
        self.config = dict(config)
        self.min_updates = min_updates
        self._settings: AggregatorConfig = parse_aggregator(self.config)
        check_feasible(self._settings, min_updates)
        self._announced = False
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget the current round's updates."""
        self._updates: dict[str, dict[str, np.ndarray]] = {}
        self._weights: dict[str, float] = {}
        self._metrics: dict[str, dict[str, float]] = {}
        self._rejected: dict[str, str] = {}
        self._as_torch = False

    def accept_model(self, model: FLModel) -> None:
        """Keep one club's update for this round; refuse a full model or non-finite values.

        Raises:
            UpdateError: the update is not a weight difference, or holds NaN/Inf (FLARE then records
                the contribution as not accepted; the round goes on without it).
        """
        club = str((model.meta or {}).get("client_name", "unknown"))
        if model.params_type != ParamsType.DIFF:
            reason = (
                f"club {club!r} sent params_type={model.params_type!r}: expected weight differences "
                f"({ParamsType.DIFF}); fix: build the job with fitfed.jobs.recipe_args, which sets "
                "params_transfer_type=DIFF"
            )
            self._reject(club, reason)
            raise UpdateError(reason, [club])
        params = {key: _to_numpy(value) for key, value in (model.params or {}).items()}
        reason = non_finite_reason(club, params)
        if reason:
            self._reject(club, reason)
            raise NonFiniteUpdateError(reason, [club])
        self._as_torch = self._as_torch or any(isinstance(v, torch.Tensor) for v in (model.params or {}).values())
        self._updates[club] = params
        self._weights[club] = _weight(model)
        self._metrics[club] = {
            k: float(v) for k, v in (model.metrics or {}).items() if _is_number(v) and np.isfinite(v)
        }

    def aggregate_model(self) -> FLModel:
        """Aggregate the round's updates; the report goes into the result's meta under ``REPORT_KEY``.

        Raises:
            InfeasibleAggregationError: too few usable updates; FLARE stops the job, the global model unchanged.
        """
        self._announce()
        try:
            result = aggregate_round(
                self._updates, self._weights, self._settings, min_updates=self.min_updates, rejected=self._rejected
            )
        except ValueError as e:
            self.error(str(e))
            raise
        self._log(result.report)
        params = {k: torch.from_numpy(v) if self._as_torch else v for k, v in result.params.items()}
        metrics = {**self._mean_metrics(result.report.selected), **_counts(result.report)}
        self.reset_stats()
        return FLModel(
            params=params, params_type=ParamsType.DIFF, metrics=metrics, meta={REPORT_KEY: result.report.as_dict()}
        )

    def _reject(self, club: str, reason: str) -> None:
        self._rejected[club] = reason
        self.warning(reason)

    def _announce(self) -> None:
        if not self._announced:
            self.info(f"aggregating weight differences with {describe(self._settings)}, min_updates={self.min_updates}")
            self._announced = True

    def _log(self, report: RoundReport) -> None:
        for club, reason in report.rejected.items():
            if club not in self._rejected:  # those rejected on arrival were logged then
                self.info(f"club {club!r}: {reason}" if reason.startswith("not selected") else reason)
        if report.clipped:
            self.info(f"clipped to norm {report.norm_bound:.4g}: {report.clipped}")
        if report.outliers:
            self.info(
                f"outliers (>= {OUTLIER_RATIO:g}x the typical club's distance from the median): {report.outliers}"
            )

    def _mean_metrics(self, clubs: list[str]) -> dict[str, float]:
        """Each metric's weighted mean over the clubs whose updates were used (as FLARE's FedAvg reports)."""
        keys = set.intersection(*(set(self._metrics[c]) for c in clubs)) if clubs else set()
        total = sum(self._weights[c] for c in clubs)
        return {k: sum(self._weights[c] * self._metrics[c][k] for c in clubs) / total for k in sorted(keys)}


def robust_recipe_args(config: AggregatorConfig, min_updates: int) -> dict[str, Any]:
    """The FedAvg-family recipe arguments that plug a RobustAggregator in: clubs send weight differences."""
    return {
        "aggregator": RobustAggregator(config.model_dump(exclude_none=True), min_updates=min_updates),
        "aggregator_data_kind": DataKind.WEIGHT_DIFF,
        "params_transfer_type": TransferType.DIFF,
    }


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _weight(model: FLModel) -> float:
    """FLARE's FedAvg weight: the club's local steps this round; 1.0 when missing or invalid, as in FLARE."""
    value = (model.meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
    return float(value) if _is_number(value) and np.isfinite(value) and value > 0 else 1.0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _counts(report: RoundReport) -> dict[str, float]:
    return {
        "aggregation_rejected": float(len(report.rejected)),
        "aggregation_clipped": float(len(report.clipped)),
        "aggregation_outliers": float(len(report.outliers)),
    }
