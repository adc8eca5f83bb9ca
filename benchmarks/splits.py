"""The heart_disease hospitals, each split into several clubs (clients), as the robustness benchmark uses them.

Each hospital's rows get FLamby's Fed-Heart-Disease treatment (fitfed's ``heart_disease`` spec:
the per-hospital stratified 66/34 split, standardisation with the hospital's training
statistics), then its training rows are dealt into ``clients_per_hospital`` stratified parts,
one per client. The hospital's test rows stay whole: the benchmark scores the global model on
each hospital's test split and averages over hospitals (FLamby's "mean over hospitals").

The clients are built here rather than written as CSVs for fitfed's client script because
Switzerland has 46 usable rows with a single negative: four of its five clients would have one
class only, which fitfed's site validation refuses (rightly, for a real site).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fitfed.datasets.heart_disease import SITES
from fitfed.preprocessing import SiteSplit, encode, split_rows
from fitfed.spec import TaskSpec
from fitfed.validation import read_site_csv


@dataclass(frozen=True)
class Hospital:
    """One hospital's clients (each a training-row subset) and its whole test split."""

    name: str
    clients: list[SiteSplit]
    x_test: torch.Tensor
    y_test: torch.Tensor


def split_hospitals(data_dir: Path, spec: TaskSpec, clients_per_hospital: int, seed: int = 0) -> list[Hospital]:
    """Read ``<hospital>.csv`` for each of the four hospitals and split each into clients."""
    hospitals = []
    for name in SITES:
        frame = read_site_csv(data_dir / f"{name}.csv", spec).frame
        train, test = split_rows(frame, spec)
        x_train = torch.from_numpy(encode(train, spec, train))
        y_train = torch.from_numpy(train["label"].to_numpy(dtype=np.float32))
        x_test = torch.from_numpy(encode(test, spec, train))
        y_test = torch.from_numpy(test["label"].to_numpy(dtype=np.float32))
        parts = stratified_parts(y_train.numpy(), clients_per_hospital, seed)
        clients = [SiteSplit(x_train[p], y_train[p], x_test, y_test, spec.encoded_feature_names()) for p in parts]
        hospitals.append(Hospital(name, clients, x_test, y_test))
    return hospitals


def stratified_parts(labels: np.ndarray, num_parts: int, seed: int) -> list[np.ndarray]:
    """Deal row indices into ``num_parts`` parts of near-equal size and label mix (seeded, deterministic).

    Raises:
        ValueError: fewer rows than parts.
    """
    if len(labels) < num_parts:
        raise ValueError(f"{len(labels)} row(s) cannot be dealt into num_parts={num_parts}: expected at least one each")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == value)) for value in np.unique(labels)])
    return [np.sort(order[i::num_parts]) for i in range(num_parts)]
