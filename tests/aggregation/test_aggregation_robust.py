"""The pure numpy rules against hand-computed results, including ties, NaN/Inf and bad shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fitfed.aggregation.robust import (
    InfeasibleAggregationError,
    NonFiniteUpdateError,
    ShapeMismatchError,
    as_stack,
    coordinate_median,
    kept_after_trimming,
    krum_scores,
    multikrum_select,
    norm_bound,
    num_trimmed,
    trimmed_mean,
    weighted_mean,
)

CLUBS = ["a", "b", "c", "d", "e"]


def test_weighted_mean_is_fedavg():
    # Prepare: weights 1 and 3
    stack = [[0.0, 4.0], [4.0, 0.0]]

    # Execute
    result = weighted_mean(stack, weights=[1, 3])

    # Assert: (1*0 + 3*4)/4 = 3 and (1*4 + 3*0)/4 = 1
    assert result.tolist() == [3.0, 1.0]


def test_median_odd_and_even_counts():
    # Execute
    odd = coordinate_median([[1.0, 10.0], [2.0, 30.0], [100.0, 20.0]])
    even = coordinate_median([[1.0], [2.0], [4.0], [100.0]])

    # Assert: the middle value; with an even count, the mean of the two middle values (2 and 4)
    assert odd.tolist() == [2.0, 20.0]
    assert even.tolist() == [3.0]


def test_median_with_ties():
    # Execute: three equal values outvote two outliers
    result = coordinate_median([[5.0], [5.0], [5.0], [-100.0], [100.0]])

    # Assert
    assert result.tolist() == [5.0]


def test_trimmed_mean_drops_the_extremes_of_each_coordinate():
    # Prepare: beta 0.2 of 5 trims one value from each end of each coordinate
    stack = [[1.0, -50.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0], [100.0, 4.0]]

    # Execute
    result = trimmed_mean(stack, beta=0.2)

    # Assert: (2+3+4)/3 = 3 and (3+2+1)/3 = 2, wherever the extremes came from
    assert result.tolist() == [3.0, 2.0]


def test_weighted_trimmed_mean_weights_only_the_kept_values():
    # Prepare: the outlier carries a huge weight, but it is trimmed
    stack = [[0.0], [1.0], [3.0], [1000.0]]

    # Execute
    result = trimmed_mean(stack, beta=0.25, weights=[1, 1, 3, 1e6])

    # Assert: 0 and 1000 trimmed; (1*1 + 3*3) / (1 + 3) = 2.5
    assert result.tolist() == [2.5]


def test_trimmed_mean_ties_break_by_club_order():
    # Prepare: four equal values; with beta 0.25 the first and last club (in order) are trimmed
    stack = np.array([[7.0], [7.0], [7.0], [7.0]])

    # Execute
    kept = kept_after_trimming(stack, num_trimmed=1)

    # Assert
    assert kept[:, 0].tolist() == [False, True, True, False]
    assert trimmed_mean(stack, beta=0.25).tolist() == [7.0]


@pytest.mark.parametrize(("n", "beta", "expected"), [(5, 0.2, 1), (20, 0.2, 4), (100, 0.29, 29), (4, 0.1, 0)])
def test_num_trimmed_is_floor_of_beta_n(n: int, beta: float, expected: int):
    assert num_trimmed(n, beta) == expected


@pytest.mark.parametrize("beta", [0.5, 0.7, -0.1])
def test_trim_fraction_that_would_trim_everyone_is_refused(beta: float):
    with pytest.raises(ValueError, match=rf"beta={beta}: expected 0 <= beta < 0.5 .* trims every update"):
        trimmed_mean([[1.0], [2.0]], beta=beta)


def test_krum_scores_by_hand():
    # Prepare: n=5, f=1, so each score sums the squared distances to the n-f-2 = 2 nearest others
    stack = [[0.0], [1.0], [2.0], [3.0], [10.0]]

    # Execute
    scores = krum_scores(stack, f=1)

    # Assert: 0 -> 1+4; 1 -> 1+1; 2 -> 1+1; 3 -> 1+4; 10 -> 49+64
    assert scores.tolist() == [5.0, 2.0, 2.0, 5.0, 113.0]


def test_krum_tie_goes_to_the_earlier_club_and_multikrum_orders_by_score():
    # Execute
    krum = multikrum_select([[0.0], [1.0], [2.0], [3.0], [10.0]], f=1, m=1)
    multikrum = multikrum_select([[0.0], [1.0], [2.0], [3.0], [10.0]], f=1, m=4)

    # Assert: clubs 1 and 2 tie at 2.0, club 1 wins; the outlier (club 4) is never chosen
    assert krum.tolist() == [1]
    assert multikrum.tolist() == [1, 2, 0, 3]


def test_krum_with_fewer_than_2f_plus_3_clubs_is_refused():
    with pytest.raises(InfeasibleAggregationError, match=r"Krum with f=2 faulty clubs needs n >= 2f\+3 = 7 .* n=6"):
        multikrum_select(np.zeros((6, 2)), f=2, m=1)


def test_multikrum_m_above_n_minus_f_is_refused():
    with pytest.raises(InfeasibleAggregationError, match=r"m=5: expected 1 <= m <= n - f = 4"):
        multikrum_select(np.zeros((5, 2)), f=1, m=5)


def test_norm_bound_with_a_fixed_bound():
    # Prepare: norms 5 (3-4-5) and 1
    stack = [[3.0, 4.0], [0.6, 0.8]]

    # Execute
    clipped, factors, bound = norm_bound(stack, max_norm=2.0)

    # Assert: the first is scaled by 2/5, the second untouched
    assert bound == 2.0
    assert factors.tolist() == [0.4, 1.0]
    assert np.allclose(clipped, [[1.2, 1.6], [0.6, 0.8]])


def test_norm_bound_relative_to_the_median_norm():
    # Prepare: norms 1, 2 and 30; median 2, so the bound is 1.5 * 2 = 3
    stack = [[1.0, 0.0], [0.0, 2.0], [30.0, 0.0]]

    # Execute
    clipped, factors, bound = norm_bound(stack, median_multiple=1.5)

    # Assert
    assert bound == 3.0
    assert factors.tolist() == [1.0, 1.0, 0.1]
    assert clipped[2].tolist() == [3.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "set exactly one of max_norm=None and median_multiple=None"),
        ({"max_norm": 1.0, "median_multiple": 2.0}, "set exactly one of"),
        ({"max_norm": 0.0}, r"max_norm=0.0: expected a finite number > 0"),
        ({"median_multiple": math.inf}, r"median_multiple=inf: expected a finite number > 0"),
    ],
)
def test_norm_bound_parameters_are_checked(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        norm_bound([[1.0]], **kwargs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "rule",
    [
        coordinate_median,
        lambda s, clubs: trimmed_mean(s, 0.2, clubs=clubs),
        lambda s, clubs: multikrum_select(s, 1, 1, clubs=clubs),
        lambda s, clubs: norm_bound(s, max_norm=1.0, clubs=clubs),
        weighted_mean,
    ],
)
def test_every_rule_refuses_nan_or_inf_naming_the_club(rule, bad: float):
    # Prepare: club "c" sends one non-finite value
    stack = np.ones((5, 3))
    stack[2, 1] = bad

    # Execute / Assert
    with pytest.raises(NonFiniteUpdateError, match=r"club\(s\) 'c' \(1 value\(s\)\) hold NaN or Inf") as caught:
        rule(stack, clubs=CLUBS)
    assert caught.value.clubs == ("c",)


def test_mismatched_shapes_name_the_club():
    with pytest.raises(ShapeMismatchError, match=r"club 'b': update has shape \(3,\), expected \(2,\) like club 'a'"):
        as_stack([[1.0, 2.0], [1.0, 2.0, 3.0]], clubs=["a", "b"])


def test_no_updates_is_infeasible():
    with pytest.raises(InfeasibleAggregationError, match="expected at least 1, found 0"):
        as_stack([])


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match=r"weights=\[1.0, -1.0\]: expected finite positive numbers"):
        weighted_mean([[1.0], [2.0]], weights=[1, -1])
