"""FedAvg of a small MLP on club churn data: the demo job (`make demo`)."""

from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, add_fitfed_parts, recipe_args
from fitfed.models import ModelConfig
from fitfed.spec import load_spec

SETTINGS = JobSettings(
    name="fedavg_churn",
    num_rounds=5,
    min_clients=3,
    min_updates=2,
    train=TrainConfig(
        task=load_spec("churn"),
        model=ModelConfig(name="mlp", hidden_units=32),
        algorithm="fedavg",
        local_epochs=1,
        batch_size=64,
        optimizer="adam",
        learning_rate=0.005,
    ),
)


def build(settings: JobSettings = SETTINGS) -> FedAvgRecipe:
    """The recipe, ready to export or run."""
    return add_fitfed_parts(FedAvgRecipe(**recipe_args(settings)), settings)
