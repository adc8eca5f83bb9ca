"""Aggregator choices are validated when a job is configured, against the federation's size."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fitfed.aggregation.config import (
    METHODS,
    check_feasible,
    describe,
    parse_aggregator,
    refuse_with_encrypted_updates,
    required_updates,
)
from fitfed.aggregation.rules import create_rule, registered_rules


def test_every_method_has_a_registered_rule():
    assert registered_rules() == sorted(METHODS)


def test_unknown_rule_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"method='bulyan' is not registered; valid names: \['fedavg', 'krum'"):
        create_rule("bulyan")


def test_unknown_method_in_a_config_is_refused():
    with pytest.raises(ValidationError, match="'fedavg', 'median', 'trimmed_mean', 'krum', 'multikrum'"):
        parse_aggregator({"method": "bulyan"})


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9])
def test_trim_fraction_must_trim_some_but_not_all(fraction: float):
    with pytest.raises(ValidationError, match=rf"trim_fraction={fraction}: expected 0 < trim_fraction < 0.5"):
        parse_aggregator({"method": "trimmed_mean", "trim_fraction": fraction})


def test_krum_needs_at_least_one_faulty_club():
    with pytest.raises(ValidationError, match="num_faulty"):
        parse_aggregator({"method": "krum", "num_faulty": 0})


def test_norm_bound_takes_exactly_one_form():
    with pytest.raises(ValidationError, match="set exactly one of max_norm=1.0 and median_multiple=2.0"):
        parse_aggregator({"method": "median", "norm_bound": {"max_norm": 1.0, "median_multiple": 2.0}})


@pytest.mark.parametrize(
    ("config", "needed"),
    [
        ({"method": "fedavg"}, 1),
        ({"method": "median"}, 1),
        ({"method": "trimmed_mean", "trim_fraction": 0.2}, 5),
        ({"method": "trimmed_mean", "trim_fraction": 0.25}, 4),
        ({"method": "krum", "num_faulty": 1}, 5),
        ({"method": "multikrum", "num_faulty": 2}, 7),
        ({"method": "multikrum", "num_faulty": 1, "num_selected": 6}, 7),
    ],
)
def test_required_updates(config: dict, needed: int):
    assert required_updates(parse_aggregator(config))[0] == needed


def test_krum_with_too_few_clubs_fails_at_configuration():
    config = parse_aggregator({"method": "krum", "num_faulty": 2})
    with pytest.raises(ValueError, match=r"krum\(num_faulty=2\) cannot work with min_updates=6: .* 2f\+3 = 7"):
        check_feasible(config, 6)


def test_trim_fraction_that_trims_nobody_fails_at_configuration():
    config = parse_aggregator({"method": "trimmed_mean", "trim_fraction": 0.1})
    with pytest.raises(ValueError, match=r"min_clients=5: trim_fraction=0.1 .* 0 \(no protection\) below n=10"):
        check_feasible(config, 5, setting="min_clients")


def test_describe_names_rule_and_parameters():
    config = parse_aggregator({"method": "multikrum", "num_faulty": 1, "norm_bound": {"max_norm": 2.0}})
    assert describe(config) == "multikrum(num_faulty=1, norm_bound={'max_norm': 2.0})"


@pytest.mark.parametrize("method", ["median", "fedavg"])
def test_robust_aggregation_and_homomorphic_encryption_are_refused_together(method: str):
    with pytest.raises(ValueError, match="cannot be combined: robust aggregation must see each club's update"):
        refuse_with_encrypted_updates(parse_aggregator({"method": method}))


def test_no_aggregator_is_fine_under_encryption():
    refuse_with_encrypted_updates(None)
