"""Reading the per-round aggregation reports back: which clubs were left out or stood out, and how often.

Kept free of FLARE and numpy so the run recorder and the report reader can import it cheaply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REPORT_KEY = "fitfed_aggregation"  # where RobustAggregator puts its round report in the aggregated FLModel's meta


@dataclass(frozen=True)
class ClubRecord:
    """How one club's updates fared over a run.

    Attributes:
        club: the club (site) name.
        rounds: rounds in which it sent an update.
        rejected: rounds in which its update was left out entirely.
        suspect: rounds in which it was rejected for cause (NaN/Inf, wrong layout, or left out by a rule
            that kept most clubs, like Multi-Krum) or was an outlier; Krum leaving out all but one club
            each round is not, by itself, a cause.
        outlier: rounds in which its update was an outlier (far from the aggregate).
        clipped: rounds in which norm bounding scaled its update down.
        reason: the most frequent reason it was rejected, if ever.
    """

    club: str
    rounds: int
    rejected: int
    suspect: int
    outlier: int
    clipped: int
    reason: str | None

    @property
    def flagged(self) -> bool:
        """Suspect in more than half the rounds it took part in."""
        return self.suspect * 2 > self.rounds

    def describe(self) -> str:
        """One line for the job summary."""
        parts = []
        if self.rejected:
            parts.append(f"rejected in {self.rejected} of {self.rounds} rounds ({self.reason})")
        if self.outlier:
            parts.append(f"an outlier in {self.outlier} of {self.rounds} rounds")
        if self.clipped:
            parts.append(f"clipped in {self.clipped} of {self.rounds} rounds")
        return f"{self.club}: " + ("; ".join(parts) or f"used in all {self.rounds} rounds")


def club_records(reports: Sequence[Mapping[str, Any]]) -> list[ClubRecord]:
    """Per-club counts over a run's round reports (as written by RobustAggregator), sorted by club."""
    rounds, rejected, suspect, outlier, clipped = Counter(), Counter(), Counter(), Counter(), Counter()
    reasons: dict[str, Counter] = {}
    for report in reports:
        for club in set(report.get("clubs", [])) | set(report.get("rejected", {})):
            rounds[club] += 1
        suspects = set(report.get("outliers", [])) | set(_rejected_for_cause(report))
        suspect.update(suspects)
        for club, reason in report.get("rejected", {}).items():
            rejected[club] += 1
            reasons.setdefault(club, Counter())[_reason_kind(club, reason)] += 1
        outlier.update(report.get("outliers", []))
        clipped.update(report.get("clipped", {}).keys())
    return [
        ClubRecord(
            club,
            rounds[club],
            rejected[club],
            suspect[club],
            outlier[club],
            clipped[club],
            reasons[club].most_common(1)[0][0] if club in reasons else None,
        )  # fmt: skip
        for club in sorted(rounds)
    ]


def _rejected_for_cause(report: Mapping[str, Any]) -> list[str]:
    """Rejected clubs, except those a rule left out while keeping only a minority (Krum keeps one)."""
    kept_most = len(report.get("selected", [])) * 2 > len(report.get("clubs", []))
    return [c for c, reason in report.get("rejected", {}).items() if kept_most or not reason.startswith("not selected")]


def _reason_kind(club: str, reason: str) -> str:
    """A reason without the club's name and counts, so reasons from different rounds can be tallied."""
    if reason.startswith("not selected"):
        return reason
    if "NaN or Inf" in reason:
        return "NaN or Inf in its update"
    if "parameter" in reason:
        return "its parameters did not match the other clubs'"
    return reason.replace(repr(club), "the club")
