"""RobustAggregator, the FLARE component, driven the way FLARE's FedAvg controller drives it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DataKind
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper
from nvflare.client.config import TransferType

from fitfed.aggregation.aggregator import RobustAggregator, robust_recipe_args
from fitfed.aggregation.config import parse_aggregator
from fitfed.aggregation.robust import NonFiniteUpdateError, UpdateError
from fitfed.aggregation.summary import REPORT_KEY


def _update(club: str, value: float, steps: int = 10, **metrics: float) -> FLModel:
    return FLModel(
        params={"w": torch.full((2,), value), "b": torch.tensor([value])},
        params_type=ParamsType.DIFF,
        metrics=metrics,
        meta={"client_name": club, "NUM_STEPS_CURRENT_ROUND": steps},
    )


def test_settings_are_checked_in_init():
    with pytest.raises(ValueError, match=r"krum\(num_faulty=1\) cannot work with min_updates=4"):
        RobustAggregator({"method": "krum", "num_faulty": 1}, min_updates=4)
    with pytest.raises(ValueError, match="min_updates=0: expected at least 1"):
        RobustAggregator({"method": "median"}, min_updates=0)


def test_a_round_returns_a_torch_diff_with_the_report_in_meta():
    # Prepare
    aggregator = RobustAggregator({"method": "trimmed_mean", "trim_fraction": 0.2}, min_updates=5)
    for club, value in [("c1", 1.0), ("c2", 2.0), ("c3", 3.0), ("c4", 4.0), ("evil", 50.0)]:
        aggregator.accept_model(_update(club, value, accuracy=0.5))

    # Execute
    result = aggregator.aggregate_model()

    # Assert: 1 and 50 trimmed; mean of 2, 3, 4
    assert result.params_type == ParamsType.DIFF
    assert isinstance(result.params["w"], torch.Tensor) and result.params["w"].dtype == torch.float32
    assert result.params["w"].tolist() == [3.0, 3.0]
    report = result.meta[REPORT_KEY]
    assert report["method"] == "trimmed_mean(trim_fraction=0.2)" and report["outliers"] == ["evil"]
    assert result.metrics["accuracy"] == 0.5 and result.metrics["aggregation_outliers"] == 1.0


def test_nan_update_is_refused_on_arrival_and_reported(caplog: pytest.LogCaptureFixture):
    # Prepare
    aggregator = RobustAggregator({"method": "median"}, min_updates=2)
    aggregator.accept_model(_update("c1", 1.0))
    aggregator.accept_model(_update("c2", 3.0))

    # Execute: FLARE's controller catches this and records the contribution as not accepted
    with caplog.at_level(logging.WARNING), pytest.raises(NonFiniteUpdateError, match="'bad' .* hold NaN or Inf"):
        aggregator.accept_model(_update("bad", float("nan")))
    result = aggregator.aggregate_model()

    # Assert: the round goes on without it, and the report says why
    assert result.params["b"].tolist() == [2.0]
    assert "hold NaN or Inf" in result.meta[REPORT_KEY]["rejected"]["bad"]
    assert "club(s) 'bad' (3 value(s)) hold NaN or Inf" in caplog.text


def test_full_weights_are_refused_with_the_fix():
    aggregator = RobustAggregator({"method": "median"})
    full = FLModel(params={"w": torch.ones(2)}, params_type=ParamsType.FULL, meta={"client_name": "c1"})
    with pytest.raises(UpdateError, match="expected weight differences .* params_transfer_type=DIFF"):
        aggregator.accept_model(full)


def test_settings_are_logged_once(caplog: pytest.LogCaptureFixture):
    # Prepare
    aggregator = RobustAggregator({"method": "median"})

    # Execute: two rounds
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            aggregator.reset_stats()
            aggregator.accept_model(_update("c1", 1.0))
            aggregator.aggregate_model()

    # Assert
    assert caplog.text.count("aggregating weight differences with median()") == 1


def test_fedavg_rule_matches_flares_own_weighted_average():
    # Prepare: FLARE's FedAvg weights each result by its NUM_STEPS_CURRENT_ROUND
    updates = [("c1", 1.0, 10), ("c2", 2.0, 30), ("c3", -4.0, 60)]
    helper = WeightedAggregationHelper()
    aggregator = RobustAggregator({"method": "fedavg"})
    for club, value, steps in updates:
        helper.add(data={"b": np.array([value])}, weight=steps, contributor_name=club, contribution_round=0)
        aggregator.accept_model(_update(club, value, steps=steps))

    # Execute
    ours = aggregator.aggregate_model().params["b"].numpy()

    # Assert: (10*1 + 30*2 - 60*4) / 100 = -1.7
    assert np.allclose(ours, helper.get_result()["b"]) and np.allclose(ours, [-1.7])


def test_recipe_args_switch_the_job_to_weight_differences():
    args = robust_recipe_args(parse_aggregator({"method": "median"}), min_updates=3)
    assert args["params_transfer_type"] == TransferType.DIFF
    assert args["aggregator_data_kind"] == DataKind.WEIGHT_DIFF
    assert args["aggregator"].config == {"method": "median"} and args["aggregator"].min_updates == 3
