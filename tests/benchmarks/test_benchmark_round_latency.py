"""A tiny run of round_latency: fitfed in NVFlare's simulator and Flower in its own venv, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.round_latency import FLOWER_PYTHON, main, ratios


def test_ratios_divide_each_timing_by_flower_at_the_same_size():
    rows = [{"timing": "fitfed", "clients": 4, "seconds_per_round": 0.3},
            {"timing": "flower", "clients": 4, "seconds_per_round": 0.2},
            {"timing": "fitfed", "clients": 100, "skipped": "needs about 61 GB"}]  # fmt: skip
    assert ratios(rows) == {"fitfed": {"4": 1.5}}


@pytest.mark.slow
def test_smoke_run_times_both_frameworks(tmp_path: Path):
    assert FLOWER_PYTHON.is_file(), "make test creates .venv-flower; run `make test` (or `make bench`)"

    # Execute: 2 clients, 2 rounds, fitfed's default timing only, no real processes
    argv = ["--clients", "2", "--rounds", "2", "--timings", "fitfed", "--flower-actors", "1", "--no-real",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0

    # Assert: both frameworks timed every round of the same task, and the ratio is theirs
    payload = json.loads((tmp_path / "round_latency.json").read_text())
    rows = {r["timing"]: r for r in payload["simulators"]}
    assert set(rows) == {"fitfed", "flower"} and payload["flower_version"] == "1.41.0"
    for row in rows.values():
        assert row["clients"] == 2 and len(row["round_seconds"]) == 2 and row["seconds_per_round"] > 0
    expected = round(rows["fitfed"]["seconds_per_round"] / rows["flower"]["seconds_per_round"], 2)
    assert payload["ratios"] == {"fitfed": {"2": expected}}
    assert "Flower 1.41 (Ray)" in (tmp_path / "round_latency.md").read_text()
