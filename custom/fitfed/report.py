"""Reading a finished (or running) fitfed job's record and showing it as tables.

Round r's row is the global model after r rounds, scored by each site on its own held-out
split: sites score the model they receive at the start of a round, and the final model is
scored by the global-model evaluation that follows the last round.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from fitfed.aggregation.summary import ClubRecord, club_records
from fitfed.server.run_record import EVENTS_FILE, FINAL_MODEL, RECORD_DIR

METRICS = ("loss", "accuracy", "roc_auc")
_FINAL_MODEL_NAME = "SRV_FL_global_model.pt"  # what FLARE's global-model evaluation calls the final model


@dataclass
class RunReport:
    """Per-site metrics of the global model after each round, and where the models were written."""

    record_dir: Path
    sites: list[str] = field(default_factory=list)
    rounds: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    failures: dict[int, list[str]] = field(default_factory=dict)
    completed_rounds: int = 0
    finished: bool = False
    aborted: str | None = None
    aggregation: list[dict] = field(default_factory=list)  # robust aggregators' round reports, in order

    @property
    def final_model(self) -> Path:
        """The final global model's state dict (its sidecar is the same name with .json)."""
        return self.record_dir / f"{FINAL_MODEL}.pt"

    def mean(self, round_number: int, metric: str) -> float | None:
        """Unweighted mean over sites (FLamby's 'mean over hospitals'); None when no site reported it."""
        values = [m[metric] for m in self.rounds.get(round_number, {}).values() if metric in m]
        return sum(values) / len(values) if values else None


def find_record_dir(path: Path) -> Path:
    """The ``fitfed/`` record folder under a simulator workspace, a downloaded job, or the folder itself."""
    if (path / EVENTS_FILE).is_file():
        return path
    matches = sorted(path.rglob(f"{RECORD_DIR}/{EVENTS_FILE}"))
    if not matches:
        raise FileNotFoundError(f"{path}: no fitfed run record ({RECORD_DIR}/{EVENTS_FILE}) found below it")
    return matches[0].parent


def load_report(path: Path) -> RunReport:
    """Parse a run record's events into a :class:`RunReport`."""
    record_dir = find_record_dir(path)
    report = RunReport(record_dir=record_dir)
    for line in (record_dir / EVENTS_FILE).read_text().splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        kind = event["event"]
        if kind == "site_update":
            _add_site_metrics(report, event["round"], event)
        elif kind == "round_completed":
            report.completed_rounds = event["round"] + 1
        elif kind == "global_evaluation" and event.get("model") == _FINAL_MODEL_NAME:
            _add_site_metrics(report, report.completed_rounds, event)
        elif kind == "aggregation_report":
            report.aggregation.append(event)
        elif kind == "round_aborted":
            report.aborted = event["reason"]
        elif kind == "run_finished":
            report.finished = True
    return report


def _add_site_metrics(report: RunReport, round_number: int, event: dict) -> None:
    site = event["site"]
    if site not in report.sites:
        report.sites.append(site)
    if "metrics" in event:
        report.rounds.setdefault(round_number, {})[site] = event["metrics"]
    else:
        report.failures.setdefault(round_number, []).append(site)


def round_seconds(path: Path) -> list[float]:
    """Each completed round's wall seconds, from its ``round_started`` to its ``round_completed``, in order."""
    events = [json.loads(line) for line in (find_record_dir(path) / EVENTS_FILE).read_text().splitlines() if line]
    started = {e["round"]: e["time"] for e in events if e["event"] == "round_started"}
    return [e["time"] - started[e["round"]] for e in events
            if e["event"] == "round_completed" and e["round"] in started]  # fmt: skip


def aggregation_records(report: RunReport) -> list[ClubRecord]:
    """Per-club counts of rejected, outlier and clipped updates over the run (empty without a robust aggregator)."""
    return club_records(report.aggregation)


def format_table(report: RunReport) -> str:
    """A plain-text table: mean loss/accuracy/AUC over sites, then each site's AUC, one row per round."""
    sites = sorted(report.sites)
    header = ["round", "mean loss", "mean acc", "mean AUC"] + [f"{s} AUC" for s in sites]
    rows = [header]
    for r in sorted(report.rounds):
        site_metrics = report.rounds[r]
        cells = [str(r)] + [_fmt(report.mean(r, m)) for m in METRICS]
        cells += [_fmt(site_metrics.get(s, {}).get("roc_auc")) if s in site_metrics else "failed" for s in sites]
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
