"""FedOpt (server-side Adam) of a small MLP on club churn data."""

from nvflare.app_opt.pt.recipes.fedopt import FedOptRecipe

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, add_fitfed_parts, recipe_args
from fitfed.models import ModelConfig
from fitfed.spec import load_spec

SETTINGS = JobSettings(
    name="fedopt_churn",
    num_rounds=5,
    min_clients=3,
    min_updates=2,
    server_lr=0.05,
    train=TrainConfig(
        task=load_spec("churn"),
        model=ModelConfig(name="mlp", hidden_units=32),
        algorithm="fedopt",
        local_epochs=2,
        batch_size=32,
        optimizer="sgd",
        learning_rate=0.1,
    ),
)


def build(settings: JobSettings = SETTINGS) -> FedOptRecipe:
    """The recipe, ready to export or run."""
    optimizer = {"path": "torch.optim.Adam", "args": {"lr": settings.server_lr, "betas": [0.9, 0.99]}}
    return add_fitfed_parts(FedOptRecipe(**recipe_args(settings), optimizer_args=optimizer, device="cpu"), settings)
