"""FedAvg of logistic regression on the real UCI four-hospital data, with FLamby's Fed-Heart-Disease settings.

FLamby: 15 rounds of 100 local SGD steps, batch 4, client learning rate 0.001, updates weighted by
each hospital's training rows. Sites are the four hospitals written by `fitfed data heart`.
"""

from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, add_fitfed_parts, recipe_args
from fitfed.models import ModelConfig
from fitfed.spec import load_spec

SETTINGS = JobSettings(
    name="fedavg_heart_disease",
    num_rounds=15,
    min_clients=4,
    min_updates=3,
    train=TrainConfig(
        task=load_spec("heart_disease"),
        model=ModelConfig(name="logreg"),
        algorithm="fedavg",
        local_steps=100,
        batch_size=4,
        optimizer="sgd",
        learning_rate=0.001,
        weight_by="rows",
    ),
)


def build(settings: JobSettings = SETTINGS) -> FedAvgRecipe:
    """The recipe, ready to export or run."""
    return add_fitfed_parts(FedAvgRecipe(**recipe_args(settings)), settings)
