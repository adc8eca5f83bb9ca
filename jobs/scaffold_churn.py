"""SCAFFOLD of a small MLP on club churn data: control variates correct each club's drift."""

from nvflare.app_opt.pt.recipes.scaffold import ScaffoldRecipe

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, add_fitfed_parts, recipe_args
from fitfed.models import ModelConfig
from fitfed.spec import load_spec

SETTINGS = JobSettings(
    name="scaffold_churn",
    num_rounds=5,
    min_clients=3,
    min_updates=2,
    train=TrainConfig(
        task=load_spec("churn"),
        model=ModelConfig(name="mlp", hidden_units=32),
        algorithm="scaffold",
        local_epochs=2,
        batch_size=32,
        optimizer="sgd",
        learning_rate=0.1,
    ),
)


def build(settings: JobSettings = SETTINGS) -> ScaffoldRecipe:
    """The recipe, ready to export or run."""
    return add_fitfed_parts(ScaffoldRecipe(**recipe_args(settings)), settings)
