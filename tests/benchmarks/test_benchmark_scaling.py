"""The scaling benchmark: its line fit and knee, and a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.scaling import analyse, line_fit, main


def test_line_fit_recovers_a_line_and_scores_a_curve_lower():
    exact = line_fit([4, 8, 16], [1.0, 2.0, 4.0])
    assert (exact["slope"], exact["intercept"], exact["r2"]) == (0.25, 0.0, 1.0)
    assert line_fit([1, 2, 3, 4], [1.0, 4.0, 9.0, 16.0])["r2"] < 1.0


def test_knee_is_the_first_size_that_could_not_run_all_at_once():
    rows = [{"clients": n, "threads": t, "seconds_per_round": s, "peak_memory_gb": g}
            for n, t, s, g in [(4, 4, 0.3, 3.0), (8, 8, 0.5, 5.0), (100, 20, 40.0, 13.0)]]  # fmt: skip
    result = analyse(rows)
    assert result["knee"] == {"largest_all_at_once": 8, "first_swapped": 100, "threads": 20}
    assert result["seconds_per_round_fit"]["slope"] == 0.05  # fitted on the sizes that ran all at once


@pytest.mark.slow
def test_smoke_run_writes_rows_and_fits(tmp_path: Path):
    assert main(["--clubs", "2", "3", "--rounds", "2", "--out", str(tmp_path)]) == 0

    payload = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["clients"] for r in payload["rows"]] == [2, 3]
    for row in payload["rows"]:
        assert len(row["round_seconds"]) == 2 and row["seconds_per_round"] > 0 and row["peak_memory_gb"] > 0.1
    assert "seconds_per_round_fit" in payload["analysis"]
    assert "| 3 | 3 |" in (tmp_path / "scaling.md").read_text()
