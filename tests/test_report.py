"""Reading a run record: each round's wall time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fitfed.report import round_seconds
from fitfed.server.run_record import EVENTS_FILE


def test_round_seconds_measures_started_to_completed_for_completed_rounds_only(tmp_path: Path):
    events = [
        {"event": "round_started", "round": 0, "time": 100.0},
        {"event": "site_update", "round": 0, "time": 105.0},
        {"event": "round_completed", "round": 0, "time": 110.0},
        {"event": "round_started", "round": 1, "time": 110.5},
        {"event": "round_completed", "round": 1, "time": 110.75},
        {"event": "round_started", "round": 2, "time": 111.0},  # aborted: never completed
    ]
    (tmp_path / EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))

    assert round_seconds(tmp_path) == pytest.approx([10.0, 0.25])
