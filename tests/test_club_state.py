"""A club's SCAFFOLD variate outlives a crashed job; a continuation never trains from a lost one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fitfed.club_state import KEEP, STATE_DIR, ClubStateMissing, load_scaffold_controls, save_scaffold_controls


def test_a_continuation_takes_the_variate_from_before_the_round_the_server_lost(tmp_path: Path):
    # Arrange: the club trained rounds 0..4; the server completed rounds 0..3 and lost round 4
    for r in range(5):
        save_scaffold_controls(tmp_path, "root-job", r, {"w": torch.full((3,), float(r))})

    # Execute
    controls = load_scaffold_controls(tmp_path, "root-job", before_round=4, site="club_01")

    # Assert: round 3's variate, not the lost round 4's; only the last KEEP rounds are kept
    assert torch.equal(controls["w"], torch.full((3,), 3.0))
    kept = sorted(p.name for p in (tmp_path / STATE_DIR / "root-job").iterdir())
    assert kept == [f"scaffold_round_{r}.pt" for r in range(5 - KEEP, 5)]


def test_a_club_without_its_variate_refuses_naming_the_folder(tmp_path: Path):
    save_scaffold_controls(tmp_path, "other-job", 0, {"w": torch.zeros(2)})

    with pytest.raises(ClubStateMissing) as refused:
        load_scaffold_controls(tmp_path, "root-job", before_round=2, site="club_02")

    message = str(refused.value)
    assert "club_02" in message and str(tmp_path / STATE_DIR / "root-job") in message
    assert "Restore that folder" in message
