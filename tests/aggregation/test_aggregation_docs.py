"""docs/robust-aggregation.md shows the committed benchmark's numbers and settings that really validate."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fitfed.aggregation.config import parse_aggregator

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "robust-aggregation.md"
RESULTS = ROOT / "benchmarks" / "results" / "robustness.md"


def _accuracy_rows(page: str) -> list[str]:
    table = page.split("## Mean-over-hospitals accuracy")[1].split("##")[0]
    return [line for line in table.splitlines() if line.startswith("| ")]


def test_guide_shows_the_committed_benchmark_table():
    rows = _accuracy_rows(RESULTS.read_text())
    assert len(rows) == 6  # header + five attacks
    guide = GUIDE.read_text()
    for row in rows:
        assert row in guide, f"docs/robust-aggregation.md is out of date with benchmarks/results: {row}"


def test_every_setting_in_the_guide_validates():
    settings = re.findall(r"`(\{\"method\".*?\})`", GUIDE.read_text())
    assert len(settings) >= 5
    for setting in settings:
        parse_aggregator(json.loads(setting))
