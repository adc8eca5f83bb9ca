"""The data cards in docs/data.md say what the code computes, so they cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fitfed.datasets.churn import write_clubs
from fitfed.datasets.heart_disease import write_sites
from fitfed.preprocessing import split_rows
from fitfed.spec import load_spec
from fitfed.validation import read_site_csv

DATA_CARD = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def _card_rows(site: str) -> list[str]:
    row = re.search(rf"^\| {site} \|(.+)\|$", DATA_CARD.read_text(), flags=re.MULTILINE)
    assert row, f"docs/data.md has no row for {site}"
    return [cell.strip() for cell in row.group(1).split("|")]


def _counts(csv: Path, task: str) -> tuple[int, int, int, int, float]:
    spec = load_spec(task)
    table = read_site_csv(csv, spec)
    train, test = split_rows(table.frame, spec)
    return table.rows_read, table.rows_dropped, len(train), len(test), round(float(table.frame["label"].mean()), 3)


@pytest.mark.parametrize("hospital", ["cleveland", "hungarian", "switzerland", "va"])
def test_heart_disease_card_matches_code(hospital: str, tmp_path: Path):
    write_sites(tmp_path)
    rows, dropped, train, test, share = _counts(tmp_path / f"{hospital}.csv", "heart_disease")
    assert _card_rows(hospital) == [str(rows), str(dropped), str(train), str(test), f"{share:.3f}"]


@pytest.mark.parametrize("club", ["club_01", "club_02", "club_03"])
def test_churn_card_matches_code(club: str, tmp_path: Path):
    write_clubs(tmp_path, 3, seed=0)
    rows, _, train, test, rate = _counts(tmp_path / f"{club}.csv", "churn")
    assert _card_rows(club) == [str(rows), str(train), str(test), f"{rate:.3f}"]
