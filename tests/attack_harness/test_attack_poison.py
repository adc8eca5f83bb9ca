"""The test-only attacks, by hand."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from attack_harness.poison import AttackConfig, attack_rng, flip_labels, poison_update

UPDATE = {"w": np.array([1.0, -2.0], dtype=np.float32)}


def test_sign_flip_scales_and_reverses_keeping_the_dtype():
    poisoned = poison_update(
        UPDATE, AttackConfig(kind="sign_flip", scale=10), attack_rng(AttackConfig(kind="none"), "a", 0)
    )
    assert poisoned["w"].tolist() == [-10.0, 20.0] and poisoned["w"].dtype == np.float32


def test_gaussian_noise_replaces_the_update_reproducibly_per_club_and_round():
    attack = AttackConfig(kind="gaussian", noise_std=2.0, seed=3)
    first = poison_update(UPDATE, attack, attack_rng(attack, "club_01", 4))["w"]
    again = poison_update(UPDATE, attack, attack_rng(attack, "club_01", 4))["w"]
    other = poison_update(UPDATE, attack, attack_rng(attack, "club_01", 5))["w"]
    assert first.tolist() == again.tolist() and first.tolist() != other.tolist()


def test_label_flip_leaves_the_update_and_flips_the_labels():
    attack = AttackConfig(kind="label_flip")
    assert not attack.poisons_update
    assert poison_update(UPDATE, attack, attack_rng(attack, "a", 0))["w"].tolist() == [1.0, -2.0]
    assert flip_labels(np.array([0.0, 1.0, 1.0], dtype=np.float32)).tolist() == [1.0, 0.0, 0.0]


def test_labels_for_tables():
    assert AttackConfig(kind="sign_flip", scale=10).label() == "sign_flip_x10"
    assert AttackConfig(kind="gaussian", noise_std=0.5).label() == "gaussian_std0.5"


def test_unknown_attack_is_refused():
    with pytest.raises(ValidationError, match="kind"):
        AttackConfig(kind="backdoor")
