"""A club's training state that must outlive a job: SCAFFOLD's client control variate.

A resumed job (``fitfed resume``) starts on the clubs in a new FLARE job process, which
knows nothing of the crashed one. SCAFFOLD's client control variate is the club's own (the
server never sees it), so the club keeps it: after every round it trains, in
``<kit>/fitfed_state/<lineage root>/scaffold_round_<r>.pt``, replaced atomically. A
continuation that starts at round k loads the latest one from before round k; the state of
a round the server never completed is not used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

STATE_DIR = "fitfed_state"
KEEP = 3  # rounds of state kept: a continuation needs the one before the round the server lost
_NAME = re.compile(r"^scaffold_round_(\d+)\.pt$")


class ClubStateMissing(RuntimeError):
    """A continuation job needs club state that this club does not have; it must not train from scratch."""


def save_scaffold_controls(kit: Path, lineage_root: str, round_number: int, controls: dict[str, torch.Tensor]) -> None:
    """Keep the club's control variate after ``round_number`` (and the few rounds before it)."""
    folder = kit / STATE_DIR / lineage_root
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"scaffold_round_{round_number}.pt"
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as f:
        torch.save({k: v.detach().cpu().clone() for k, v in controls.items()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, target)
    for old in sorted(_saved(folder))[:-KEEP]:
        (folder / f"scaffold_round_{old}.pt").unlink(missing_ok=True)


def load_scaffold_controls(kit: Path, lineage_root: str, before_round: int, site: str) -> dict[str, torch.Tensor]:
    """The control variate this club had when the server completed round ``before_round - 1``.

    Raises:
        ClubStateMissing: the club kept none for this training (its ``fitfed_state`` was removed, or the
            job runs from another kit); the message says where it looked and what to do.
    """
    folder = kit / STATE_DIR / lineage_root
    rounds = [r for r in _saved(folder) if r < before_round]
    if not rounds:
        raise ClubStateMissing(
            f"site {site!r}: this SCAFFOLD job continues training {lineage_root} from round {before_round}, but the "
            f"club's control variate from before that round is not in {folder}. Training from a zero variate would "
            "silently start this club over, so it does not train. Restore that folder from the club's backup, or "
            "start the training afresh as a new job."
        )
    return torch.load(folder / f"scaffold_round_{max(rounds)}.pt", map_location="cpu", weights_only=True)


def _saved(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return [int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name))]
