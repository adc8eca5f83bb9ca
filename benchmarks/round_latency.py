"""Seconds per round of the same FedAvg logistic regression on fitfed (NVFlare 2.9) and on Flower 1.41.

The task: synthetic churn clubs (``fitfed data synth``, seed 0), a logistic regression, 5 local SGD steps
of batch 32 at lr 0.1, updates weighted by training rows, every club in every round; both frameworks
run fitfed's own training code (``fitfed.client.train_round``). Two parts, in one run:

- **simulators**, at 4, 20 and 100 clients: fitfed's job in NVFlare's simulator (``benchmarks/flare_rounds.py``)
  with FLARE's periods, fitfed's defaults and fitfed's LAN profile (``fitfed.round_timing``), and Flower's
  simulation on Ray (``benchmarks/flower_rounds.py``, in ``.venv-flower``). NVFlare's simulator runs one
  process per client; a size that does not fit in this machine's memory is reported as such, not run.
- **real processes**: the test suite's provisioned localhost federation (server and 3 clubs as processes),
  FLARE's periods against fitfed's.

Reported: median seconds per round after the first, and the ratio fitfed / Flower at each size.

Run: ``fitfed bench round_latency`` (about 7 minutes on 2 cores; needs ``.venv-flower``, which ``make bench``
creates).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from benchmarks.flare_rounds import TIMINGS, fits_in_memory, job_settings, run_flare
from benchmarks.run_info import RESULTS_DIR, command, machine, write_results
from fitfed.datasets.churn import write_clubs
from fitfed.jobs import build_recipe, export_into, load_job_module
from fitfed.report import round_seconds

REPO = Path(__file__).resolve().parents[1]
FLOWER_PYTHON = REPO / ".venv-flower" / "bin" / "python"


class BenchSettings(BaseModel):
    """One run's settings (all recorded in the results)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: list[int] = [4, 20, 100]
    rounds: int = Field(default=8, ge=2)
    timings: list[str] = list(TIMINGS)
    flower_actors: int = Field(default=4, ge=1)  # Flower clients training at once (Ray processes)
    real_clubs: bool = True


def run_flower(data_dir: Path, clients: int, rounds: int, actors: int) -> dict[str, Any]:
    """Flower's run of the same task, in its own virtual environment; its last stdout line is the JSON result."""
    if not FLOWER_PYTHON.is_file():
        raise SystemExit(f"{FLOWER_PYTHON} is missing: `make bench` creates .venv-flower (Flower needs its own venv)")
    argv = [str(FLOWER_PYTHON), "-m", "benchmarks.flower_rounds", "--data", str(data_dir), "--clients", str(clients),
            "--rounds", str(rounds), "--local-steps", "5", "--batch-size", "32", "--lr", "0.1",
            "--actors", str(min(actors, clients))]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # never the main venv's
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=900)
    except BaseException:  # timeout or Ctrl-C: stop Ray's whole process group, not just the driver
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"Flower run with {clients} clients failed (exit {process.returncode}); see its stderr")
    time.sleep(3)  # Ray's processes take a moment to go after a clean exit
    return json.loads(out.strip().splitlines()[-1])


def run_simulators(settings: BenchSettings, root: Path) -> list[dict[str, Any]]:
    """Every size: fitfed with each timing, then Flower."""
    rows: list[dict[str, Any]] = []
    for clients in settings.clients:
        data_dir = root / f"clubs_{clients}"
        write_clubs(data_dir, clients, seed=0)
        fits, needed = fits_in_memory(clients)
        for timing in settings.timings:
            if not fits:
                rows.append({"framework": "fitfed (NVFlare simulator)", "timing": timing, "clients": clients,
                             "skipped": f"needs about {needed:.0f} GB (one process per simulated client)"})  # fmt: skip
                print(f"fitfed {timing} with {clients} clients: skipped, needs about {needed:.0f} GB", flush=True)
                continue
            row = run_flare(data_dir, root / f"ws_{clients}_{timing}", rounds=settings.rounds, timing=TIMINGS[timing])
            rows.append({**row, "timing": timing})
            print(f"fitfed {timing} with {clients} clients: {row['seconds_per_round']:.3f} s per round", flush=True)
        flower = run_flower(data_dir, clients, settings.rounds, settings.flower_actors)
        rows.append({**flower, "framework": "Flower (simulation)", "timing": "flower"})
        print(f"Flower with {clients} clients: {flower['seconds_per_round']:.3f} s per round", flush=True)
    return rows


def run_real(settings: BenchSettings, root: Path) -> list[dict[str, Any]]:
    """FLARE's periods against fitfed's on real processes: a provisioned server and 3 clubs on localhost."""
    sys.path.insert(0, str(REPO / "tests"))  # the test suite's local federation: kits, processes, clean stop
    from federation.conftest import running_federation

    module = load_job_module(REPO / "jobs" / "fedavg_churn.py")
    rows = []
    (root / "federation").mkdir()
    with running_federation(root / "federation") as federation, federation.session("lead@fed.example") as session:
        for timing in ("flare_defaults", "fitfed"):
            recipe = build_recipe(module, job_settings(3, settings.rounds, TIMINGS[timing]))
            job_id = session.submit_job(str(export_into(recipe, root / "jobs" / timing)))
            status = session.wait_for_job(job_id, timeout=600, poll_interval=1.0)["status"]
            result = Path(session.download_job_result(job_id, str(root / "results" / timing)))
            seconds = [round(s, 3) for s in round_seconds(result)]
            rows.append({"framework": "fitfed (real processes)", "timing": timing, "clients": 3, "status": status,
                         "round_seconds": seconds, "seconds_per_round": statistics.median(seconds[1:])})  # fmt: skip
            print(f"real federation, {timing}: {status}, {rows[-1]['seconds_per_round']:.3f} s per round", flush=True)
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each timing's seconds per round over Flower's (fitfed / Flower), at each size both ran."""
    flower = {r["clients"]: r["seconds_per_round"] for r in rows if r["timing"] == "flower"}
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["timing"] != "flower" and "seconds_per_round" in row and row["clients"] in flower:
            out.setdefault(row["timing"], {})[str(row["clients"])] = round(
                row["seconds_per_round"] / flower[row["clients"]], 2
            )
    return out


def markdown(payload: dict[str, Any]) -> str:
    """The results page: one table per part."""
    m, rows = payload["machine"], payload["simulators"]
    sizes = payload["settings"]["clients"]
    lines = [
        "# round_latency: fitfed (NVFlare) vs Flower, seconds per round",
        "",
        f"Generated by `{payload['command']}` in {payload['wall_seconds']:.0f} s on {m['cpu']} ({m['cores']} cores), "
        f"NVFlare {m['nvflare']}, Flower {payload.get('flower_version', '?')}, torch {m['torch']}.",
        "",
        "FedAvg of a logistic regression on synthetic churn clubs, 5 local steps, every client in every round; "
        f"median seconds per round over rounds 2 to {payload['settings']['rounds']} (round 1 includes start-up).",
        "",
        "## Simulators",
        "",
        "| set-up | " + " | ".join(f"{n} clients" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for timing in [*payload["settings"]["timings"], "flower"]:
        cells = []
        for n in sizes:
            row = next((r for r in rows if r["timing"] == timing and r["clients"] == n), None)
            if row is None:
                cells.append("")
            elif "skipped" in row:
                cells.append(f"does not fit: {row['skipped']}")
            else:
                ratio = payload["ratios"].get(timing, {}).get(str(n))
                cells.append(f"{row['seconds_per_round']:.3f}" + (f" ({ratio:.2f}× Flower)" if ratio else ""))
        label = "Flower 1.41 (Ray)" if timing == "flower" else f"fitfed, {timing.replace('_', ' ')} periods"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    memory = {r["clients"]: r["peak_memory_gb"] for r in rows if r.get("timing") == "fitfed" and "peak_memory_gb" in r}
    if memory:
        lines += ["", "fitfed's peak memory (all processes): "
                  + ", ".join(f"{n} clients {gb:.1f} GB" for n, gb in memory.items()) + "."]  # fmt: skip
    if payload["real"]:
        lines += ["", "## Real processes (provisioned server and 3 clubs on localhost)", "",
                  "| periods | seconds per round | job status |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {r['timing'].replace('_', ' ')} | {r['seconds_per_round']:.3f} | {r['status']} |"
                  for r in payload["real"]]  # fmt: skip
    lines += ["", *NOTES, ""]
    return "\n".join(lines)


NOTES = [
    "## Reading it",
    "",
    "- Periods: `flare defaults` is NVFlare 2.9 as shipped; `fitfed` is `RoundTiming()`, every fitfed job's "
    "default, safe over a WAN; `fitfed lan` is `RoundTiming.lan()`. See docs/round-timing.md for the trade-off.",
    "- Flower's simulation runs clients in a pool of Ray worker processes; NVFlare's simulator runs one process per "
    "client (about 0.6 GB each here), and with fewer processes than clients it swaps clients in and out, which "
    "costs seconds per client per round. Both frameworks train with the same fitfed code.",
    "- On 2 cores, many simulated clients compete for the CPU: beyond a handful, a round's time is mostly each "
    "client process's own work, not polling.",
]


def main(argv: list[str] | None = None) -> int:
    """Run both parts and write the results."""
    parser = argparse.ArgumentParser(prog="fitfed bench round_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    defaults = BenchSettings()
    parser.add_argument("--clients", type=int, nargs="+", default=defaults.clients)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--timings", nargs="+", choices=list(TIMINGS), default=defaults.timings)
    parser.add_argument("--flower-actors", type=int, default=defaults.flower_actors)
    parser.add_argument("--no-real", action="store_true", help="skip the real-process part")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for round_latency.{json,md}")
    args = parser.parse_args(argv)
    settings = BenchSettings(clients=args.clients, rounds=args.rounds, timings=args.timings,
                             flower_actors=args.flower_actors, real_clubs=not args.no_real)  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fitfed-bench-") as tmp:
        rows = run_simulators(settings, Path(tmp))
        real = run_real(settings, Path(tmp)) if settings.real_clubs else []
    flower_version = next((r.get("flwr_version") for r in rows if r["timing"] == "flower"), None)
    payload = {
        "benchmark": "round_latency", "command": command("round_latency", argv), "machine": machine(),
        "flower_version": flower_version, "settings": settings.model_dump(),
        "timings": {name: TIMINGS[name].model_dump() for name in settings.timings},
        "wall_seconds": round(time.perf_counter() - start, 1), "simulators": rows, "real": real,
        "ratios": ratios(rows),
    }  # fmt: skip
    json_path, md_path = write_results(args.out, "round_latency", payload, markdown(payload))
    print(f"wrote {json_path} and {md_path} in {payload['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
