"""FedAvg of the churn MLP under pairwise-masking secure aggregation: the server learns only the sum.

Runs on provisioned kits (each club signs its round keys with its FLARE identity), never in the
simulator. Any 2 of the 3 clubs suffice to unmask a round; see docs/secure-aggregation.md.
"""

from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, add_fitfed_parts, recipe_args
from fitfed.models import ModelConfig
from fitfed.secagg.config import SecureAggregation
from fitfed.spec import load_spec

SETTINGS = JobSettings(
    name="fedavg_masked_churn",
    num_rounds=5,
    min_clients=3,
    min_updates=2,
    secure_aggregation=SecureAggregation(threshold=2),
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
    """The recipe, ready to export or submit to a provisioned federation."""
    return add_fitfed_parts(FedAvgRecipe(**recipe_args(settings)), settings)
