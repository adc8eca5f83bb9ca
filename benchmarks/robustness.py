"""Robust aggregation benchmark: heart_disease split into 20 clients, 20% attackers, FedAvg vs robust rules.

Each hospital of the UCI heart_disease data is split into 5 clients (see :mod:`benchmarks.splits`);
a seeded 20% of the 20 clients attack (sign flip x10, sign flip x1, Gaussian noise, label flip,
or none); every aggregator trains FLamby's Fed-Heart-Disease logistic regression (100 local SGD
steps of batch 4, learning rate 0.001) for 30 rounds; the final global model is scored on each
hospital's test split and averaged over hospitals. Training and aggregation are fitfed's own
code, run in one process (:mod:`benchmarks.federation`).

Run from the repository root (about 9 minutes on 2 cores)::

    fitfed bench robustness                              # writes benchmarks/results/robustness.{json,md}
    fitfed bench robustness --rounds 2 --seeds 0 --local-steps 2 --out /tmp/smoke   # a quick check
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from attack_harness.poison import AttackConfig
from benchmarks.federation import Club, run_federation
from benchmarks.report import markdown
from benchmarks.run_info import command, machine
from benchmarks.splits import Hospital, split_hospitals
from fitfed.aggregation.config import parse_aggregator
from fitfed.aggregation.summary import club_records
from fitfed.config import TrainConfig
from fitfed.datasets.heart_disease import write_sites
from fitfed.models import ModelConfig
from fitfed.spec import load_spec
from fitfed.task import evaluate, make_model

METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"method": "fedavg"},
    "fedavg_norm_bound": {"method": "fedavg", "norm_bound": {"median_multiple": 2.0}},
    "median": {"method": "median"},
    "trimmed_mean": {"method": "trimmed_mean", "trim_fraction": 0.2},
    "krum": {"method": "krum", "num_faulty": 4},
    "multikrum": {"method": "multikrum", "num_faulty": 4},
}
ATTACKS: dict[str, dict[str, Any]] = {
    "none": {"kind": "none"},
    "sign_flip_x10": {"kind": "sign_flip", "scale": 10},
    "sign_flip_x1": {"kind": "sign_flip", "scale": 1},
    "gaussian": {"kind": "gaussian", "noise_std": 1.0},
    "label_flip": {"kind": "label_flip"},
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


class BenchSettings(BaseModel):
    """One benchmark run's settings (all recorded in the results)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(default=30, ge=1)
    seeds: list[int] = [0, 1, 2, 3, 4]
    clients_per_hospital: int = Field(default=5, ge=1)
    attacker_fraction: float = Field(default=0.2, ge=0, lt=0.5)
    local_steps: int = Field(default=100, ge=1)
    batch_size: int = Field(default=4, ge=1)
    learning_rate: float = Field(default=0.001, gt=0)
    split_seed: int = 0
    methods: list[str] = list(METHODS)
    attacks: list[str] = list(ATTACKS)


def train_config(settings: BenchSettings, seed: int) -> TrainConfig:
    """FLamby's Fed-Heart-Disease training, as in jobs/fedavg_heart_disease.py, with this run's seed."""
    return TrainConfig(task=load_spec("heart_disease"), model=ModelConfig(name="logreg"), algorithm="fedavg",
                       local_steps=settings.local_steps, batch_size=settings.batch_size, optimizer="sgd",
                       learning_rate=settings.learning_rate, seed=seed)  # fmt: skip


def choose_attackers(names: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded ``fraction`` of the clients (rounded to the nearest whole client), sorted."""
    count = round(fraction * len(names))
    return sorted(np.random.default_rng(seed).choice(names, size=count, replace=False).tolist())


@functools.lru_cache(maxsize=1)
def _hospitals(data_dir: str, clients_per_hospital: int, split_seed: int) -> tuple[Hospital, ...]:
    return tuple(split_hospitals(Path(data_dir), load_spec("heart_disease"), clients_per_hospital, split_seed))


def run_one(settings: BenchSettings, data_dir: str, method: str, attack: str, seed: int) -> dict[str, Any]:
    """Train one (method, attack, seed) federation and score its final global model."""
    torch.set_num_threads(1)  # the models are tiny; threads only contend with the other worker
    hospitals = _hospitals(data_dir, settings.clients_per_hospital, settings.split_seed)
    names = [f"{h.name}_{i + 1}" for h in hospitals for i in range(len(h.clients))]
    attackers = [] if attack == "none" else choose_attackers(names, settings.attacker_fraction, seed)
    poison = AttackConfig(**ATTACKS[attack], seed=seed)
    clubs = [Club(name, data, poison if name in attackers else None)
             for name, data in zip(names, [c for h in hospitals for c in h.clients], strict=True)]  # fmt: skip
    config = train_config(settings, seed)
    result = run_federation(clubs, config, parse_aggregator(METHODS[method]), settings.rounds)
    model = make_model(config.model, clubs[0].data.num_features, seed=seed)
    model.load_state_dict(result.params)
    accuracy = {h.name: evaluate(model, h.x_test, h.y_test)["accuracy"] for h in hospitals}
    flagged = [r.club for r in club_records(result.reports) if r.flagged]
    return {
        "method": method, "attack": attack, "seed": seed, "attackers": attackers,
        "accuracy": float(np.mean(list(accuracy.values()))), "per_hospital": accuracy,
        "seconds": round(result.seconds, 2),
        "aggregation_ms_per_round": round(1000 * float(np.mean(result.aggregation_seconds)), 3),
        "flagged": flagged, "attackers_flagged": len(set(flagged) & set(attackers)),
        "honest_flagged": len(set(flagged) - set(attackers)),
    }  # fmt: skip


def run_all(settings: BenchSettings, data_dir: Path, workers: int) -> list[dict[str, Any]]:
    """Every (method, attack, seed), on ``workers`` processes; results in a fixed order."""
    tasks = [(m, a, s) for s in settings.seeds for a in settings.attacks for m in settings.methods]
    if workers <= 1:
        return [run_one(settings, str(data_dir), *task) for task in tasks]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, settings, str(data_dir), *task) for task in tasks]
        return [future.result() for future in futures]


def summarize(settings: BenchSettings, results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard deviation over seeds of each (method, attack)'s accuracy, plus its cost."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for method in settings.methods:
        for attack in settings.attacks:
            runs = [r for r in results if r["method"] == method and r["attack"] == attack]
            acc = [r["accuracy"] for r in runs]
            summary.setdefault(method, {})[attack] = {
                "mean": round(float(np.mean(acc)), 4), "std": round(float(np.std(acc)), 4), "n": len(acc),
                "seconds": round(float(np.mean([r["seconds"] for r in runs])), 2),
                "aggregation_ms_per_round": round(float(np.mean([r["aggregation_ms_per_round"] for r in runs])), 3),
                "attackers_flagged": int(sum(r["attackers_flagged"] for r in runs)),
                "attackers": int(sum(len(r["attackers"]) for r in runs)),
                "honest_flagged": int(sum(r["honest_flagged"] for r in runs)),
                "per_hospital": {h: round(float(np.mean([r["per_hospital"][h] for r in runs])), 4)
                                 for h in runs[0]["per_hospital"]},
            }  # fmt: skip
    return summary


def check_targets(summary: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """The issue's targets: every robust rule >= 0.70 under sign flip x10, and within 0.02 of FedAvg with no attack."""
    checks = []
    robust = [m for m in ("median", "trimmed_mean", "krum", "multikrum") if m in summary]  # the four rules
    for method in robust:
        attacked = summary[method].get("sign_flip_x10")
        if attacked:
            checks.append({"method": method, "target": "accuracy >= 0.70 under sign_flip_x10",
                           "value": attacked["mean"], "met": attacked["mean"] >= 0.70})  # fmt: skip
        clean, baseline = summary[method].get("none"), summary.get("fedavg", {}).get("none")
        if clean and baseline:
            gap = round(baseline["mean"] - clean["mean"], 4)
            checks.append({"method": method, "target": "within 0.02 of FedAvg with no attack",
                           "value": gap, "met": gap <= 0.02})  # fmt: skip
    return checks


def write_results(out_dir: Path, payload: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``robustness.json`` and ``robustness.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "robustness.json", out_dir / "robustness.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown(payload))
    return json_path, md_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitfed bench robustness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    defaults = BenchSettings()
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    parser.add_argument("--local-steps", type=int, default=defaults.local_steps)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=defaults.methods)
    parser.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=defaults.attacks)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for robustness.json and .md")
    parser.add_argument("--render", type=Path, help="only rewrite the summary and markdown of this results JSON")
    return parser


def render(json_path: Path) -> tuple[Path, Path]:
    """Recompute the summary, targets and markdown of a finished run from its runs (no training)."""
    payload = json.loads(json_path.read_text())
    settings = BenchSettings.model_validate(payload["settings"])
    payload["summary"] = summarize(settings, payload["runs"])
    payload["targets"] = check_targets(payload["summary"])
    return write_results(json_path.parent, payload)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results."""
    args = _parser().parse_args(argv)
    if args.render:
        print("rewrote {} and {}".format(*render(args.render)))
        return 0
    settings = BenchSettings(rounds=args.rounds, seeds=args.seeds, local_steps=args.local_steps,
                             methods=args.methods, attacks=args.attacks)  # fmt: skip
    start, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fitfed-bench-") as tmp:
        write_sites(Path(tmp))
        results = run_all(settings, Path(tmp), args.workers)
    summary = summarize(settings, results)
    payload = {
        "benchmark": "robustness", "command": command("robustness", argv),
        "machine": {**machine(), "workers": args.workers, "load_average_before_after": [load_before, os.getloadavg()]},
        "settings": settings.model_dump(),
        "methods": {m: METHODS[m] for m in settings.methods}, "attacks": {a: ATTACKS[a] for a in settings.attacks},
        "wall_seconds": round(time.perf_counter() - start, 1), "summary": summary,
        "targets": check_targets(summary), "runs": results,
    }  # fmt: skip
    json_path, md_path = write_results(args.out, payload)
    print(f"wrote {json_path} and {md_path} in {payload['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
