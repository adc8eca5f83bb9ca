from __future__ import annotations

import math
import re

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from scipy.optimize import brentq
from scipy.stats import norm

from fitfed.privacy.accounting import epsilon_of, epsilon_spent, make_accountant

DELTA = 1e-5


def _gaussian_rdp_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """By hand: k Gaussian mechanisms have RDP k*a/(2 sigma^2); Opacus's RDP-to-DP conversion, best order."""
    best = math.inf
    for a in RDPAccountant.DEFAULT_ALPHAS:
        rdp = rounds * a / (2 * noise_multiplier**2)
        best = min(best, rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a))
    return best


def _exact_gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """The tight epsilon of k Gaussian mechanisms (Balle & Wang 2018): a Gaussian with mu = sqrt(k)/sigma."""
    mu = math.sqrt(rounds) / noise_multiplier

    def delta_of(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(delta_of, 0.0, 100.0)


@pytest.mark.parametrize(("noise", "rounds"), [(1.0, 1), (1.0, 5), (2.5, 30), (0.8, 3)])
def test_update_level_rdp_epsilon_matches_the_closed_form(noise, rounds):
    # Execute
    epsilon = epsilon_spent(noise, 1.0, rounds, DELTA)

    # Assert
    assert epsilon == pytest.approx(_gaussian_rdp_epsilon(noise, rounds, DELTA), rel=1e-9)


def test_golden_value_of_one_noised_update():
    # Execute / Assert: sigma = 1, one round, delta = 1e-5
    assert epsilon_spent(1.0, 1.0, 1, DELTA) == pytest.approx(4.728507, abs=1e-6)


@pytest.mark.parametrize(("noise", "rounds"), [(1.0, 1), (1.5, 10), (3.0, 50)])
def test_both_accountants_bound_the_exact_gaussian_epsilon_and_prv_is_tight(noise, rounds):
    # Prepare
    exact = _exact_gaussian_epsilon(noise, rounds, DELTA)

    # Execute
    rdp = epsilon_spent(noise, 1.0, rounds, DELTA, "rdp")
    prv = epsilon_spent(noise, 1.0, rounds, DELTA, "prv")

    # Assert: both are upper bounds; PRV is within its error of the truth
    assert exact <= prv <= rdp
    assert prv - exact < 0.05


@pytest.mark.parametrize(("noise", "rate", "steps"), [(1.1, 256 / 60_000, 14_000), (1.0, 0.05, 60), (0.7, 0.2, 7)])
def test_subsampled_epsilon_matches_opacus_accountant_stepped_by_hand(noise, rate, steps):
    # Prepare: an accountant that counted every step itself, and Opacus's analysis functions directly
    stepped = RDPAccountant()
    for _ in range(steps):
        stepped.step(noise_multiplier=noise, sample_rate=rate)
    orders = RDPAccountant.DEFAULT_ALPHAS
    direct, _ = rdp_analysis.get_privacy_spent(
        orders=orders,
        rdp=rdp_analysis.compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=orders),
        delta=DELTA,
    )

    # Execute
    epsilon = epsilon_spent(noise, rate, steps, DELTA)

    # Assert
    assert epsilon == pytest.approx(stepped.get_epsilon(DELTA), rel=1e-12)
    assert epsilon == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_grows_with_steps(accountant):
    # Execute
    epsilons = [epsilon_spent(1.0, 0.1, steps, DELTA, accountant) for steps in (1, 10, 50, 200)]

    # Assert
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 4


def test_a_history_of_two_mechanisms_composes_and_runs_merge():
    # Prepare
    history = [(1.0, 0.1, 30), (2.0, 1.0, 3)]
    split = [(1.0, 0.1, 10), (1.0, 0.1, 20), (2.0, 1.0, 0), (2.0, 1.0, 3)]
    reference = RDPAccountant()
    reference.history = list(history)

    # Execute / Assert
    assert make_accountant("rdp", split).history == history
    assert epsilon_of(split, DELTA) == pytest.approx(reference.get_epsilon(DELTA), rel=1e-12)
    assert epsilon_of(history, DELTA) > max(epsilon_spent(1.0, 0.1, 30, DELTA), epsilon_spent(2.0, 1.0, 3, DELTA))


def test_no_steps_spend_nothing():
    assert epsilon_spent(1.0, 0.5, 0, DELTA) == 0.0
    assert epsilon_of([], DELTA, "prv") == 0.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: epsilon_spent(1.0, 1.0, 1, DELTA, "gdp"), "accountant='gdp' is not supported; use one of rdp, prv"),
        (lambda: epsilon_spent(0.0, 1.0, 1, DELTA), "noise_multiplier=0.0: expected > 0"),
        (lambda: epsilon_spent(1.0, 1.5, 1, DELTA), "sample_rate=1.5: expected 0 < sample_rate <= 1"),
        (lambda: epsilon_spent(1.0, 1.0, -1, DELTA), "steps=-1: expected >= 0"),
        (lambda: epsilon_spent(1.0, 1.0, 1, 1.0), "delta=1.0: expected 0 < delta < 1"),
    ],
)
def test_out_of_range_settings_are_refused(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_rdp_results_are_plain_floats():
    assert type(epsilon_spent(1.0, 0.3, 4, DELTA)) is float
    assert np.isfinite(epsilon_spent(1.0, 0.3, 4, DELTA, "prv"))
