"""All the machine learning a site does: load its data, build the model, train, evaluate.

The client script only moves models in and out of FLARE and calls these functions, so
benchmarks, tests and the pooled baseline use exactly the same code as a real site.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss
from nvflare.app_opt.pt.scaffold import PTScaffoldHelper
from sklearn.metrics import roc_auc_score
from torch import nn

from fitfed.config import TrainConfig
from fitfed.models import ModelConfig, build_model
from fitfed.preprocessing import SiteSplit, to_site_split
from fitfed.spec import TaskSpec
from fitfed.validation import read_site_csv

if TYPE_CHECKING:  # Opacus is the optional "privacy" extra; only DP-SGD jobs need it
    from fitfed.privacy.dp_sgd import DPTrainer


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training did: steps taken (FedAvg's weight) and mean training loss."""

    steps: int
    loss: float


def load_site_data(csv_path: str | Path, spec: TaskSpec) -> SiteSplit:
    """Validate a site's CSV against the spec and turn it into train/test tensors.

    Raises:
        SiteDataError: the file does not meet the spec; the message is safe to log.
    """
    return to_site_split(read_site_csv(csv_path, spec), spec)


def make_model(config: ModelConfig, num_features: int, seed: int = 0) -> nn.Module:
    """Build the model with seeded initial weights, identical at every site and on the server."""
    return build_model(config, num_features, seed=seed)


def train(
    model: nn.Module,
    data: SiteSplit,
    config: TrainConfig,
    *,
    round_seed: int,
    fedprox_mu: float | None = None,
    scaffold: PTScaffoldHelper | None = None,
    dp: DPTrainer | None = None,
) -> TrainResult:
    """Train ``model`` in place for one round of local steps.

    Args:
        model: the received global model; updated in place.
        data: the site's split.
        config: optimizer, batch size and round length.
        round_seed: seeds the batch order, so reruns are reproducible (DP-SGD draws from ``dp`` instead).
        fedprox_mu: if set, adds FedProx's proximal term towards the received model.
        scaffold: if set, applies SCAFFOLD's control-variate correction after each step.
        dp: if set, trains with DP-SGD: Poisson batches, per-sample clipping and noise, every step counted.
    """
    global_model = copy.deepcopy(model).requires_grad_(False)
    loss_fn = nn.BCEWithLogitsLoss()
    penalty = partial(PTFedProxLoss(mu=fedprox_mu), model, global_model) if fedprox_mu else None
    controls = scaffold.get_params() if scaffold else None
    model.train()
    losses: list[float | None] = []
    with _round_optimizer(model, config, dp, penalty) as optimizer:
        for x, y in dp.batches(data) if dp is not None else _batches(data, config, round_seed):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            if penalty is not None and dp is None:  # under DP-SGD the optimizer adds it after the noise
                loss = loss + penalty()
            loss.backward()
            optimizer.step()
            if scaffold is not None and controls is not None:
                scaffold.model_update(model, config.learning_rate, *controls)
            losses.append(loss.item() if len(y) else None)  # a Poisson batch may be empty
    if scaffold is not None and controls is not None:
        scaffold.terms_update(model, config.learning_rate, *controls, model_global=global_model)
    return TrainResult(steps=len(losses), loss=_mean_loss(losses))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Loss, accuracy and ROC AUC of ``model`` on (x, y); AUC is left out when y has one class."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y).item()
    probabilities = torch.sigmoid(logits).numpy()
    labels = y.numpy()
    metrics = {"loss": loss, "accuracy": float(((probabilities >= 0.5) == (labels == 1)).mean())}
    if len(np.unique(labels)) == 2:
        metrics["roc_auc"] = float(roc_auc_score(labels, probabilities))
    return metrics


def _round_optimizer(
    model: nn.Module, config: TrainConfig, dp: DPTrainer | None, penalty: Callable[[], torch.Tensor] | None
) -> AbstractContextManager[torch.optim.Optimizer]:
    """The round's optimizer; under DP-SGD, made private by Opacus for the round's duration."""
    optimizer = _make_optimizer(model, config)
    return dp.attach(model, optimizer, penalty) if dp is not None else nullcontext(optimizer)


def _mean_loss(losses: list[float | None]) -> float:
    """Mean over the steps that had rows (None marks an empty Poisson batch)."""
    taken = [loss for loss in losses if loss is not None]
    return float(np.mean(taken)) if taken else math.nan


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)


def _batches(data: SiteSplit, config: TrainConfig, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches: ``local_epochs`` full passes, or exactly ``local_steps`` batches."""
    rows = len(data.y_train)
    batches_per_epoch = math.ceil(rows / config.batch_size)
    steps = config.local_steps or (config.local_epochs or 1) * batches_per_epoch
    generator = torch.Generator().manual_seed(seed)
    taken = 0
    while taken < steps:
        order = torch.randperm(rows, generator=generator)
        for start in range(0, rows, config.batch_size):
            if taken == steps:
                return
            index = order[start : start + config.batch_size]
            yield data.x_train[index], data.y_train[index]
            taken += 1
