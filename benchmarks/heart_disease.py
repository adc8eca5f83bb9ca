"""FLamby's Fed-Heart-Disease benchmark, run on fitfed's real FLARE jobs, beside FLamby's published table.

The real four-hospital UCI data, with FLamby's split, per-hospital standardisation and logistic
regression (``fitfed data heart``). Each federated method is a fitfed job definition from ``jobs/``
with FLamby's settings (15 rounds of 100 local SGD steps, batch 4, updates weighted by training rows,
FLamby's per-strategy learning rates), run in NVFlare's simulator; the final global model is scored
by FLARE's global-model evaluation at every hospital. The baselines train in this process with
FLamby's centralised recipe (Adam, lr 0.001, batch 4, 50 epochs): pooled on all four training sets,
and local-only on each hospital's. Reported: mean-over-hospitals test accuracy, mean and standard
deviation over seeds, beside FLamby's published values.

Run: ``fitfed bench heart_disease`` (about 21 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.run_info import RESULTS_DIR, command, machine, write_results
from fitfed.config import TrainConfig
from fitfed.datasets.heart_disease import write_sites
from fitfed.jobs import JobSettings, ServerOptimizer, build_recipe, load_job_module, simulate
from fitfed.models import ModelConfig
from fitfed.preprocessing import SiteSplit
from fitfed.report import load_report
from fitfed.spec import load_spec
from fitfed.task import evaluate, load_site_data, make_model, train

JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
# FLamby's Table (mean-over-hospitals accuracy, 5 seeds); local-only ranges over the four hospitals.
PUBLISHED = {"pooled": 0.735, "fedavg": 0.685, "fedprox": 0.685, "scaffold": 0.684, "fedadam": 0.726,
             "fedyogi": 0.731}  # fmt: skip
PUBLISHED_LOCAL = (0.567, 0.722)
# Which job definition builds each algorithm's recipe (their build() takes any settings).
JOB_FILES = {"fedavg": "fedavg_heart_disease", "fedprox": "fedprox_churn", "scaffold": "scaffold_churn",
             "fedopt": "fedopt_churn"}  # fmt: skip


class Method(BaseModel):
    """One federated configuration: FLamby's, or one of fitfed's tuned ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: str
    learning_rate: float = Field(gt=0)
    fedprox_mu: float | None = None
    server_optimizer: ServerOptimizer | None = None
    published: float | None = None  # FLamby's value, for FLamby's own configurations


def _fedopt(name: str, client_lr: float, server_lr: float, published: float | None = None) -> Method:
    optimizer = ServerOptimizer(name=name, lr=server_lr, betas=(0.9, 0.999), eps=1e-8)  # type: ignore[arg-type]
    return Method(algorithm="fedopt", learning_rate=client_lr, server_optimizer=optimizer, published=published)


# FLamby's heart-disease strategy settings (its benchmark config: base lr 0.001 times each strategy's scaler).
# FLARE's SCAFFOLD has no server learning rate, so it runs at 1 where FLamby used 0.01.
FLAMBY = {
    "fedavg": Method(algorithm="fedavg", learning_rate=0.001, published=PUBLISHED["fedavg"]),
    "fedprox": Method(algorithm="fedprox", learning_rate=0.001, fedprox_mu=0.1, published=PUBLISHED["fedprox"]),
    "scaffold": Method(algorithm="scaffold", learning_rate=0.0001, published=PUBLISHED["scaffold"]),
    "fedadam": _fedopt("adam", 0.01, 0.01, PUBLISHED["fedadam"]),
    "fedyogi": _fedopt("yogi", 0.01, 0.01, PUBLISHED["fedyogi"]),
}
# fitfed's tuned candidates, fixed before the run: FLamby's FedAvg at lr 0.01 (its README's "about 0.72"), FedProx
# likewise, and FedYogi with a 3x server step. The best is picked on the same test sets (FLamby has no validation
# split either), so it is an optimistic estimate; every candidate's score is reported.
TUNED = {
    "fedavg_lr0.01": Method(algorithm="fedavg", learning_rate=0.01),
    "fedprox_lr0.01": Method(algorithm="fedprox", learning_rate=0.01, fedprox_mu=0.1),
    "fedyogi_slr0.03": _fedopt("yogi", 0.01, 0.03),
}
METHODS = {**FLAMBY, **TUNED}


class BenchSettings(BaseModel):
    """One run's settings (all recorded in the results)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: list[int] = [0, 1, 2, 3, 4]
    rounds: int = Field(default=15, ge=1)
    local_steps: int = Field(default=100, ge=1)
    batch_size: int = Field(default=4, ge=1)
    centralised_epochs: int = Field(default=50, ge=1)
    centralised_lr: float = Field(default=0.001, gt=0)
    methods: list[str] = list(METHODS)


def job_settings(settings: BenchSettings, method: Method, seed: int) -> JobSettings:
    """The heart-disease job's settings with ``method``'s algorithm and learning rates, and this seed."""
    base = load_job_module(JOBS_DIR / "fedavg_heart_disease.py").SETTINGS
    train_config = TrainConfig.model_validate({
        **dict(base.train), "algorithm": method.algorithm, "learning_rate": method.learning_rate,
        "local_steps": settings.local_steps, "batch_size": settings.batch_size, "seed": seed,
    })  # fmt: skip
    return JobSettings.model_validate({
        **dict(base), "num_rounds": settings.rounds, "train": train_config, "fedprox_mu": method.fedprox_mu,
        "server_optimizer": method.server_optimizer,
    })  # fmt: skip


def run_federated(settings: BenchSettings, name: str, seed: int, data_dir: Path, workspace: Path) -> dict[str, Any]:
    """One fitfed job in NVFlare's simulator; the final global model's accuracy at each hospital."""
    method = METHODS[name]
    job = load_job_module(JOBS_DIR / f"{JOB_FILES[method.algorithm]}.py")
    recipe = build_recipe(job, job_settings(settings, method, seed))
    tic = time.perf_counter()
    run_dir = simulate(recipe, data_dir=data_dir, sites=list(HOSPITALS), workspace=workspace)
    seconds = time.perf_counter() - tic
    report = load_report(run_dir)
    final = report.rounds.get(report.completed_rounds, {})
    if report.completed_rounds != settings.rounds or sorted(final) != sorted(HOSPITALS):
        raise RuntimeError(f"{name} seed {seed}: the job did not finish every round at every hospital ({run_dir})")
    per_hospital = {site: final[site]["accuracy"] for site in HOSPITALS}
    return _row(name, seed, per_hospital, seconds)


def run_centralised(settings: BenchSettings, hospitals: dict[str, SiteSplit], seed: int) -> list[dict[str, Any]]:
    """FLamby's baselines: one model on the pooled training sets, and one per hospital on its own."""
    train_sets = {"pooled": list(HOSPITALS), **{f"local_{h}": [h] for h in HOSPITALS}}
    rows = []
    for name, sources in train_sets.items():
        tic = time.perf_counter()
        model = _train_centralised(settings, [hospitals[h] for h in sources], seed)
        per_hospital = {h: evaluate(model, hospitals[h].x_test, hospitals[h].y_test)["accuracy"] for h in HOSPITALS}
        rows.append(_row(name, seed, per_hospital, time.perf_counter() - tic))
    return rows


def _train_centralised(settings: BenchSettings, parts: list[SiteSplit], seed: int) -> torch.nn.Module:
    pooled = SiteSplit(
        x_train=torch.cat([p.x_train for p in parts]), y_train=torch.cat([p.y_train for p in parts]),
        x_test=parts[0].x_test, y_test=parts[0].y_test, feature_names=parts[0].feature_names,
    )  # fmt: skip
    config = TrainConfig(task=load_spec("heart_disease"), model=ModelConfig(name="logreg"),
                         local_epochs=settings.centralised_epochs, batch_size=settings.batch_size,
                         optimizer="adam", learning_rate=settings.centralised_lr, seed=seed)  # fmt: skip
    model = make_model(config.model, pooled.num_features, seed=seed)
    train(model, pooled, config, round_seed=seed)
    return model


def _row(name: str, seed: int, per_hospital: dict[str, float], seconds: float) -> dict[str, Any]:
    return {"method": name, "seed": seed, "accuracy": statistics.fmean(per_hospital.values()),
            "per_hospital": per_hospital, "seconds": round(seconds, 2)}  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation over seeds of each method's mean-over-hospitals accuracy."""
    summary: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        scores = [r["accuracy"] for r in runs if r["method"] == name]
        method = METHODS.get(name)
        published = PUBLISHED.get(name) if method is None else method.published
        summary[name] = {
            "mean": statistics.fmean(scores), "std": statistics.pstdev(scores), "seeds": len(scores),
            "published": published, "tuned": name in TUNED,
            "seconds_per_run": statistics.fmean(r["seconds"] for r in runs if r["method"] == name),
        }  # fmt: skip
    federated = {k: v for k, v in summary.items() if k in METHODS}
    if federated:
        best = max(federated, key=lambda k: federated[k]["mean"])
        summary[best]["best_federated"] = True
    return summary


def markdown(payload: dict[str, Any]) -> str:
    """The results page: every method beside FLamby's published accuracy."""
    m, summary = payload["machine"], payload["summary"]
    lines = [
        "# heart_disease: FLamby's Fed-Heart-Disease on fitfed's FLARE jobs",
        "",
        f"Generated by `{payload['command']}` in {payload['wall_seconds']:.0f} s on {m['cpu']} ({m['cores']} cores), "
        f"NVFlare {m['nvflare']}, torch {m['torch']}; seeds {payload['settings']['seeds']}.",
        "",
        "Mean-over-hospitals test accuracy (mean ± standard deviation over seeds). Federated rows are fitfed's "
        "job definitions run in NVFlare's simulator with FLamby's settings; baselines train centrally with "
        "FLamby's recipe.",
        "",
        "| method | fitfed | FLamby published | difference | seconds per run |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        published = row["published"]
        label = f"{name} (tuned{', best' if row.get('best_federated') else ''})" if row["tuned"] else name
        if row.get("best_federated") and not row["tuned"]:
            label += " (best)"
        diff = f"{row['mean'] - published:+.3f}" if published is not None else ""
        shown = f"{published:.3f}" if published is not None else ""
        lines.append(f"| {label} | {row['mean']:.3f} ± {row['std']:.3f} | {shown} | {diff} | "
                     f"{row['seconds_per_run']:.1f} |")  # fmt: skip
    best = next((k for k, v in summary.items() if v.get("best_federated")), None)
    if best is not None and "pooled" in summary:
        ratio = summary[best]["mean"] / summary["pooled"]["mean"]
        lines += [
            "",
            f"Best federated configuration: **{best}**, {summary[best]['mean']:.3f}, which is {ratio:.3f}× "
            f"fitfed's own pooled model ({summary['pooled']['mean']:.3f}) and "
            f"{summary[best]['mean'] - PUBLISHED['pooled']:+.3f} against FLamby's published pooled 0.735.",
        ]
    lines += [
        "",
        f"FLamby's local-only models range from {PUBLISHED_LOCAL[0]} to {PUBLISHED_LOCAL[1]}. Targets: FedAvg "
        "within about 0.03 of 0.685, and the best federated configuration at 0.73 or more (pooled, 0.735, is the "
        "ceiling). The test sets are small (16 to 104 rows), so seeds differ by about ±0.03.",
        "",
        "The tuned candidates were fixed before the run, and the best of them is picked on the same test sets "
        "(FLamby has no validation split), so it is an optimistic estimate. FLARE's SCAFFOLD has no server "
        "learning rate: it runs at 1 where FLamby used 0.01.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every method and baseline over the seeds, and write the results."""
    parser = argparse.ArgumentParser(prog="fitfed bench heart_disease", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    defaults = BenchSettings()
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--local-steps", type=int, default=defaults.local_steps)
    parser.add_argument("--centralised-epochs", type=int, default=defaults.centralised_epochs)
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), default=defaults.methods,
                        help="federated methods to run (default: all; none runs only the baselines)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for heart_disease.{json,md}")
    args = parser.parse_args(argv)
    settings = BenchSettings(seeds=args.seeds, rounds=args.rounds, local_steps=args.local_steps,
                             centralised_epochs=args.centralised_epochs, methods=args.methods)  # fmt: skip
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fitfed-bench-") as tmp:
        data_dir = Path(tmp) / "heart"
        write_sites(data_dir)
        spec = load_spec("heart_disease")
        hospitals = {h: load_site_data(data_dir / f"{h}.csv", spec) for h in HOSPITALS}
        for seed in settings.seeds:
            runs += run_centralised(settings, hospitals, seed)
        total = len(settings.methods) * len(settings.seeds)
        for i, (name, seed) in enumerate((n, s) for n in settings.methods for s in settings.seeds):
            row = run_federated(settings, name, seed, data_dir, Path(tmp) / f"{name}_{seed}")
            runs.append(row)
            print(f"[{i + 1}/{total}] {name} seed {seed}: accuracy {row['accuracy']:.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)  # fmt: skip
    payload = {
        "benchmark": "heart_disease", "command": command("heart_disease", argv), "machine": machine(),
        "settings": settings.model_dump(), "methods": {n: METHODS[n].model_dump() for n in settings.methods},
        "wall_seconds": round(time.perf_counter() - start, 1), "summary": summarize(runs), "runs": runs,
    }  # fmt: skip
    json_path, md_path = write_results(args.out, "heart_disease", payload, markdown(payload))
    print(f"wrote {json_path} and {md_path} in {payload['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
