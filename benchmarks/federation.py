"""A federation in one process: fitfed's client code and RobustAggregator, without NVFlare's runtime.

Each round does what NVFlare's FedAvg controller does with fitfed's client script and a robust
aggregator: every club loads the global model, trains with :func:`fitfed.client.train_round`,
sends its weight difference (poisoned if the club is an attacker), and
:class:`fitfed.aggregation.aggregator.RobustAggregator` aggregates them into the next global model.
A test checks that this loop reproduces the NVFlare simulator's global model; it exists because
20 clubs x 30 rounds x 30 settings in the simulator would take hours on a small machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from attack_harness.poison import AttackConfig, attack_rng, flip_labels, poison_update
from fitfed.aggregation.aggregator import RobustAggregator
from fitfed.aggregation.config import AggregatorConfig
from fitfed.aggregation.robust import UpdateError
from fitfed.aggregation.summary import REPORT_KEY
from fitfed.client import state_dict_of, train_round
from fitfed.config import TrainConfig
from fitfed.preprocessing import SiteSplit
from fitfed.task import make_model


@dataclass(frozen=True)
class Club:
    """One simulated club: its name, its data and, for an attacker, its attack."""

    name: str
    data: SiteSplit
    attack: AttackConfig | None = None


@dataclass
class FederationResult:
    """The final global model, each round's aggregation report and how long things took."""

    params: dict[str, torch.Tensor]
    reports: list[dict] = field(default_factory=list)
    aggregation_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0


def run_federation(
    clubs: Sequence[Club], config: TrainConfig, aggregator: AggregatorConfig, num_rounds: int
) -> FederationResult:
    """Run ``num_rounds`` rounds of FedAvg-style training with ``aggregator`` over ``clubs``."""
    start = time.perf_counter()
    model = make_model(config.model, clubs[0].data.num_features, seed=config.seed)
    result = FederationResult(params=state_dict_of(model))
    server = RobustAggregator(aggregator.model_dump(exclude_none=True), min_updates=len(clubs))
    for round_number in range(num_rounds):
        server.reset_stats()
        for club in clubs:
            try:
                server.accept_model(club_update(model, club, config, result.params, round_number))
            except UpdateError:
                pass  # as in FLARE: the club is left out of this round and the aggregator reports why
        tic = time.perf_counter()
        aggregated = server.aggregate_model()
        result.aggregation_seconds.append(time.perf_counter() - tic)
        result.params = {k: v + torch.as_tensor(aggregated.params[k]) for k, v in result.params.items()}
        result.reports.append({"round": round_number, **aggregated.meta[REPORT_KEY]})
    result.seconds = time.perf_counter() - start
    return result


def club_update(
    model: torch.nn.Module, club: Club, config: TrainConfig, global_params: dict[str, torch.Tensor], round_number: int
) -> FLModel:
    """What ``club`` sends in ``round_number``: its weight difference, as FLARE's Client API would compute it."""
    model.load_state_dict(global_params)
    received = FLModel(params=global_params, params_type=ParamsType.FULL, current_round=round_number)
    data = club.data
    if club.attack is not None and club.attack.kind == "label_flip":
        data = replace(data, y_train=torch.from_numpy(flip_labels(data.y_train.numpy())))
    trained = train_round(model, data, config, received, scaffold=None)
    diff = {k: (trained.params[k] - global_params[k]).numpy() for k in global_params}
    if club.attack is not None and club.attack.poisons_update:
        diff = poison_update(diff, club.attack, attack_rng(club.attack, club.name, round_number))
    meta = {**trained.meta, "client_name": club.name}
    return FLModel(
        params={k: torch.from_numpy(np.asarray(v)) for k, v in diff.items()}, params_type=ParamsType.DIFF, meta=meta
    )
