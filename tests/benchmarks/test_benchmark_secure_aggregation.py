"""A tiny run of the secure-aggregation benchmark (part A only) writes well-formed results with correct aggregates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.secure_aggregation import NAME, VARIANTS, main
from fitfed.secagg.encoding import rounding_error

pytestmark = pytest.mark.slow


def test_smoke_run_writes_json_and_a_markdown_table(tmp_path: Path):
    # Execute: no real federation (the committed results have it), 3 and 4 clubs, a 4-unit MLP, 1 timed round
    argv = ["--skip-federation", "--clubs", "3", "4", "--rounds", "1", "--hidden-units", "4", "--out", str(tmp_path)]
    assert main(argv) == 0

    # Assert: every variant at every club count, costed against plain at the same count
    payload = json.loads((tmp_path / f"{NAME}.json").read_text())
    assert {"command", "machine", "settings", "protocol", "federation", "estimate", "verdict"} <= payload.keys()
    assert payload["federation"] == {} and payload["estimate"] == {} and payload["verdict"]["met"] is None
    cells = {(c["variant"], c["clubs"]): c for c in payload["protocol"]["cells"]}
    assert set(cells) == {(v, n) for v in VARIANTS for n in (3, 4)}
    assert payload["protocol"]["model"]["parameters"] == 16 * 4 + 4 + 4 * 4 + 4 + 4 + 1
    for (variant, n), cell in cells.items():
        assert cell["club_seconds"] > 0 and cell["server_seconds"] > 0 and cell["bytes_per_club"] > 0
        if variant == "plain":
            assert cell["time_ratio"] == cell["bytes_ratio"] == 1.0 and cell["max_abs_error"] < 1e-12
        if variant.startswith("masking"):
            # the unmasked mean is the plaintext weighted mean, within fixed point's stated rounding
            assert cell["threshold"] == n // 2 + 1
            assert cell["max_abs_error"] <= rounding_error(cell["aggregated"]) == cell["error_bound"]
            assert cell["bytes_ratio"] > 1  # keys, shares and 64-bit masked values travel too
    assert cells[("masking_drop_before", 4)]["aggregated"] == 3 and cells[("masking_drop_after", 4)]["aggregated"] == 4
    assert cells[("he", 4)]["bytes_ratio"] > 10 and cells[("he", 4)]["max_abs_error"] < 1e-4  # CKKS: large, close
    table = (tmp_path / f"{NAME}.md").read_text()
    assert "| 4 | masking |" in table and "| 3 | he |" in table and "Not run (`--skip-federation`)" in table
