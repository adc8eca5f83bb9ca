"""FedAvg of the churn MLP with homomorphic encryption: the server only ever adds ciphertexts.

Runs on kits provisioned with HEBuilder (``he.enabled`` in the roster), never in the simulator.
The final model stays encrypted at the server; a club decrypts it with ``fitfed he decrypt``.
"""

from nvflare.app_opt.pt.recipes.fedavg_he import FedAvgRecipeWithHE

from fitfed.config import TrainConfig
from fitfed.jobs import JobSettings, add_fitfed_parts, recipe_args
from fitfed.models import ModelConfig
from fitfed.spec import load_spec

SETTINGS = JobSettings(
    name="fedavg_he_churn",
    num_rounds=5,
    min_clients=3,
    min_updates=2,
    he=True,
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


def build(settings: JobSettings = SETTINGS) -> FedAvgRecipeWithHE:
    """The recipe, ready to export or submit to an HE-provisioned federation."""
    return add_fitfed_parts(FedAvgRecipeWithHE(**recipe_args(settings)), settings)
