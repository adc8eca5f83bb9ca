"""What privacy costs: per-round time and bytes per update, and accuracy under DP-SGD at epsilon 1, 3 and 8.

Three parts, written to ``benchmarks/results/privacy.{json,md}``:

- **rounds**: the demo churn job (3 synthetic clubs) on a real federation on localhost: a provisioned
  server and three clubs as processes (the test suite's harness), run plain, in the clubs' ``strict``
  scope (update-level DP), with DP-SGD, and with HE. Reported: median seconds per round (rounds after the
  first, which includes start-up), as a ratio to plain in the same run.

- **cost**: one round of the demo churn job (3 synthetic clubs, MLP with 32 hidden units, one epoch of
  Adam) computed in this process for four set-ups: plain, update-level DP (the ``strict`` scope's filter),
  DP-SGD (Opacus) and HE (CKKS with FLARE's default parameters: each club encrypts its weighted update,
  the server adds ciphertexts, each club decrypts the new global model). Reported: seconds per round
  (median over rounds) and bytes per club update, each as a ratio to plain measured in the same run.
  FLARE's polling (about 0.25 s per round with fitfed's round timing) comes on top in a real federation and is the
  same for every set-up, so these ratios are the upper bound of what privacy adds to a real round.
- **accuracy**: FLamby's Fed-Heart-Disease task (real four-hospital data, logistic regression), FedAvg in
  this process with DP-SGD at each hospital, for target epsilon 1, 3 and 8 at delta 1e-5 over the whole
  job (every step counted by Opacus's RDP accountant), against no DP; mean-over-hospitals accuracy.

Run: ``fitfed bench privacy`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from opacus.accountants.utils import get_noise_multiplier
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.run_info import command, machine
from fitfed.client import state_dict_of, train_round
from fitfed.config import DPSGDConfig, TrainConfig
from fitfed.datasets.churn import write_clubs
from fitfed.datasets.heart_disease import write_sites
from fitfed.jobs import build_recipe, export_into, load_job_module
from fitfed.models import ModelConfig
from fitfed.preprocessing import SiteSplit
from fitfed.privacy.accounting import epsilon_spent
from fitfed.privacy.dp_sgd import DPTrainer
from fitfed.privacy.update_dp import privatize
from fitfed.report import round_seconds
from fitfed.spec import load_spec
from fitfed.task import evaluate, load_site_data, make_model

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
JOBS_DIR = REPO / "jobs"
SETUPS = ("plain", "dp_filter", "dp_sgd", "he")
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
DELTA = 1e-5


class BenchSettings(BaseModel):
    """One run's settings (all recorded in the results)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    federation_rounds: int = Field(default=6, ge=2)
    cost_rounds: int = Field(default=10, ge=1)
    epsilons: list[float] = [1.0, 3.0, 8.0]
    seeds: list[int] = [0, 1, 2, 3, 4]
    rounds: int = Field(default=20, ge=1)
    local_steps: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=0.1, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)


def _serialized_bytes(update: dict[str, Any]) -> int:
    buffer = io.BytesIO()
    torch.save({k: torch.as_tensor(v) for k, v in update.items()}, buffer)
    return buffer.getbuffer().nbytes


def _he_context() -> ts.Context:
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40])
    context.global_scale = 2**40
    return context


def cost_round(setup: str, clubs: list[SiteSplit], config: TrainConfig, global_params: dict[str, torch.Tensor],
               round_number: int, context: ts.Context, dp: list[DPTrainer | None]) -> tuple[float, int, dict]:  # noqa: E501  # fmt: skip
    """One round for ``setup``: every club's work and the server's aggregation; returns seconds, bytes, new model."""
    tic = time.perf_counter()
    model = make_model(config.model, clubs[0].num_features, seed=config.seed)
    updates, weights, sizes = [], [], []
    for club, club_dp in zip(clubs, dp, strict=True):
        model.load_state_dict(global_params)
        received = FLModel(params=global_params, params_type=ParamsType.FULL, current_round=round_number)
        sent = train_round(model, club, config, received, None, club_dp)
        diff = {k: (v - global_params[k]).numpy() for k, v in state_dict_of(model).items()}
        if setup == "dp_filter":
            diff, _ = privatize(diff, clip_norm=1.0, noise_std=1.0)
        steps = float(sent.meta["NUM_STEPS_CURRENT_ROUND"])
        if setup == "he":  # as FLARE's HEModelEncryptor: weigh by steps, encrypt every layer, serialize
            payload = {k: ts.ckks_vector(context, (v.ravel() * steps).tolist()).serialize() for k, v in diff.items()}
            sizes.append(sum(len(b) for b in payload.values()))
            updates.append(payload)
        else:
            sizes.append(_serialized_bytes(diff))
            updates.append(diff)
        weights.append(steps)
    total = sum(weights)
    if setup == "he":  # the server adds ciphertexts; each club then decrypts the new global model
        summed = {}
        for name in updates[0]:
            vectors = [ts.ckks_vector_from(context, u[name]) for u in updates]
            acc = vectors[0]
            for vector in vectors[1:]:
                acc = acc + vector
            summed[name] = (acc * (1.0 / total)).serialize()
        for _ in clubs:
            mean = {k: np.asarray(ts.ckks_vector_from(context, v).decrypt()) for k, v in summed.items()}
    else:
        mean = {k: sum(w * u[k] for w, u in zip(weights, updates, strict=True)) / total for k in updates[0]}
    new = {k: v + torch.as_tensor(np.reshape(mean[k], v.shape), dtype=v.dtype) for k, v in global_params.items()}
    return time.perf_counter() - tic, int(statistics.mean(sizes)), new


def run_cost(settings: BenchSettings, data_dir: Path) -> dict[str, dict[str, float]]:
    """Median seconds per round and mean bytes per update for each set-up, and their ratios to plain."""
    write_clubs(data_dir, 3, seed=0)
    base = load_job_module(JOBS_DIR / "fedavg_churn.py").SETTINGS.train
    clubs = [load_site_data(data_dir / f"club_{i:02d}.csv", base.task) for i in (1, 2, 3)]
    context = _he_context()
    out: dict[str, dict[str, float]] = {}
    for setup in SETUPS:
        config = base
        if setup == "dp_sgd":
            config = base.model_copy(update={"dp": DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0)})
        dp = [DPTrainer(config, len(c.y_train), seed=i) if setup == "dp_sgd" else None for i, c in enumerate(clubs)]
        params = state_dict_of(make_model(config.model, clubs[0].num_features, seed=config.seed))
        _, _, params = cost_round(setup, clubs, config, params, 0, context, dp)  # warm-up: imports, caches, hooks
        seconds, sizes = [], []
        for round_number in range(1, settings.cost_rounds + 1):
            took, size, params = cost_round(setup, clubs, config, params, round_number, context, dp)
            seconds.append(took)
            sizes.append(size)
            print(f"cost {setup} round {round_number}/{settings.cost_rounds}: {took:.3f} s", flush=True)
        out[setup] = {"seconds_per_round": statistics.median(seconds), "bytes_per_update": statistics.mean(sizes)}
    for row in out.values():
        row["time_ratio"] = row["seconds_per_round"] / out["plain"]["seconds_per_round"]
        row["bytes_ratio"] = row["bytes_per_update"] / out["plain"]["bytes_per_update"]
    return out


def run_federation_rounds(settings: BenchSettings, root: Path) -> dict[str, dict[str, float]]:
    """Seconds per round of the demo job on real processes, for each set-up, with ratios to plain."""
    sys.path.insert(0, str(REPO / "tests"))  # the test suite's local federation: kits, processes, clean stop
    from federation.conftest import running_federation

    base = load_job_module(JOBS_DIR / "fedavg_churn.py")
    jobs = {
        "plain": (base, {}, None),
        "dp_filter": (base, {}, "strict"),
        "dp_sgd": (base, {"dp": DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0)}, None),
        "he": (load_job_module(JOBS_DIR / "fedavg_he_churn.py"), {}, None),
    }
    out: dict[str, dict[str, float]] = {}
    (root / "federation").mkdir()
    with running_federation(root / "federation") as federation, federation.session("lead@fed.example") as session:
        for setup, (module, train_update, scope) in jobs.items():
            settings_ = module.SETTINGS.model_copy(
                update={
                    "num_rounds": settings.federation_rounds,
                    "train": module.SETTINGS.train.model_copy(update=train_update),
                }
            )
            folder = export_into(build_recipe(module, settings_), root / "jobs" / setup)
            if scope:
                meta = json.loads((folder / "meta.json").read_text())
                (folder / "meta.json").write_text(json.dumps({**meta, "scope": scope}))
            job_id = session.submit_job(str(folder))
            status = session.wait_for_job(job_id, timeout=600, poll_interval=1.0)["status"]
            result = Path(session.download_job_result(job_id, str(root / "results" / setup)))
            seconds = round_seconds(result)[1:]  # round 0 includes start-up
            out[setup] = {"status": status, "seconds_per_round": statistics.median(seconds), "rounds": len(seconds)}
            print(f"federation {setup}: {status}, {out[setup]['seconds_per_round']:.2f} s per round", flush=True)
    for row in out.values():
        row["time_ratio"] = row["seconds_per_round"] / out["plain"]["seconds_per_round"]
    return out


def heart_config(settings: BenchSettings, seed: int, dp: DPSGDConfig | None) -> TrainConfig:
    """FLamby-style Fed-Heart-Disease training (logistic regression, SGD), with DP-SGD when ``dp`` is set."""
    return TrainConfig(task=load_spec("heart_disease"), model=ModelConfig(name="logreg"), algorithm="fedavg",
                       local_steps=settings.local_steps, batch_size=settings.batch_size, optimizer="sgd",
                       learning_rate=settings.learning_rate, seed=seed, dp=dp)  # fmt: skip


def run_accuracy_one(settings: BenchSettings, hospitals: list[SiteSplit], epsilon: float | None, seed: int) -> dict:
    """FedAvg over the four hospitals; each hospital's noise is set so the whole job spends ``epsilon`` there."""
    steps = settings.rounds * settings.local_steps
    configs, trainers, achieved = [], [], []
    for i, hospital in enumerate(hospitals):
        dp = None
        if epsilon is not None:
            rate = min(1.0, settings.batch_size / len(hospital.y_train))
            sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=DELTA, sample_rate=rate, steps=steps,
                                         accountant="rdp")  # fmt: skip
            dp = DPSGDConfig(noise_multiplier=sigma, max_grad_norm=settings.max_grad_norm, target_delta=DELTA)
        config = heart_config(settings, seed, dp)
        configs.append(config)
        trainers.append(DPTrainer(config, len(hospital.y_train), seed=seed * 10 + i) if dp else None)
    model = make_model(configs[0].model, hospitals[0].num_features, seed=seed)
    params = state_dict_of(model)
    for round_number in range(settings.rounds):
        results = []
        for hospital, config, trainer in zip(hospitals, configs, trainers, strict=True):
            model.load_state_dict(params)
            received = FLModel(params=params, params_type=ParamsType.FULL, current_round=round_number)
            sent = train_round(model, hospital, config, received, None, trainer)
            results.append((float(sent.meta["NUM_STEPS_CURRENT_ROUND"]), state_dict_of(model)))
        total = sum(w for w, _ in results)
        params = {k: sum(w * p[k] for w, p in results) / total for k in params}
    for trainer in trainers:
        if trainer is not None:
            achieved.append(trainer.epsilon(DELTA))
    model.load_state_dict(params)
    per_hospital = {
        name: evaluate(model, h.x_test, h.y_test)["accuracy"] for name, h in zip(HOSPITALS, hospitals, strict=True)
    }
    return {
        "epsilon_target": epsilon, "seed": seed, "accuracy": float(np.mean(list(per_hospital.values()))),
        "per_hospital": per_hospital, "epsilon_spent_max": max(achieved) if achieved else None,
        "noise_multipliers": [c.dp.noise_multiplier for c in configs if c.dp],
    }  # fmt: skip


def run_accuracy(settings: BenchSettings, data_dir: Path) -> list[dict]:
    """Every (epsilon, seed) run on the real four hospitals, no DP first."""
    write_sites(data_dir)
    spec = load_spec("heart_disease")
    hospitals = [load_site_data(data_dir / f"{name}.csv", spec) for name in HOSPITALS]
    runs = []
    for epsilon in [None, *settings.epsilons]:
        for seed in settings.seeds:
            run = run_accuracy_one(settings, hospitals, epsilon, seed)
            print(f"accuracy eps={epsilon} seed={seed}: {run['accuracy']:.3f}", flush=True)
            runs.append(run)
    return runs


def summarize(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and spread of accuracy per privacy level, strongest privacy last."""
    summary = {}
    keys = {str(r["epsilon_target"]) for r in runs}
    for key in sorted(keys, key=lambda k: float("inf") if k == "None" else float(k)):
        values = [r["accuracy"] for r in runs if str(r["epsilon_target"]) == key]
        summary["no DP" if key == "None" else f"epsilon {float(key):g}"] = {
            "mean": float(np.mean(values)), "std": float(np.std(values)), "runs": len(values)
        }  # fmt: skip
    return summary


def markdown(payload: dict[str, Any]) -> str:
    """The results page."""
    m, s = payload["machine"], payload["settings"]
    lines = [
        "# Privacy benchmark", "",
        f"Generated by `{payload['command']}` in {payload['wall_seconds']:.0f} s on {m['cpu']} ({m['cores']} cores); "
        f"Python {m['python']}, torch {m['torch']}, NVFlare {m['nvflare']}.", "",
        "## Seconds per round on a real federation (demo churn job, server and 3 clubs as processes)", "",
        "| set-up | seconds / round | × plain | job status |", "|---|---|---|---|",
        *[f"| {k} | {r['seconds_per_round']:.2f} | {r['time_ratio']:.2f} | {r['status']} |"
          for k, r in payload["federation"].items()],
        "", f"Median over rounds 2 to {s['federation_rounds']} (round 1 includes start-up), with fitfed's "
        "round timing (docs/round-timing.md). dp_filter is the plain job run in the clubs' `strict` scope "
        "(clip 1.0, noise 1.0).", "",
        "## Compute per round (the same job, 3 clubs, computed in one process, no FLARE)", "",
        "| set-up | seconds / round | × plain | bytes / update | × plain |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for setup, row in payload["cost"].items():
        lines.append(f"| {setup} | {row['seconds_per_round']:.3f} | {row['time_ratio']:.2f} | "
                     f"{row['bytes_per_update']:,.0f} | {row['bytes_ratio']:.1f} |")  # fmt: skip
    lines += [
        "", f"Median over {s['cost_rounds']} rounds after a warm-up round. "
        "Targets: HE at most 1.5× plain per round, DP-SGD at most 2×. "
        "FLARE's polling (about 0.25 s per round with fitfed's round timing) is added to every set-up in a real "
        "federation.", "",
        "## Accuracy under DP-SGD (heart_disease, 4 real hospitals)", "",
        f"FedAvg, logistic regression, {s['rounds']} rounds of {s['local_steps']} local steps "
        f"(batch {s['batch_size']}, lr {s['learning_rate']}), clip {s['max_grad_norm']}; each hospital's noise "
        f"multiplier is chosen so the whole job spends the target epsilon at delta {DELTA:g} "
        f"(Opacus RDP, every step counted); seeds {s['seeds']}.", "",
        "| privacy | mean-over-hospitals accuracy |", "|---|---|",
    ]  # fmt: skip
    for label, row in payload["accuracy_summary"].items():
        lines.append(f"| {label} | {row['mean']:.3f} ± {row['std']:.3f} |")
    lines += ["", "Target: at least 0.70 at epsilon 1.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every part and write the results."""
    parser = argparse.ArgumentParser(prog="fitfed bench privacy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    defaults = BenchSettings()
    parser.add_argument("--federation-rounds", type=int, default=defaults.federation_rounds)
    parser.add_argument("--no-federation", action="store_true", help="skip the real-process part (smoke tests)")
    parser.add_argument("--cost-rounds", type=int, default=defaults.cost_rounds)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--local-steps", type=int, default=defaults.local_steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    parser.add_argument("--epsilons", type=float, nargs="+", default=defaults.epsilons)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for privacy.json and privacy.md")
    args = parser.parse_args(argv)
    settings = BenchSettings(federation_rounds=args.federation_rounds,
                             cost_rounds=args.cost_rounds, rounds=args.rounds, local_steps=args.local_steps,
                             seeds=args.seeds, epsilons=args.epsilons)  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fitfed-bench-") as tmp:
        federation = {} if args.no_federation else run_federation_rounds(settings, Path(tmp))
        cost = run_cost(settings, Path(tmp) / "clubs")
        runs = run_accuracy(settings, Path(tmp) / "heart")
    payload = {
        "benchmark": "privacy", "command": command("privacy", argv),
        "machine": machine(), "settings": settings.model_dump(), "wall_seconds": round(time.perf_counter() - start, 1),
        "federation": federation, "cost": cost, "accuracy_summary": summarize(runs), "accuracy_runs": runs,
        "dp_filter_epsilon_per_round": epsilon_spent(1.0, 1.0, 1, DELTA),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "privacy.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "privacy.md").write_text(markdown(payload))
    print(f"wrote {args.out / 'privacy.json'} and privacy.md in {payload['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
