"""With an attacker among five clubs, FedAvg degrades and every robust rule holds, in NVFlare's simulator.

club_05 sends its update sign-flipped and scaled by 10 (the test-only attack harness in
attack_harness). The audit trail records every round's aggregation report, and the job
summary flags the attacker. One run is replayed by the benchmark's in-process loop, which must
reproduce the simulator's global model.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from attack_harness.harness import run_attacked_job
from attack_harness.poison import AttackConfig
from benchmarks.federation import Club, run_federation
from fitfed.aggregation.config import parse_aggregator
from fitfed.audit import verify_chain
from fitfed.datasets.churn import write_clubs
from fitfed.jobs import JobSettings
from fitfed.report import RunReport, aggregation_records, load_report
from fitfed.task import load_site_data
from jobs.conftest import JOBS_DIR, job_module

pytestmark = pytest.mark.slow

ATTACKER = "club_05"
SIGN_FLIP_X10 = AttackConfig(kind="sign_flip", scale=10)
RULES = {
    "fedavg": {"method": "fedavg"},
    "median": {"method": "median"},
    "trimmed_mean": {"method": "trimmed_mean", "trim_fraction": 0.2},
    "krum": {"method": "krum", "num_faulty": 1},
    "multikrum": {"method": "multikrum", "num_faulty": 1},
}


@pytest.fixture(scope="module")
def five_clubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("five_clubs")
    write_clubs(folder, 5, seed=0)
    return folder


@pytest.fixture(scope="module")
def attacked_reports(five_clubs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunReport]:
    """Every rule's attacked run, all at once: each takes about 35 s alone; the five together about 2 minutes."""
    attacks = {ATTACKER: SIGN_FLIP_X10.model_dump()}
    with ProcessPoolExecutor(len(RULES), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            rule: pool.submit(
                run_attacked_job, JOBS_DIR / "fedavg_churn.py", _settings(rule).model_dump(), attacks, five_clubs,
                tmp_path_factory.mktemp(rule),
            )
            for rule in RULES
        }  # fmt: skip
        return {rule: load_report(future.result()) for rule, future in futures.items()}


def _settings(rule: str) -> JobSettings:
    base = job_module("fedavg_churn").SETTINGS.model_dump()
    return JobSettings.model_validate(
        {**base, "num_rounds": 3, "min_clients": 5, "min_updates": 5, "aggregator": RULES[rule]}
    )


@pytest.mark.parametrize("rule", list(RULES))
def test_fedavg_degrades_and_robust_rules_hold(rule: str, attacked_reports: dict[str, RunReport]):
    # Execute (in the fixture)
    report = attacked_reports[rule]

    # Assert: the run finished, every round has an aggregation report in the intact audit trail
    assert report.finished and report.completed_rounds == 3
    events = verify_chain(report.record_dir / "events.jsonl")
    assert [e["round"] for e in events if e["event"] == "aggregation_report"] == [0, 1, 2]
    assert all(ATTACKER in e["outliers"] for e in events if e["event"] == "aggregation_report")
    final_auc = report.mean(3, "roc_auc")
    if rule == "fedavg":
        assert final_auc < 0.6  # one attacker of five ruins the plain mean
    else:
        assert final_auc > 0.75  # as the unattacked demo job after 3 rounds
    flagged = [r.club for r in aggregation_records(report) if r.flagged]
    assert flagged == [ATTACKER]
    state = torch.load(report.final_model)
    assert all(torch.isfinite(t).all() for t in state.values())


def test_in_process_loop_reproduces_the_simulator(five_clubs: Path, attacked_reports: dict[str, RunReport]):
    # Prepare: the same clubs, attack and settings as the simulator run
    settings = _settings("median")
    clubs = [
        Club(csv.stem, load_site_data(csv, settings.train.task), SIGN_FLIP_X10 if csv.stem == ATTACKER else None)
        for csv in sorted(five_clubs.glob("*.csv"))
    ]

    # Execute
    simulated = torch.load(attacked_reports["median"].final_model)
    replayed = run_federation(clubs, settings.train, parse_aggregator(RULES["median"]), settings.num_rounds)

    # Assert
    assert simulated.keys() == replayed.params.keys()
    for key, value in simulated.items():
        torch.testing.assert_close(replayed.params[key], value, rtol=1e-5, atol=1e-6)
