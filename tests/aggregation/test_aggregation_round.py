"""One round over named club updates: what is aggregated, and what the report says about each club."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fitfed.aggregation.config import parse_aggregator
from fitfed.aggregation.robust import InfeasibleAggregationError
from fitfed.aggregation.round import aggregate_round


def _updates(values: dict[str, float]) -> dict[str, dict[str, np.ndarray]]:
    """Each club sends w = [[v, v]] and b = [v] (float32, like a model's weights)."""
    return {
        club: {"w": np.full((1, 2), v, dtype=np.float32), "b": np.array([v], dtype=np.float32)}
        for club, v in values.items()
    }


HONEST_AND_ONE_ATTACKER = {"c1": 1.0, "c2": 2.0, "c3": 3.0, "c4": 4.0, "evil": -100.0}


def test_median_round_keeps_keys_shapes_and_dtypes():
    # Execute
    result = aggregate_round(_updates(HONEST_AND_ONE_ATTACKER), {}, parse_aggregator({"method": "median"}))

    # Assert: the median of 1, 2, 3, 4, -100 is 2
    assert set(result.params) == {"w", "b"}
    assert result.params["w"].shape == (1, 2) and result.params["w"].dtype == np.float32
    assert result.params["w"].tolist() == [[2.0, 2.0]] and result.params["b"].tolist() == [2.0]
    report = result.report
    assert report.method == "median()" and report.clubs == ["c1", "c2", "c3", "c4", "evil"]
    assert report.trimmed_share["evil"] == 1.0 and report.trimmed_share["c2"] == 0.0
    assert report.expected_trimmed_share == 0.8
    assert report.outliers == ["evil"]


def test_krum_round_reports_every_club_it_left_out():
    # Execute
    result = aggregate_round(
        _updates(HONEST_AND_ONE_ATTACKER), {}, parse_aggregator({"method": "krum", "num_faulty": 1})
    )

    # Assert: c2 and c3 tie for the best score; the earlier club wins
    assert result.report.selected == ["c2"]
    assert result.params["b"].tolist() == [2.0]
    assert result.report.rejected == {c: "not selected by krum(num_faulty=1)" for c in ("c1", "c3", "c4", "evil")}


def test_multikrum_averages_the_selected_with_their_weights():
    # Prepare: weights are local steps; c4 trained twice as long
    weights = {"c1": 1.0, "c2": 1.0, "c3": 1.0, "c4": 2.0, "evil": 1.0}

    # Execute
    result = aggregate_round(
        _updates(HONEST_AND_ONE_ATTACKER), weights, parse_aggregator({"method": "multikrum", "num_faulty": 1})
    )

    # Assert: m = n - f = 4, all honest; (1 + 2 + 3 + 2*4) / 5 = 2.8
    assert result.report.selected == ["c1", "c2", "c3", "c4"]
    assert result.report.rejected == {"evil": "not selected by multikrum(num_faulty=1)"}
    assert result.params["b"].tolist() == pytest.approx([2.8])


def test_norm_bound_reports_who_was_clipped_and_by_how_much():
    # Prepare: a fixed bound of sqrt(3) * 2 = the norm of the c2 update (three values of 2)
    config = parse_aggregator({"method": "fedavg", "norm_bound": {"max_norm": 2 * math.sqrt(3)}})

    # Execute
    result = aggregate_round(_updates({"c1": 1.0, "c2": 2.0, "big": 8.0}), {}, config)

    # Assert: "big" (norm 8*sqrt(3)) scaled by 1/4 to 2s; mean of 1, 2, 2 = 5/3
    assert result.report.clipped == {"big": 0.25}
    assert result.report.norm_bound == pytest.approx(2 * math.sqrt(3))
    assert result.params["b"].tolist() == pytest.approx([5 / 3])


def test_nan_update_is_rejected_and_never_reaches_the_aggregate():
    # Prepare
    updates = _updates({"c1": 1.0, "c2": 2.0, "c3": 3.0})
    updates["c2"]["w"][0, 1] = np.nan

    # Execute
    result = aggregate_round(updates, {}, parse_aggregator({"method": "fedavg"}))

    # Assert
    assert result.report.clubs == ["c1", "c3"]
    assert "club(s) 'c2' (1 value(s)) hold NaN or Inf" in result.report.rejected["c2"]
    assert "(parameters: w)" in result.report.rejected["c2"]
    assert np.isfinite(result.params["w"]).all() and result.params["b"].tolist() == [2.0]


def test_update_with_another_layout_is_rejected_naming_the_difference():
    # Prepare: one club's model has a wider layer and an extra parameter
    updates = _updates({"c1": 1.0, "c2": 2.0, "c3": 3.0})
    updates["c3"] = {"w": np.ones((1, 3), dtype=np.float32), "b": np.ones(1, np.float32), "x": np.ones(1, np.float32)}

    # Execute
    result = aggregate_round(updates, {}, parse_aggregator({"method": "median"}))

    # Assert
    reason = result.report.rejected["c3"]
    assert "unexpected parameter 'x'" in reason and "parameter 'w' has shape (1, 3), expected (1, 2)" in reason
    assert result.params["w"].tolist() == [[1.5, 1.5]]


def test_too_few_usable_updates_stop_the_round():
    # Prepare: krum with f=1 needs 5, and one of 5 is NaN
    updates = _updates({"c1": 1.0, "c2": 2.0, "c3": 3.0, "c4": 4.0, "c5": 5.0})
    updates["c5"]["b"][0] = np.inf

    # Execute / Assert
    with pytest.raises(
        InfeasibleAggregationError, match=r"only 4 usable update\(s\) .* rejected: \['c5'\]: expected at"
    ):
        aggregate_round(updates, {}, parse_aggregator({"method": "krum", "num_faulty": 1}))


def test_min_updates_is_enforced_for_any_rule():
    with pytest.raises(InfeasibleAggregationError, match=r"expected at least 3 \(min_updates=3"):
        aggregate_round(_updates({"c1": 1.0, "c2": 2.0}), {}, parse_aggregator({"method": "fedavg"}), min_updates=3)
