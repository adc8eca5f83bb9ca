"""Crafted job results in the simulator's layout, for tests that need no federation (and for timing exports).

A crafted result holds what a real one does: a hash-chained run record with every round's
site metrics and the final evaluation, the final/best/per-round state dicts of a real fitfed
model with its sidecar, the job's configs (copied from jobs/fedavg_churn), and optionally
FLARE audit.log files in FLARE's own line format. ``crashed_and_resumed`` and ``refused_resume``
write a job whose server crashed and its continuations (see databricks_bridge.lineage).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch

from fitfed.audit import GENESIS, chain_record
from fitfed.config import TrainConfig
from fitfed.models import build_model
from fitfed.server.run_record import model_sidecar

JOB_FOLDER = Path(__file__).resolve().parents[2] / "jobs" / "fedavg_churn"
CLUBS = ("club_01", "club_02", "club_03")
START = 1_790_000_000.0


def crafted_job(
    root: Path,
    *,
    rounds: int = 3,
    clubs: tuple[str, ...] = CLUBS,
    finished: bool = True,
    quality: float = 0.0,
    seed: int = 0,
    he: bool = False,
) -> Path:
    """Write a job result to ``root`` (a simulator job workspace) and return ``root``."""
    run_dir = root / "server" / "simulate_job"
    record = run_dir / "fitfed"
    (record / "rounds").mkdir(parents=True)
    config_dir = run_dir / "app_server" / "config"
    config_dir.mkdir(parents=True)
    for name in ("fitfed_train.json", "config_fed_server.json", "config_fed_client.json"):
        shutil.copy(JOB_FOLDER / "app" / "config" / name, config_dir / name)
    (run_dir / "meta.json").write_text(json.dumps({"name": "fedavg_churn", "min_clients": len(clubs)}))
    config = TrainConfig.model_validate_json((config_dir / "fitfed_train.json").read_text())
    if he:
        train = json.loads((config_dir / "fitfed_train.json").read_text())
        (config_dir / "fitfed_train.json").write_text(json.dumps({**train, "he": {"enabled": True}}))
    events = _events(rounds, clubs, finished, quality, seed + (1000 if he else 0))
    for r in range(1, rounds + 1):
        torch.save(_weights(config, seed + r), record / "rounds" / f"global_model_round_{r}.pt")
    if finished:
        sidecar = model_sidecar(config, job_id="simulate_job", job_name="fedavg_churn", rounds=rounds,
                                sites=sorted(clubs))  # fmt: skip
        if he:
            sidecar["encrypted"] = True
        for name in ("global_model", "best_global_model"):
            torch.save(_weights(config, seed + rounds), record / f"{name}.pt")
            (record / f"{name}.json").write_text(json.dumps(sidecar, indent=2))
    write_events(record / "events.jsonl", events)
    return root


def running_snapshot(finished: Path, dest: Path, *, rounds_done: int) -> Path:
    """A copy of a finished crafted job as it was mid-round ``rounds_done``: a prefix of its run record."""
    shutil.copytree(finished, dest)
    record = dest / "server" / "simulate_job" / "fitfed"
    lines = (record / "events.jsonl").read_text().splitlines(keepends=True)
    ended = [i for i, line in enumerate(lines) if '"round_completed"' in line][rounds_done - 1]
    (record / "events.jsonl").write_text("".join(lines[: ended + 3]))  # + round_started and one update of the next
    for path in [*record.glob("*global_model.*"), *record.glob("rounds/*.pt")]:
        if path.suffix == ".json" or "_round_" not in path.name or int(path.stem.rsplit("_", 1)[1]) > rounds_done:
            path.unlink()
    return dest


def record_dir(root: Path) -> Path:
    """The crafted job's fitfed/ folder."""
    return root / "server" / "simulate_job" / "fitfed"


def write_events(path: Path, events: list[dict[str, Any]]) -> None:
    """Write events as a fresh hash chain."""
    previous = GENESIS
    with open(path, "w") as f:
        for sequence, event in enumerate(events):
            chained = chain_record(event, previous, sequence)
            f.write(json.dumps(chained) + "\n")
            previous = chained["hash"]


def flare_audit_lines(job_id: str, site: str, count: int, start: datetime | None = None) -> str:
    """FLARE audit.log lines in both of its forms (nvflare/fuel/sec/audit.py), one admin command first."""
    when = start or datetime(2026, 3, 1, 9, 30, 0, 250000)
    lines = [f"[E:{uuid.uuid4()}][T:{when}][U:admin@fitfed.example][A:submit_job fedavg_churn]"]
    for i in range(1, count):
        ref = uuid.uuid4()
        lines.append(
            f"[E:{uuid.uuid4()}][R:{ref}][T:{when + timedelta(seconds=i)}][S:public][J:{job_id}]"
            f'[A:train#{uuid.uuid4()}]sent task to client "{site}"'
        )
    return "\n".join(lines) + "\n"


def _events(rounds: int, clubs: tuple[str, ...], finished: bool, quality: float, seed: int) -> list[dict[str, Any]]:
    clock = iter(START + i * 0.5 for i in range(10**6))
    events: list[dict[str, Any]] = [{"time": next(clock), "event": "run_started", "job_id": "simulate_job",
                                     "min_updates": len(clubs), "nonce": uuid.uuid4().hex}]  # fmt: skip
    for r in range(rounds):
        events.append({"time": next(clock), "event": "round_started", "round": r})
        for i, club in enumerate(clubs):
            events.append({"time": next(clock), "event": "site_update", "round": r, "site": club, "accepted": True,
                           "metrics": _metrics(r, i, quality), "weight": 10})  # fmt: skip
        events.append({"time": next(clock), "event": "round_completed", "round": r, "sites": sorted(clubs)})
    if finished:
        for model in ("SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"):
            for i, club in enumerate(clubs):
                events.append({"time": next(clock), "event": "global_evaluation", "model": model, "site": club,
                               "metrics": _metrics(rounds, i, quality)})  # fmt: skip
        events.append({"time": next(clock), "event": "run_finished", "models": ["global_model", "best_global_model"]})
    return events


def _metrics(round_number: int, club: int, quality: float) -> dict[str, float]:
    accuracy = min(0.99, 0.6 + 0.01 * round_number + 0.02 * club + quality)
    return {"loss": 0.7 - 0.003 * round_number, "accuracy": accuracy, "roc_auc": min(0.99, accuracy + 0.05)}


def _weights(config: TrainConfig, seed: int) -> dict[str, torch.Tensor]:
    return build_model(config.model, len(config.task.encoded_feature_names()), seed=seed).state_dict()


CRASHED_JOB = "3f2a9c4e-0d1b-4c5e-8f60-7a8b9c0d1e2f"
CONTINUATION_JOB = "9b8c7d6e-5f4a-4b3c-9d2e-1f0a2b3c4d5e"
REFUSED_JOB = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"


def crashed_and_resumed(
    root: Path, *, rounds: int = 5, crashed_in: int = 2, clubs: tuple[str, ...] = CLUBS
) -> tuple[Path, Path]:
    """A job whose server crashed in round ``crashed_in``, and the continuation that resumed it and finished.

    Both are written as `nvflare job download` writes them (``<job id>/{meta.json,workspace/}``), the
    way fitfed's server writes them (fitfed.server.resume): the crashed record has rounds before
    ``crashed_in`` completed and round ``crashed_in`` started with all but one club's update in,
    and no run_finished. The continuation's record starts with run_resumed, redoes round
    ``crashed_in`` and runs to the end; it carries the crashed record in ``fitfed/lineage/`` and
    every round's model. Scores say where they come from: the crashed job's completed rounds
    score as ``_metrics`` does, its lost round 0.3 lower, the continuation's rounds 0.1 higher.
    """
    clock = iter(START + i * 0.5 for i in range(10**6))
    crashed_run = _job_result(root / CRASHED_JOB, CRASHED_JOB)
    events: list[dict[str, Any]] = [_run_started(next(clock), CRASHED_JOB, clubs)]
    for r in range(crashed_in):
        events += _round(clock, r, clubs, quality=0.0)
    events += _round(clock, crashed_in, clubs[:-1], quality=-0.3, completed=False)
    write_events(crashed_run / "fitfed" / "events.jsonl", events)
    config = TrainConfig.model_validate_json((crashed_run / "app_server" / "config" / "fitfed_train.json").read_text())
    for r in range(1, crashed_in + 1):
        torch.save(_weights(config, r), crashed_run / "fitfed" / "rounds" / f"global_model_round_{r}.pt")

    resumed_run = _job_result(root / CONTINUATION_JOB, CONTINUATION_JOB, resumed_from=CRASHED_JOB)
    lineage = resumed_run / "fitfed" / "lineage" / CRASHED_JOB
    lineage.mkdir(parents=True)
    shutil.copy(crashed_run / "fitfed" / "events.jsonl", lineage / "events.jsonl")
    shutil.copytree(crashed_run / "fitfed" / "rounds", resumed_run / "fitfed" / "rounds", dirs_exist_ok=True)
    clock = iter(START + 3600 + i * 0.5 for i in range(10**6))
    crashed_head = json.loads((crashed_run / "fitfed" / "events.jsonl").read_text().splitlines()[-1])["hash"]
    events = [_run_started(next(clock), CONTINUATION_JOB, clubs)]
    events.append({"time": next(clock), "event": "run_resumed", "resumed_from": CRASHED_JOB,
                   "lineage_root": CRASHED_JOB, "rounds_completed": crashed_in, "next_round": crashed_in,
                   "num_rounds": rounds, "checkpoint_sha256": "c4" * 32,
                   "resumed_from_events_hash": crashed_head})  # fmt: skip
    for r in range(crashed_in, rounds):
        events += _round(clock, r, clubs, quality=0.1)
    events += _final_evaluation(clock, rounds, clubs, quality=0.1)
    write_events(resumed_run / "fitfed" / "events.jsonl", events)
    for r in range(crashed_in + 1, rounds + 1):
        torch.save(_weights(config, r), resumed_run / "fitfed" / "rounds" / f"global_model_round_{r}.pt")
    _final_models(resumed_run / "fitfed", config, CONTINUATION_JOB, rounds, clubs)
    return crashed_run.parent, resumed_run.parent


def refused_resume(root: Path, *, clubs: tuple[str, ...] = CLUBS) -> Path:
    """A continuation whose server refused to resume: run_started, resume_refused, and the end of the run.

    Its persistor's initial weights were still written as ``global_model.pt``, as FLARE's persistor
    keeps them; they are no model of the training.
    """
    clock = iter(START + 7200 + i * 0.5 for i in range(10**6))
    run_dir = _job_result(root / REFUSED_JOB, REFUSED_JOB, resumed_from=CRASHED_JOB)
    reason = (
        f"cannot resume job {CRASHED_JOB}: the configuration changed: this job's training config, workflow or "
        "number of rounds differs. Nothing was trained; no round was started over."
    )
    events = [
        _run_started(next(clock), REFUSED_JOB, clubs),
        {"time": next(clock), "event": "resume_refused", "resumed_from": CRASHED_JOB, "reason": reason},
        {"time": next(clock), "event": "run_finished", "models": ["global_model"]},
    ]
    write_events(run_dir / "fitfed" / "events.jsonl", events)
    config = TrainConfig.model_validate_json((run_dir / "app_server" / "config" / "fitfed_train.json").read_text())
    _final_models(run_dir / "fitfed", config, REFUSED_JOB, 0, clubs, names=("global_model",))
    return run_dir.parent


def _job_result(root: Path, job_id: str, *, resumed_from: str | None = None) -> Path:
    """An empty downloaded job: meta.json, and the server's run folder with the job's configs; returns the latter."""
    run_dir = root / "workspace"
    (run_dir / "fitfed" / "rounds").mkdir(parents=True)
    config_dir = run_dir / "app_server" / "config"
    config_dir.mkdir(parents=True)
    for name in ("fitfed_train.json", "config_fed_server.json", "config_fed_client.json"):
        shutil.copy(JOB_FOLDER / "app" / "config" / name, config_dir / name)
    meta: dict[str, Any] = {"name": "fedavg_churn", "job_id": job_id, "min_clients": len(CLUBS)}
    if resumed_from:
        plan = {"resumed_from": resumed_from, "lineage_root": resumed_from}
        (config_dir / "fitfed_resume.json").write_text(json.dumps(plan))
        meta.update(fitfed_resumed_from=resumed_from, fitfed_lineage_root=resumed_from)
    (root / "meta.json").write_text(json.dumps(meta))
    return run_dir


def _run_started(time: float, job_id: str, clubs: tuple[str, ...]) -> dict[str, Any]:
    return {"time": time, "event": "run_started", "job_id": job_id, "min_updates": len(clubs)}


def _round(
    clock: Iterator[float], r: int, clubs: tuple[str, ...], *, quality: float, completed: bool = True
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [{"time": next(clock), "event": "round_started", "round": r}]
    for i, club in enumerate(clubs):
        events.append({"time": next(clock), "event": "site_update", "round": r, "site": club, "accepted": True,
                       "metrics": _metrics(r, i, quality), "weight": 10})  # fmt: skip
    if completed:
        events.append({"time": next(clock), "event": "round_completed", "round": r, "sites": sorted(clubs)})
    return events


def _final_evaluation(
    clock: Iterator[float], rounds: int, clubs: tuple[str, ...], *, quality: float
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for model in ("SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"):
        for i, club in enumerate(clubs):
            events.append({"time": next(clock), "event": "global_evaluation", "model": model, "site": club,
                           "metrics": _metrics(rounds, i, quality)})  # fmt: skip
    events.append({"time": next(clock), "event": "run_finished", "models": ["global_model", "best_global_model"]})
    return events


def _final_models(
    record: Path,
    config: TrainConfig,
    job_id: str,
    rounds: int,
    clubs: tuple[str, ...],
    names: tuple[str, ...] = ("global_model", "best_global_model"),
) -> None:
    sidecar = model_sidecar(config, job_id=job_id, job_name="fedavg_churn", rounds=rounds, sites=sorted(clubs))
    for name in names:
        torch.save(_weights(config, rounds), record / f"{name}.pt")
        (record / f"{name}.json").write_text(json.dumps(sidecar, indent=2))
