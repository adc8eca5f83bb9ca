"""Per-round metrics from the run record: each club's series and their mean, complete rounds only.

Round r is the global model after r rounds (as in ``fitfed report``): sites score the model they
receive at the start of round r, and the final model is scored after the last round. A round's
points are exported once every site's score for it is in: when the round ended, or for the final
model when the run finished. An export while the job runs therefore never logs half a round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from databricks_bridge.audit_rows import EPSILON_METRICS

FINAL_EVALUATION_MODEL = "SRV_FL_global_model.pt"  # what FLARE's global-model evaluation calls the final model
GLOBAL_PREFIX = "global"


@dataclass
class RoundPoint:
    """The metrics of the global model after ``round`` rounds, by site."""

    round: int
    time_ms: int
    sites: dict[str, dict[str, float]] = field(default_factory=dict)

    def mean(self, metric: str) -> float | None:
        """Unweighted mean over the sites that reported ``metric`` (as ``fitfed report``)."""
        values = [m[metric] for m in self.sites.values() if _is_number(m.get(metric))]
        return sum(values) / len(values) if values else None

    def metric_names(self) -> list[str]:
        """Every numeric metric some site reported."""
        return sorted({k for m in self.sites.values() for k, v in m.items() if _is_number(v)})

    def mlflow_metrics(self) -> dict[str, float]:
        """``global/<metric>`` means and ``<site>/<metric>`` series; ε is a budget, so its global is the max."""
        out: dict[str, float] = {}
        for name in self.metric_names():
            if name in EPSILON_METRICS:
                out[f"{GLOBAL_PREFIX}/{name}_max"] = max(m[name] for m in self.sites.values() if name in m)
            else:
                out[f"{GLOBAL_PREFIX}/{name}"] = self.mean(name)  # type: ignore[assignment]
        for site, metrics in sorted(self.sites.items()):
            out.update({f"{site}/{k}": float(v) for k, v in metrics.items() if _is_number(v)})
        return out


def complete_rounds(events: list[dict[str, Any]]) -> list[RoundPoint]:
    """The rounds whose every site score is in, in order."""
    points: dict[int, RoundPoint] = {}
    done: set[int] = set()
    completed = 0
    for event in events:
        kind, time_ms = event.get("event"), int(float(event.get("time", 0)) * 1000)
        if kind == "site_update" and "metrics" in event:
            point = points.setdefault(event["round"], RoundPoint(event["round"], time_ms))
            point.sites[event["site"]] = event["metrics"]
        elif kind == "round_completed":
            done.add(event["round"])
            completed = event["round"] + 1
        elif kind == "global_evaluation" and event.get("model") == FINAL_EVALUATION_MODEL and "metrics" in event:
            point = points.setdefault(-1, RoundPoint(-1, time_ms))
            point.sites[event["site"]] = event["metrics"]
        elif kind == "run_finished" and -1 in points:
            final = points.pop(-1)
            points[completed] = RoundPoint(completed, final.time_ms, final.sites)
            done.add(completed)
    return [points[r] for r in sorted(done) if r in points and r >= 0]


def rounds_completed(events: list[dict[str, Any]]) -> int:
    """How many rounds the run record says ended."""
    return sum(1 for e in events if e.get("event") == "round_completed")


def final_validation(events: list[dict[str, Any]], metric: str) -> float | None:
    """The final model's ``metric``, averaged over the sites that evaluated it; None before the run finished."""
    points = complete_rounds(events)
    finished = any(e.get("event") == "run_finished" for e in events)
    if not finished or not points or points[-1].round != rounds_completed(events):
        return None
    return points[-1].mean(metric)


def epsilon_spent(events: list[dict[str, Any]]) -> float | None:
    """The largest ε any site reported (a site's ε only grows), or None for a job without DP metrics."""
    values = [
        float(e["metrics"][k])
        for e in events
        if isinstance(e.get("metrics"), dict)
        for k in EPSILON_METRICS
        if _is_number(e["metrics"].get(k))
    ]
    return max(values) if values else None


def plot_rounds(points: list[RoundPoint], path: Path, title: str) -> Path:
    """A PNG of each metric by round: every club's series thin, the mean over clubs bold."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in threads and on servers
    import matplotlib.pyplot as plt

    names = sorted({n for p in points for n in p.metric_names()})
    figure, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=False):
        sites = sorted({s for p in points for s, m in p.sites.items() if name in m})
        for site in sites:
            series = [(p.round, p.sites[site][name]) for p in points if name in p.sites.get(site, {})]
            axis.plot(*zip(*series, strict=True), linewidth=1, alpha=0.7, label=site)
        means = [(p.round, p.mean(name)) for p in points if p.mean(name) is not None]
        if means:
            axis.plot(*zip(*means, strict=True), linewidth=2.5, color="black", label="mean")
        axis.set_title(name)
        axis.set_xlabel("round (global model after r rounds)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
