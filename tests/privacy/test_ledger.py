from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from fitfed.audit import ChainError, verify_chain
from fitfed.config import PrivacyBudget, load_site_config, site_data_path
from fitfed.privacy.ledger import (
    JobState,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    Spend,
    ledger_path,
    open_ledger,
)

DELTA = 1e-5
BUDGET = PrivacyBudget(epsilon=5.0, delta=DELTA)


def _spend(job_id: str, round_number: int, epsilon: float, mechanism: str = "update_dp") -> Spend:
    return Spend(
        job_id=job_id,
        mechanism=mechanism,  # type: ignore[arg-type]
        round=round_number,
        epsilon_job=epsilon,
        delta=DELTA,
        noise_multiplier=1.5,
        sample_rate=1.0,
        steps_job=round_number + 1,
    )


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    (tmp_path / "local").mkdir()
    return tmp_path


def test_ledger_lives_in_the_kits_local_folder(kit: Path):
    assert ledger_path(kit) == kit / "local" / "fitfed_privacy_ledger.jsonl"


def test_spending_sums_the_latest_epsilon_of_each_job_and_mechanism(kit: Path):
    # Prepare
    ledger = PrivacyLedger(ledger_path(kit), BUDGET, "club_01")

    # Execute: job-a spends 1.0 then 1.5 in total; job-b 2.0 by update-level DP and 0.5 by DP-SGD
    ledger.charge(_spend("job-a", 0, 1.0))
    ledger.charge(_spend("job-a", 1, 1.5))
    ledger.charge(_spend("job-b", 0, 2.0))
    ledger.charge(_spend("job-b", 0, 0.5, mechanism="dp_sgd"))

    # Assert
    assert ledger.spent_total() == pytest.approx(1.5 + 2.0 + 0.5)
    assert ledger.job_state("job-a", "update_dp") == JobState(steps=2, epsilon=1.5)
    assert ledger.job_state("job-a", "dp_sgd") == JobState()
    records = verify_chain(ledger_path(kit))
    assert [r["event"] for r in records] == ["round_spent"] * 4
    assert set(records[0]) == {
        "event", "job_id", "mechanism", "round", "epsilon_job", "delta", "noise_multiplier", "sample_rate",
        "steps_job", "run_job_id", "time", "seq", "prev_hash", "hash",
    }  # fmt: skip


def test_a_new_ledger_object_on_the_same_file_continues(kit: Path):
    # Prepare
    PrivacyLedger(ledger_path(kit), BUDGET, "club_01").charge(_spend("job-a", 0, 2.0))

    # Execute: the site restarts
    restarted = PrivacyLedger(ledger_path(kit), BUDGET, "club_01")
    restarted.charge(_spend("job-a", 1, 3.0))

    # Assert
    assert restarted.job_state("job-a", "update_dp") == JobState(steps=2, epsilon=3.0)
    assert restarted.spent_total() == pytest.approx(3.0)
    assert len(verify_chain(ledger_path(kit))) == 2


def test_a_round_past_the_budget_is_refused_and_the_refusal_recorded(kit: Path):
    # Prepare
    ledger = PrivacyLedger(ledger_path(kit), BUDGET, "club_01")
    ledger.charge(_spend("job-a", 2, 4.0))

    # Execute / Assert: job-b's 1.5 would bring the club to 5.5 > 5
    message = (
        "site 'club_01': privacy budget exceeded. Budget: epsilon=5 at delta=1e-05; already spent: epsilon=4; "
        "round 0 of job 'job-b' (update_dp) would bring it to 5.5. Nothing was released."
    )
    with pytest.raises(PrivacyBudgetExceeded, match=re.escape(message)) as refused:
        ledger.charge(_spend("job-b", 0, 1.5))
    assert "raise privacy_budget.epsilon in the kit's local/fitfed_site.yaml deliberately" in str(refused.value)
    records = verify_chain(ledger_path(kit))
    assert [r["event"] for r in records] == ["round_spent", "refused"]
    assert records[1]["job_id"] == "job-b" and records[1]["epsilon_job"] == 1.5 and records[1]["spent_total"] == 4.0
    assert ledger.spent_total() == pytest.approx(4.0)


def test_exactly_the_budget_is_allowed_and_a_job_is_charged_only_its_increase(kit: Path):
    # Prepare
    ledger = PrivacyLedger(ledger_path(kit), BUDGET, "club_01")
    ledger.charge(_spend("job-a", 0, 3.0))

    # Execute: job-a growing from 3 to 5 costs 2 more, not 5
    ledger.charge(_spend("job-a", 1, 5.0))

    # Assert
    assert ledger.spent_total() == pytest.approx(5.0)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check(_spend("job-a", 2, 5.01))


def test_check_records_only_a_refusal(kit: Path):
    # Prepare
    ledger = PrivacyLedger(ledger_path(kit), BUDGET, "club_01")

    # Execute
    ledger.check(_spend("job-a", 0, 4.0))
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check(_spend("job-a", 0, 6.0))

    # Assert
    assert [r["event"] for r in verify_chain(ledger_path(kit))] == ["refused"]
    assert ledger.spent_total() == 0.0


def test_without_a_budget_spending_is_recorded_but_not_limited(kit: Path):
    # Prepare
    ledger = PrivacyLedger(ledger_path(kit), None, "club_01")

    # Execute
    ledger.charge(_spend("job-a", 0, 50.0))

    # Assert
    assert ledger.spent_total() == 50.0


def test_a_tampered_ledger_is_refused_not_reset(kit: Path):
    # Prepare: someone lowers a spent epsilon to make room in the budget
    path = ledger_path(kit)
    ledger = PrivacyLedger(path, BUDGET, "club_01")
    ledger.charge(_spend("job-a", 0, 4.0))
    ledger.charge(_spend("job-b", 0, 0.5))
    path.write_text(path.read_text().replace('"epsilon_job": 4.0', '"epsilon_job": 0.1'))
    message = f"site 'club_01': the privacy ledger is refused: {path}:1: its content does not match its hash"

    # Execute / Assert: on opening, and for a ledger already open
    with pytest.raises(ChainError, match=re.escape(message)):
        PrivacyLedger(path, BUDGET, "club_01")
    with pytest.raises(ChainError, match="must never be deleted or reset"):
        ledger.charge(_spend("job-c", 0, 0.1))
    assert "job-c" not in path.read_text()


def test_a_removed_entry_is_detected(kit: Path):
    # Prepare
    path = ledger_path(kit)
    ledger = PrivacyLedger(path, BUDGET, "club_01")
    for job in ("job-a", "job-b", "job-c"):
        ledger.charge(_spend(job, 0, 1.0))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")

    # Execute / Assert
    with pytest.raises(ChainError, match=r":2: does not follow line 1"):
        ledger.spent_total()


def test_spends_at_another_delta_or_going_backwards_are_refused(kit: Path):
    # Prepare
    ledger = PrivacyLedger(ledger_path(kit), BUDGET, "club_01")
    ledger.charge(_spend("job-a", 1, 2.0))
    other_delta = replace(_spend("job-a", 2, 2.5), delta=1e-6)

    # Execute / Assert
    with pytest.raises(ValueError, match=re.escape("spend.delta=1e-06 differs from the budget's delta=1e-05")):
        ledger.charge(other_delta)
    with pytest.raises(ValueError, match=re.escape("go below what the ledger counted")):
        ledger.charge(_spend("job-a", 0, 1.0))


def test_ledger_lines_hold_no_member_data(kit: Path):
    # Prepare
    ledger = PrivacyLedger(ledger_path(kit), BUDGET, "club_01")
    ledger.charge(_spend("job-a", 0, 1.0))

    # Assert: accounting parameters only (run_job_id is null outside a resumed job)
    record = json.loads(ledger_path(kit).read_text().splitlines()[0])
    assert all(isinstance(v, str | int | float) for k, v in record.items() if k != "run_job_id")
    assert record["run_job_id"] is None


def test_open_ledger_reads_the_budget_from_the_site_config(tmp_path: Path):
    # Prepare
    (tmp_path / "local").mkdir()
    site_yaml = {"data_path": "data/club.csv", "privacy_budget": {"epsilon": 8, "delta": 1e-6}}
    (tmp_path / "local" / "fitfed_site.yaml").write_text(yaml.safe_dump(site_yaml))

    # Execute
    ledger = open_ledger(tmp_path, "club_01")

    # Assert
    assert ledger is not None and ledger.budget == PrivacyBudget(epsilon=8, delta=1e-6)
    assert site_data_path("club_01", tmp_path) == tmp_path / "data" / "club.csv"


def test_open_ledger_without_a_site_config_records_without_a_budget_and_without_local_is_none(tmp_path: Path):
    # Execute / Assert
    assert open_ledger(tmp_path, "club_01") is None
    (tmp_path / "local").mkdir()
    ledger = open_ledger(tmp_path, "club_01")
    assert ledger is not None and ledger.budget is None
    assert load_site_config(tmp_path) is None


@pytest.mark.parametrize(
    ("budget", "field"), [({"epsilon": 0, "delta": 1e-5}, "epsilon"), ({"epsilon": 1, "delta": 1}, "delta")]
)
def test_privacy_budget_must_be_positive_with_delta_below_one(budget, field):
    with pytest.raises(ValidationError, match=field):
        PrivacyBudget(**budget)
