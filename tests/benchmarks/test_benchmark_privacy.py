"""A tiny run of the privacy benchmark writes well-formed results with the ratios and epsilons it promises."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.privacy import SETUPS, main
from fitfed.privacy.accounting import epsilon_spent


def test_smoke_run_writes_json_and_a_markdown_table(tmp_path: Path):
    # Execute: no real federation (the committed results have it), 1 timed round per set-up,
    # 2 rounds of 2 steps for the accuracy part, one epsilon, one seed
    argv = ["--no-federation", "--cost-rounds", "1", "--rounds", "2", "--local-steps", "2", "--seeds", "0",
            "--epsilons", "3", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0

    # Assert: every set-up is costed against plain, in the same run
    payload = json.loads((tmp_path / "privacy.json").read_text())
    assert {"command", "machine", "settings", "cost", "accuracy_summary", "accuracy_runs"} <= payload.keys()
    assert list(payload["cost"]) == list(SETUPS) and payload["cost"]["plain"]["time_ratio"] == 1.0
    assert payload["cost"]["he"]["bytes_ratio"] > 10  # CKKS ciphertext is far larger than float32 weights
    assert payload["cost"]["dp_filter"]["bytes_ratio"] == 1.0

    # Assert: the DP runs spent what they were calibrated to (every step counted), the plain run nothing
    runs = {r["epsilon_target"]: r for r in payload["accuracy_runs"]}
    assert runs[None]["epsilon_spent_max"] is None
    assert 2.9 < runs[3.0]["epsilon_spent_max"] <= 3.0 + 1e-6
    sigma, rate = runs[3.0]["noise_multipliers"][0], 32 / 199  # Cleveland: 199 training rows, batch 32
    assert epsilon_spent(sigma, rate, 2 * 2, 1e-5) <= 3.0 + 1e-6
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in payload["accuracy_runs"])
    table = (tmp_path / "privacy.md").read_text()
    assert "| he |" in table and "| epsilon 3 |" in table and "| no DP |" in table
