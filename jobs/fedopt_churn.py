"""FedOpt (server-side Adam; FedYogi with ``ServerOptimizer(name="yogi")``) of a small MLP on club churn data."""

from nvflare.app_opt.pt.recipes.fedopt import FedOptRecipe

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, ServerOptimizer, add_fitfed_parts, recipe_args
from fitfed.models import ModelConfig
from fitfed.spec import load_spec

SETTINGS = JobSettings(
    name="fedopt_churn",
    num_rounds=5,
    min_clients=3,
    min_updates=2,
    server_optimizer=ServerOptimizer(name="adam", lr=0.05, betas=(0.9, 0.99)),
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
    optimizer = settings.server_optimizer.recipe_arg()
    return add_fitfed_parts(FedOptRecipe(**recipe_args(settings), optimizer_args=optimizer, device="cpu"), settings)
