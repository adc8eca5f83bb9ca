"""A club's privacy ledger: every epsilon it has spent, in every job, checked against its budget.

The ledger is ``<kit>/local/fitfed_privacy_ledger.jsonl``, an append-only, hash-chained log
(see :mod:`fitfed.audit`) kept by the club, never by the federation. A round is charged
*before* anything leaves the site, so a refused round releases nothing. Entries hold
accounting parameters only: never member data, nor anything computed from it but epsilon.

Composition: a job's epsilon under one mechanism is exact for that job (its accountant counts
every round or step). Across jobs and mechanisms the ledger adds them up (basic composition),
which is an upper bound. Adding update-level and sample-level epsilons is valid because
update-level DP bounds any change to the club's whole data, so it also bounds a single
member's loss; a member's total loss is therefore at most the sum. Deltas add up as well:
n jobs each at delta give n * delta, so pick the budget's delta well below 1 / members.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from fitfed.audit import GENESIS, ChainError, chain_record, verify_chain
from fitfed.config import SITE_CONFIG_FILE, PrivacyBudget, load_site_config

LEDGER_FILE = "fitfed_privacy_ledger.jsonl"

Mechanism = Literal["update_dp", "dp_sgd"]


class PrivacyBudgetExceeded(ValueError):
    """A round whose epsilon would take the club past its privacy budget; nothing was released."""


def ledger_path(workspace_root: Path) -> Path:
    """The club's ledger: ``<kit>/local/fitfed_privacy_ledger.jsonl``."""
    return workspace_root / "local" / LEDGER_FILE


def open_ledger(workspace_root: Path, site: str) -> PrivacyLedger | None:
    """The club's ledger, with the budget from its ``local/fitfed_site.yaml`` (None there: recorded, not limited).

    Returns None when the workspace has no ``local/`` folder, so there is nowhere the club keeps it.
    """
    if not (workspace_root / "local").is_dir():
        return None
    config = load_site_config(workspace_root)
    return PrivacyLedger(ledger_path(workspace_root), config.privacy_budget if config else None, site)


@dataclass(frozen=True)
class JobState:
    """What the ledger has already counted for one job and mechanism, so a restart continues from it.

    Args:
        steps: rounds (update-level DP) or optimizer steps (DP-SGD) counted so far.
        epsilon: the job's epsilon under this mechanism so far.
    """

    steps: int = 0
    epsilon: float = 0.0


@dataclass(frozen=True)
class Spend:
    """One round's release as the ledger records it.

    Args:
        job_id: the FLARE job.
        mechanism: "update_dp" (noised club update) or "dp_sgd" (noised per-sample gradients).
        round: the federated round, when known (for the record; the ledger counts ``steps_job``).
        epsilon_job: this job's epsilon under this mechanism once the round is released.
        delta: the delta ``epsilon_job`` is accounted at (the budget's delta, when there is a budget).
        noise_multiplier: the mechanism's noise multiplier.
        sample_rate: 1 for update-level DP; batch_size / rows for DP-SGD.
        steps_job: rounds or steps counted for this job once the round is released.
        run_job_id: the FLARE job that released the round, when it is not ``job_id``: a job resumed after a
            crash (``fitfed resume``) charges its training's first job, so its rounds continue that job's count.
    """

    job_id: str
    mechanism: Mechanism
    round: int | None
    epsilon_job: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps_job: int
    run_job_id: str | None = None


class PrivacyLedger:
    """A club's privacy spending across jobs, refusing any round that would exceed its budget.

    The chain is verified when the ledger is opened and again under a file lock before each
    append, so several jobs at one site share it safely. A ledger that fails verification is
    refused, never reset: resetting would forget epsilon already spent.

    Args:
        path: the ledger file (see :func:`ledger_path`); its folder must exist.
        budget: the club's budget; None records spending without limiting it.
        site: the club's site name, for messages.

    Raises:
        ChainError: the ledger was altered, truncated or reordered.

    Example:
        >>> ledger = PrivacyLedger(ledger_path(kit), PrivacyBudget(epsilon=8, delta=1e-5), "club_01")
        >>> ledger.charge(Spend("job-1", "update_dp", 0, 2.5, 1e-5, 1.5, 1.0, 1))
    """

    def __init__(self, path: Path, budget: PrivacyBudget | None, site: str):
        self.path = path
        self.budget = budget
        self.site = site
        self._read()

    def spent_total(self) -> float:
        """Epsilon spent over every job and mechanism: the sum of each one's latest epsilon."""
        return _total(self._read())

    def job_state(self, job_id: str, mechanism: Mechanism) -> JobState:
        """What this job has already spent under ``mechanism``."""
        return _job_state(self._read(), job_id, mechanism)

    def check(self, spend: Spend) -> None:
        """Refuse (and record the refusal) if ``spend`` would exceed the budget; record nothing otherwise.

        Raises:
            PrivacyBudgetExceeded: naming the budget, what is spent and what to do.
        """
        with self._locked() as (records, f):
            self._refuse_if_over(spend, records, f)

    def charge(self, spend: Spend) -> None:
        """Record ``spend`` if the budget allows it, before the round's result is released.

        Raises:
            PrivacyBudgetExceeded: the round would exceed the budget; a ``refused`` entry is recorded.
            ValueError: ``spend`` is at another delta than the budget, or lowers the job's epsilon.
        """
        if self.budget is not None and spend.delta != self.budget.delta:
            raise ValueError(
                f"spend.delta={spend.delta!r} differs from the budget's delta={self.budget.delta!r}: "
                "charge epsilon at the budget's delta"
            )
        with self._locked() as (records, f):
            before = _job_state(records, spend.job_id, spend.mechanism)
            if spend.epsilon_job < before.epsilon or spend.steps_job < before.steps:
                raise ValueError(
                    f"job {spend.job_id!r} ({spend.mechanism}): epsilon_job={spend.epsilon_job!r} and "
                    f"steps_job={spend.steps_job!r} go below what the ledger counted ({before}); "
                    "continue the job's accounting from job_state()"
                )
            self._refuse_if_over(spend, records, f)
            _append(f, records, {"event": "round_spent", **asdict(spend)})

    def _refuse_if_over(self, spend: Spend, records: list[dict[str, Any]], f: TextIO) -> None:
        if self.budget is None:
            return
        spent = _total(records)
        after = spent - _job_state(records, spend.job_id, spend.mechanism).epsilon + spend.epsilon_job
        if after <= self.budget.epsilon:
            return
        which = "the next round" if spend.round is None else f"round {spend.round}"
        reason = (
            f"site {self.site!r}: privacy budget exceeded. Budget: epsilon={self.budget.epsilon:g} at "
            f"delta={self.budget.delta:g}; already spent: epsilon={spent:.4g}; {which} of job "
            f"{spend.job_id!r} ({spend.mechanism}) would bring it to {after:.4g}. Nothing was released. Going on "
            f"is a federation decision: stop this club's part in the job, or raise privacy_budget.epsilon in "
            f"the kit's local/{SITE_CONFIG_FILE} deliberately."
        )
        refusal = {"event": "refused", "job_id": spend.job_id, "mechanism": spend.mechanism, "round": spend.round}
        _append(f, records, {**refusal, "epsilon_job": spend.epsilon_job, "spent_total": spent, "reason": reason})
        raise PrivacyBudgetExceeded(reason)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            return verify_chain(self.path)
        except ChainError as e:
            raise ChainError(
                f"site {self.site!r}: the privacy ledger is refused: {e}. It records epsilon already spent, so it "
                "must never be deleted or reset; restore it from the club's backup or investigate the change. "
                "Until then no privacy-spending job can run at this site."
            ) from None

    @contextmanager
    def _locked(self) -> Iterator[tuple[list[dict[str, Any]], TextIO]]:
        """The verified records and the ledger open for appending, under an exclusive lock."""
        with open(self.path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield self._read(), f
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _append(f: TextIO, records: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Append one chained line and make it durable before anything is released."""
    previous = records[-1]["hash"] if records else GENESIS
    chained = chain_record({"time": round(time.time(), 3), **record}, previous, len(records))
    f.write(json.dumps(chained) + "\n")
    f.flush()
    os.fsync(f.fileno())
    records.append(chained)


def _latest(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    spends = [r for r in records if r.get("event") == "round_spent"]
    return {(r["job_id"], r["mechanism"]): r for r in spends}


def _total(records: list[dict[str, Any]]) -> float:
    return float(sum(r["epsilon_job"] for r in _latest(records).values()))


def _job_state(records: list[dict[str, Any]], job_id: str, mechanism: str) -> JobState:
    latest = _latest(records).get((job_id, mechanism))
    return JobState() if latest is None else JobState(steps=latest["steps_job"], epsilon=latest["epsilon_job"])
