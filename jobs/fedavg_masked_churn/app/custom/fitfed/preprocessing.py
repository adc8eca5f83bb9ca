"""From a validated table to tensors: the site's own split, statistics and encoding.

Statistics are fitted on the site's training rows only and never leave the site; the
encoding (one-hot columns and their order) comes from the spec, so every site produces
the same model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from fitfed.spec import CategoricalFeature, NumericFeature, TaskSpec
from fitfed.validation import ValidatedTable


@dataclass(frozen=True)
class SiteSplit:
    """One site's model-ready data: float32 features and 0/1 float32 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    feature_names: list[str]

    @property
    def num_features(self) -> int:
        """Model input width."""
        return len(self.feature_names)


def split_rows(frame: pd.DataFrame, spec: TaskSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a site's rows into train and test, stratified on the label when each class has more than 2 rows.

    This is FLamby's Fed-Heart-Disease rule, so ``heart_disease`` reproduces its split exactly.
    """
    labels = frame["label"]
    stratify = labels if labels.nunique() > 1 and labels.value_counts().min() > 2 else None
    fraction = spec.split.test_fraction
    train_idx, test_idx = train_test_split(
        np.arange(len(frame)),
        test_size=fraction,
        train_size=1.0 - fraction,
        random_state=spec.split.seed,
        shuffle=True,
        stratify=stratify,
    )
    return frame.iloc[np.sort(train_idx)], frame.iloc[np.sort(test_idx)]


def encode(frame: pd.DataFrame, spec: TaskSpec, train: pd.DataFrame) -> np.ndarray:
    """Encode rows as the spec's model inputs, standardising numerics with ``train``'s mean and std."""
    columns: list[np.ndarray] = []
    for feature in spec.features:
        values = frame[feature.name]
        if isinstance(feature, CategoricalFeature):
            kept = feature.values[1:] if spec.preprocessing.one_hot_drop_first else feature.values
            columns.extend((values == level).to_numpy(dtype=np.float32) for level in kept)
        elif isinstance(feature, NumericFeature) and spec.preprocessing.standardize:
            mean, std = float(train[feature.name].mean()), float(train[feature.name].std(ddof=0))
            columns.append(((values - mean) / (std if std > 0 else 1.0)).to_numpy(dtype=np.float32))
        else:
            columns.append(values.to_numpy(dtype=np.float32))
    return np.stack(columns, axis=1)


def to_site_split(table: ValidatedTable, spec: TaskSpec) -> SiteSplit:
    """Split, encode and convert a validated site table to tensors."""
    train, test = split_rows(table.frame, spec)
    return SiteSplit(
        x_train=torch.from_numpy(encode(train, spec, train)),
        y_train=torch.from_numpy(train["label"].to_numpy(dtype=np.float32)),
        x_test=torch.from_numpy(encode(test, spec, train)),
        y_test=torch.from_numpy(test["label"].to_numpy(dtype=np.float32)),
        feature_names=spec.encoded_feature_names(),
    )
