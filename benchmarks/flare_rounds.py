"""One timed run of fitfed's FedAvg job in NVFlare's simulator: seconds per round and peak memory.

The job is ``jobs/fedavg_churn.py`` with a logistic regression, 5 local SGD steps of batch 32 at lr 0.1 and
updates weighted by training rows: the task ``benchmarks/flower_rounds.py`` runs on Flower. Seconds per
round come from the server's run record (round started to round completed), median over the rounds
after the first, which includes start-up. Peak memory is the largest sum of resident memory over this
process and every process it started (simulator, server, one process per simulated club), sampled
twice a second; shared pages count once per process, so it overstates a little.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, build_recipe, load_job_module, simulate
from fitfed.models import ModelConfig
from fitfed.report import round_seconds
from fitfed.round_timing import RoundTiming

JOB_FILE = Path(__file__).resolve().parents[1] / "jobs" / "fedavg_churn.py"
# Measured here: a simulated club's process holds about 0.6 GB (torch, NVFlare, Opacus, pandas), plus ~1.5 GB base.
GB_PER_SIMULATED_CLUB = 0.6
GB_BASE = 1.5

# Both ends of the trade-off in docs/round-timing.md.
TIMINGS = {
    "flare_defaults": RoundTiming.flare_defaults(),
    "fitfed": RoundTiming(),
    "fitfed_lan": RoundTiming.lan(),
}


def job_settings(clubs: int, rounds: int, timing: RoundTiming, local_steps: int = 5) -> JobSettings:
    """The benchmark's FedAvg logistic regression for ``clubs`` clubs, every club in every round."""
    base = load_job_module(JOB_FILE).SETTINGS
    train = TrainConfig.model_validate({
        **dict(base.train), "model": ModelConfig(name="logreg"), "local_epochs": None, "local_steps": local_steps,
        "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.1, "weight_by": "rows", "seed": 0,
    })  # fmt: skip
    return JobSettings.model_validate({**dict(base), "num_rounds": rounds, "min_clients": clubs,
                                       "min_updates": clubs, "train": train, "timing": timing})  # fmt: skip


def fits_in_memory(threads: int) -> tuple[bool, float]:
    """Whether ``threads`` simulated clubs at once fit in the memory available now, and the estimate in GB."""
    needed = GB_BASE + threads * GB_PER_SIMULATED_CLUB
    return needed < psutil.virtual_memory().available / 1e9, needed


def run_flare(data_dir: Path, workspace: Path, *, rounds: int, timing: RoundTiming,
              threads: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the job once, one simulated club per CSV in ``data_dir``; ``threads`` clubs at a time (default all)."""
    sites = sorted(p.stem for p in data_dir.glob("*.csv"))
    module = load_job_module(JOB_FILE)
    recipe = build_recipe(module, job_settings(len(sites), rounds, timing))
    with _PeakMemory() as memory:
        tic = time.perf_counter()
        run_dir = simulate(recipe, data_dir=data_dir, sites=sites, workspace=workspace, threads=threads)
        wall = time.perf_counter() - tic
    seconds = [round(s, 3) for s in round_seconds(run_dir)]
    if len(seconds) != rounds:
        raise RuntimeError(f"{len(sites)} clubs: {len(seconds)} of {rounds} rounds completed ({run_dir})")
    return {
        "framework": "fitfed (NVFlare simulator)", "clients": len(sites), "threads": threads or len(sites),
        "rounds": rounds, "round_seconds": seconds, "seconds_per_round": statistics.median(seconds[1:]),
        "first_round_seconds": seconds[0], "wall_seconds": round(wall, 1), "peak_memory_gb": round(memory.peak_gb, 2),
    }  # fmt: skip


class _PeakMemory:
    """Samples the resident memory of this process and all its descendants until the block ends."""

    def __init__(self, period: float = 0.5):
        self.period, self.peak_gb = period, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # it ended between listing and reading
                    continue
            self.peak_gb = max(self.peak_gb, total / 1e9)
            self._stop.wait(self.period)
