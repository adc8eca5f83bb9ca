"""`fitfed run --aggregator` selects a robust aggregator; `fitfed report` names the clubs it flagged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fitfed.audit import chain_record
from fitfed.cli import main
from fitfed.datasets.churn import write_clubs

JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ('{"method": "krum", "num_faulty": 2}', r"krum\(num_faulty=2\) cannot work with min_updates=2: .* 2f\+3 = 7"),
        ("median", r"--aggregator='median' is not JSON .* e.g. --aggregator '\{\"method\": \"median\"\}'"),
        ('{"method": "bulyan"}', "does not match any of the expected tags: 'fedavg', 'median'"),
    ],
)
def test_run_refuses_a_bad_aggregator_before_starting(option: str, message: str, tmp_path: Path, capsys):
    # Prepare
    write_clubs(tmp_path / "clubs", 3, seed=0)

    # Execute
    status = main(["run", "fedavg_churn", "--data", str(tmp_path / "clubs"), "--jobs-dir", str(JOBS_DIR),
                   "--workspace", str(tmp_path / "ws"), "--aggregator", option])  # fmt: skip

    # Assert: a one-line error, no simulator started
    assert status == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "ws").exists()


def _write_record(folder: Path, reports: list[dict]) -> None:
    folder.mkdir(parents=True)
    events = [{"event": "run_started"}]
    for r, report in enumerate(reports):
        events += [{"event": "aggregation_report", "round": r, **report}, {"event": "round_completed", "round": r}]
    lines, previous = [], "0" * 64
    for sequence, event in enumerate(events):
        chained = chain_record(event, previous, sequence)
        lines.append(json.dumps(chained))
        previous = chained["hash"]
    (folder / "events.jsonl").write_text("\n".join(lines) + "\n")


def test_report_flags_the_club_rejected_in_most_rounds(tmp_path: Path, capsys):
    # Prepare: Multi-Krum left club_05 out in 2 of 3 rounds and clipped club_02 once
    clubs = ["club_01", "club_02", "club_03", "club_04", "club_05"]
    left_out = {"club_05": "not selected by multikrum(num_faulty=1)"}
    reports = [
        {"method": "multikrum(num_faulty=1)", "clubs": clubs, "selected": clubs[:4], "rejected": left_out,
         "clipped": {"club_02": 0.5}, "outliers": []},
        {"method": "multikrum(num_faulty=1)", "clubs": clubs, "selected": clubs[:4], "rejected": left_out,
         "clipped": {}, "outliers": ["club_05"]},
        {"method": "multikrum(num_faulty=1)", "clubs": clubs, "selected": clubs[1:], "clipped": {}, "outliers": [],
         "rejected": {"club_01": "not selected by multikrum(num_faulty=1)"}},
    ]  # fmt: skip
    _write_record(tmp_path / "fitfed", reports)

    # Execute
    main(["report", str(tmp_path / "fitfed")])

    # Assert
    out = capsys.readouterr().out
    assert "aggregation: multikrum(num_faulty=1); flagged (suspect in most rounds): ['club_05']" in out
    assert (
        "  FLAGGED club_05: rejected in 2 of 3 rounds (not selected by multikrum(num_faulty=1)); "
        "an outlier in 1 of 3 rounds"
    ) in out
    assert "  club_02: clipped in 1 of 3 rounds" in out
    assert "  club_01: rejected in 1 of 3 rounds" in out
