"""The models a fitfed job can train: logistic regression and a small MLP, both emitting one logit."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

ModelName = Literal["logreg", "mlp"]


class ModelConfig(BaseModel):
    """Which model to build; every site builds the same one from this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName = "logreg"
    hidden_units: int = Field(default=32, ge=1, le=4096)


class LogisticRegression(nn.Module):
    """A single linear layer; the FLamby Fed-Heart-Disease baseline model.

    Args:
        num_features: model inputs.
        seed: seeds the initial weights. FLARE's persistor rebuilds the model from its class and
            arguments, so the seed must be an argument for every run to start from the same weights.
    """

    def __init__(self, num_features: int, seed: int = 0):
        super().__init__()
        self.num_features = num_features  # kept so FLARE's job export can rebuild the model
        self.seed = seed
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.linear = nn.Linear(num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return one logit per row."""
        return self.linear(x).squeeze(-1)


class MLP(nn.Module):
    """Two hidden ReLU layers: enough for feature interactions in small member tables.

    Args:
        num_features: model inputs.
        hidden_units: width of both hidden layers.
        seed: seeds the initial weights (see :class:`LogisticRegression`).
    """

    def __init__(self, num_features: int, hidden_units: int = 32, seed: int = 0):
        super().__init__()
        self.num_features = num_features  # kept so FLARE's job export can rebuild the model
        self.hidden_units = hidden_units
        self.seed = seed
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.layers = nn.Sequential(
                nn.Linear(num_features, hidden_units),
                nn.ReLU(),
                nn.Linear(hidden_units, hidden_units),
                nn.ReLU(),
                nn.Linear(hidden_units, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return one logit per row."""
        return self.layers(x).squeeze(-1)


def build_model(config: ModelConfig, num_features: int, seed: int = 0) -> nn.Module:
    """Build the configured model for ``num_features`` inputs, with initial weights seeded by ``seed``."""
    if config.name == "logreg":
        return LogisticRegression(num_features, seed=seed)
    return MLP(num_features, config.hidden_units, seed=seed)
