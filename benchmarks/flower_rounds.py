# ruff: noqa: E402  (Flower and Ray read their telemetry switches when imported: they are set before the imports)
"""Per-round latency of fitfed's FedAvg logistic regression on Flower, for comparison with NVFlare.

Every client trains exactly as a fitfed site does under FLARE: the same spec, CSV validation and split
(:func:`fitfed.task.load_site_data`), the same seeded model (:func:`fitfed.task.make_model`), and each round
:func:`fitfed.task.evaluate` of the received model followed by :func:`fitfed.client.train_round`, weighted by the
site's training rows. Only the transport differs: a Flower 1.41 ``ServerApp`` (the message-API
:class:`flwr.serverapp.strategy.FedAvg`, every client in every round) and ``ClientApp``, run by
:func:`flwr.simulation.run_simulation` on the Ray backend.

It runs in its own virtual environment, ``.venv-flower``, because Flower cannot share the main one: flwr 1.41 needs
``protobuf<7`` and the main lock pins protobuf 7 (NVFlare itself accepts either). Install it with::

    python3.11 -m venv .venv-flower
    .venv-flower/bin/pip install -c benchmarks/flower.lock -e ".[flower]"

and run it from the repository root (it is never installed), with one ``<club>.csv`` per client in ``DIR``::

    .venv/bin/fitfed data synth --clubs 20 --out /tmp/churn20
    .venv-flower/bin/python -m benchmarks.flower_rounds --data /tmp/churn20 --clients 20 --rounds 8

Logs go to stderr; the last line on stdout is one JSON object with the timings (see :func:`main`).
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here; Flower's exit would wait on it
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning; there is no GPU

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import flwr
import psutil
import ray
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fitfed.client import train_round
from fitfed.config import TrainConfig
from fitfed.models import ModelConfig
from fitfed.preprocessing import SiteSplit
from fitfed.spec import load_spec
from fitfed.task import evaluate, load_site_data, make_model

WEIGHT_KEY = "num-examples"  # FedAvg's weighting key: the site's training rows (its test rows when evaluating)
REPO_ROOT = Path(__file__).resolve().parents[1]
# Each Ray actor is a Python process that imports torch, NVFlare's client and Flower: 20 of them took about 5 GB.
ACTOR_MEMORY_BYTES = 300 * 2**20

# ---------------------------------------------------------------------------------------------------------------
# Client side: runs in Ray's actor processes. This module must be imported there as ``benchmarks.flower_rounds``
# (not ``__main__``), so the per-process cache of sites below lives across rounds; see the ``__main__`` block.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Site:
    """One client's data, model and training settings."""

    data: SiteSplit
    model: torch.nn.Module
    config: TrainConfig


def train_config(task: str, local_steps: int, batch_size: int, learning_rate: float, seed: int) -> TrainConfig:
    """The TrainConfig a fitfed FedAvg job with these settings sends its sites (weighted by training rows)."""
    return TrainConfig(
        task=load_spec(task),
        model=ModelConfig(name="logreg"),
        algorithm="fedavg",
        local_steps=local_steps,
        batch_size=batch_size,
        optimizer="sgd",
        learning_rate=learning_rate,
        seed=seed,
        weight_by="rows",
    )


def client_csvs(data_dir: Path) -> list[Path]:
    """The clients' CSVs in ``data_dir``, sorted by name: client (partition) ``i`` reads the ``i``-th."""
    return sorted(data_dir.glob("*.csv"))


@cache
def load_sites(
    data_dir: str, num_sites: int, task: str, local_steps: int, batch_size: int, lr: float, seed: int
) -> tuple[Site, ...]:
    """Load every client's data and model, once per process.

    Ray hands each node's message to whichever actor is idle, so an actor plays different sites in different
    rounds. Each actor therefore loads them all on its first message (in round 1): later rounds never load data,
    as a FLARE client loads its own once per job.
    """
    config = train_config(task, local_steps, batch_size, lr, seed)
    sites = []
    for path in client_csvs(Path(data_dir))[:num_sites]:
        data = load_site_data(path, config.task)
        sites.append(Site(data=data, model=make_model(config.model, data.num_features, seed=seed), config=config))
    return tuple(sites)


def site_for(message: Message, context: Context) -> Site:
    """The site this message's node plays, with the received global model loaded into its model."""
    settings = message.content["config"]
    sites = load_sites(
        str(settings["data-dir"]),
        int(context.node_config["num-partitions"]),
        str(settings["task"]),
        int(settings["local-steps"]),
        int(settings["batch-size"]),
        float(settings["lr"]),
        int(settings["seed"]),
    )
    site = sites[int(context.node_config["partition-id"])]
    site.model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    return site


client_app = ClientApp()


@client_app.train()
def client_train(message: Message, context: Context) -> Message:
    """One round at a site, as ``fitfed.client.main`` does it: score the received model, train, send the update."""
    site = site_for(message, context)
    metrics = evaluate(site.model, site.data.x_test, site.data.y_test)
    # FLARE numbers rounds from 0 and Flower from 1: the same round seeds as the FLARE job.
    current_round = int(message.content["config"]["server-round"]) - 1
    received = FLModel(params={}, params_type=ParamsType.FULL, current_round=current_round)
    update = train_round(site.model, site.data, site.config, received, scaffold=None)
    reply_metrics = MetricRecord(
        {
            WEIGHT_KEY: int(update.meta["NUM_STEPS_CURRENT_ROUND"]),  # training rows, as weight_by="rows"
            "train_loss": float(update.meta["train_loss"]),
            "loss": metrics["loss"],
            "accuracy": metrics["accuracy"],
        }
    )
    content = RecordDict({"arrays": ArrayRecord(update.params), "metrics": reply_metrics})
    return Message(content=content, reply_to=message)


@client_app.evaluate()
def client_evaluate(message: Message, context: Context) -> Message:
    """Score the final global model on the site's test rows (once, after the timed rounds)."""
    site = site_for(message, context)
    metrics = evaluate(site.model, site.data.x_test, site.data.y_test)
    reply_metrics = MetricRecord(
        {WEIGHT_KEY: len(site.data.y_test), "loss": metrics["loss"], "accuracy": metrics["accuracy"]}
    )
    return Message(content=RecordDict({"metrics": reply_metrics}), reply_to=message)


# ---------------------------------------------------------------------------------------------------------------
# Server side: runs in a thread of this process.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Wall-clock stamps the server thread leaves for :func:`main`."""

    first_round_started: float | None = None  # time.time(), to compare with the process's start
    round_seconds: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, timing each round from ``configure_train`` to the end of ``aggregate_train``.

    Args:
        timings: where the round times go.
        num_clients: replies every round must have; fewer fails the run rather than averaging fewer sites.
    """

    def __init__(self, timings: Timings, num_clients: int):
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,  # the sites score each received model inside their train step, as under FLARE
            min_train_nodes=num_clients,
            min_available_nodes=num_clients,
            weighted_by_key=WEIGHT_KEY,
        )
        self.timings = timings
        self.num_clients = num_clients
        self._round_started = 0.0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Stamp the round's start, then sample every node."""
        self._round_started = time.perf_counter()
        if self.timings.first_round_started is None:
            self.timings.first_round_started = time.time()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the updates by training rows, then stamp the round's end."""
        replies = list(replies)
        failed = [reply for reply in replies if reply.has_error()]
        if len(replies) - len(failed) < self.num_clients:
            first = failed[0].error.reason.strip().splitlines()[-1] if failed else "no reply"
            raise RuntimeError(
                f"round {server_round}: {len(replies) - len(failed)} of {self.num_clients} clients replied; first "
                f"failure: {first}"
            )
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.timings.round_seconds.append(time.perf_counter() - self._round_started)
        if metrics is not None:
            self.timings.train_loss.append(float(metrics["train_loss"]))
        return arrays, metrics


def make_server_app(args: argparse.Namespace, num_features: int, timings: Timings) -> ServerApp:
    """The ServerApp: ``args.rounds`` timed FedAvg rounds, then one untimed evaluation of the final model."""
    server_app = ServerApp()
    settings = ConfigRecord(
        {
            "data-dir": str(args.data.resolve()),
            "task": args.task,
            "local-steps": args.local_steps,
            "batch-size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
        }
    )

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        model = make_model(ModelConfig(name="logreg"), num_features, seed=args.seed)
        strategy = TimedFedAvg(timings, args.clients)
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=args.rounds,
            train_config=settings,
        )
        final = FedAvg(min_evaluate_nodes=args.clients, min_available_nodes=args.clients, weighted_by_key=WEIGHT_KEY)
        replies = grid.send_and_receive(
            final.configure_evaluate(args.rounds, result.arrays, ConfigRecord(settings), grid)
        )
        metrics = final.aggregate_evaluate(args.rounds, replies)
        if metrics is not None:
            timings.final_metrics = {key: float(value) for key, value in metrics.items() if key != WEIGHT_KEY}

    return server_app


def client_resources(num_cpus: int, actors: int) -> dict[str, float]:
    """Ray resources per client so that exactly ``actors`` ClientApp actors fit in ``num_cpus`` CPUs."""
    share = math.floor(num_cpus / actors * 10_000) / 10_000  # Ray's resource precision; rounding down fits them all
    return {"num_cpus": share, "num_gpus": 0.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flower_rounds", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of <client>.csv files (fitfed data synth)")
    parser.add_argument("--clients", type=int, required=True, help="number of clients; uses the first N CSVs by name")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="churn", help="built-in fitfed task spec the CSVs follow (default churn)")
    parser.add_argument(
        "--actors",
        type=int,
        default=None,
        help="Ray ClientApp actors, i.e. clients trained at once (default: one per client, all concurrent)",
    )
    parser.add_argument("--cpus", type=int, default=None, help="CPUs Ray may use (default: this process's CPUs)")
    parser.add_argument("--verbose", action="store_true", help="Flower's INFO logs and Ray's warnings on stderr")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1:
        parser.error("--clients and --rounds must be at least 1")
    found = len(client_csvs(args.data))
    if found < args.clients:
        parser.error(f"{args.data} has {found} CSV files, fewer than --clients {args.clients}")
    if args.actors is None:  # one actor per client, if that fits: an explicit --actors is taken as given
        fits = psutil.virtual_memory().available // ACTOR_MEMORY_BYTES
        if args.clients > fits:
            parser.error(
                f"{args.clients} clients at once need {args.clients} Ray actors, about "
                f"{args.clients * ACTOR_MEMORY_BYTES / 2**30:.0f} GiB, and only {fits} fit in the memory available "
                f"now: pass --actors K (K <= {fits}; on 2 CPUs, 2 actors ran rounds as fast as 20)"
            )
    elif args.actors < 1:
        parser.error("--actors must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the simulation and print its timings as JSON, the last line on stdout.

    The JSON's keys: ``framework``, ``flwr_version``, ``ray_version``, ``clients``, ``rounds``, the training settings,
    ``actors`` and ``client_num_cpus`` (how many clients train at once), ``round_seconds`` (each round, server side,
    from sending the global model to the end of aggregation; round 1 includes starting Ray's actors and the sites
    loading their data), ``seconds_per_round`` (median of rounds after the first), ``startup_seconds`` (process start
    to round 1's start), ``total_seconds`` (process start to after Ray's shutdown), ``train_loss`` (per round, mean
    over sites weighted by training rows) and ``final_loss``/``final_accuracy`` (the final global model on every
    site's test rows, weighted by test rows).
    """
    process_started = psutil.Process().create_time()
    args = parse_args(argv)
    num_cpus = args.cpus or len(os.sched_getaffinity(0))
    actors = min(args.actors or args.clients, args.clients)
    resources = client_resources(num_cpus, actors)
    logging.getLogger("flwr").setLevel(logging.INFO if args.verbose else logging.ERROR)
    # Ray's workers import this module by name: put the repository root on their path (Flower passes PYTHONPATH on).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))

    timings = Timings()
    num_features = len(load_spec(args.task).encoded_feature_names())
    backend_config = {
        "client_resources": resources,
        "init_args": {
            "num_cpus": num_cpus,
            "num_gpus": 0,
            "logging_level": "WARNING" if args.verbose else "ERROR",
            "log_to_driver": args.verbose,
            "include_dashboard": False,
        },
    }
    try:
        run_simulation(
            server_app=make_server_app(args, num_features, timings),
            client_app=client_app,
            num_supernodes=args.clients,
            backend_name="ray",
            backend_config=backend_config,
        )
    finally:
        if ray.is_initialized():  # Flower's backend shuts Ray down; this covers a failure before it did
            ray.shutdown()
    if len(timings.round_seconds) != args.rounds:
        raise RuntimeError(f"the simulation finished {len(timings.round_seconds)} of {args.rounds} rounds")
    later = timings.round_seconds[1:] or timings.round_seconds
    assert timings.first_round_started is not None
    report: dict[str, object] = {
        "framework": "flower",
        "flwr_version": flwr.__version__,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "clients": args.clients,
        "rounds": args.rounds,
        "task": args.task,
        "local_steps": args.local_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "weight_by": "rows",
        "cpus": num_cpus,
        "actors": actors,
        "client_num_cpus": resources["num_cpus"],
        "round_seconds": [round(seconds, 4) for seconds in timings.round_seconds],
        "seconds_per_round": round(statistics.median(later), 4),
        "startup_seconds": round(timings.first_round_started - process_started, 3),
        "total_seconds": round(time.time() - process_started, 3),
        "train_loss": [round(loss, 6) for loss in timings.train_loss],
        "final_loss": timings.final_metrics.get("loss"),
        "final_accuracy": timings.final_metrics.get("accuracy"),
    }
    sys.stdout.flush()
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    # Run the importable copy of this module, not ``__main__``: Ray pickles the ClientApp's functions by reference
    # only when their module can be imported in its workers, which also keeps load_sites' cache across rounds there.
    from benchmarks.flower_rounds import main as _main

    _main()
