"""FedProx of a small MLP on club churn data: a proximal term keeps each club near the global model."""

from nvflare.app_opt.pt.recipes.fedprox import FedProxRecipe

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, add_fitfed_parts, recipe_args
from fitfed.models import ModelConfig
from fitfed.spec import load_spec

SETTINGS = JobSettings(
    name="fedprox_churn",
    num_rounds=5,
    min_clients=3,
    min_updates=2,
    fedprox_mu=0.01,
    train=TrainConfig(
        task=load_spec("churn"),
        model=ModelConfig(name="mlp", hidden_units=32),
        algorithm="fedprox",
        local_epochs=1,
        batch_size=64,
        optimizer="adam",
        learning_rate=0.005,
    ),
)


def build(settings: JobSettings = SETTINGS) -> FedProxRecipe:
    """The recipe, ready to export or run."""
    return add_fitfed_parts(FedProxRecipe(**recipe_args(settings), fedprox_mu=settings.fedprox_mu), settings)
