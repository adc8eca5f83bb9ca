"""fitfed's site training script on the NVFlare Client API: receive, load, evaluate, train, send.

FLARE runs this at every site. It holds no ML of its own (that is ``fitfed.task``) and no
site paths (those come from the site's own configuration, see ``fitfed.config``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import nvflare.client as flare
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AlgorithmConstants
from nvflare.app_common.utils.fedprox_utils import get_fedprox_mu
from nvflare.app_opt.pt.scaffold import PTScaffoldHelper
from torch import nn

from fitfed.audit import ChainError
from fitfed.club_state import ClubStateMissing, load_scaffold_controls, save_scaffold_controls
from fitfed.config import TRAIN_CONFIG_FILE, TrainConfig, site_data_path
from fitfed.lineage import load_resume_plan
from fitfed.preprocessing import SiteSplit
from fitfed.privacy.ledger import PrivacyBudgetExceeded
from fitfed.privacy.update_dp import GaussianUpdateDP  # noqa: F401  (see below)
from fitfed.task import evaluate, load_site_data, make_model, train
from fitfed.validation import SiteDataError

if TYPE_CHECKING:  # Opacus is the optional "privacy" extra; only DP-SGD jobs import it
    from fitfed.privacy.dp_sgd import DPTrainer

# FLARE builds a club's privacy-scope filters in the job's process, where the job's copy of fitfed (app/custom/)
# shadows the club's installed one; importing the strict scope's filter here ships it in every exported job.

logger = logging.getLogger("fitfed.client")


def find_train_config(name: str) -> Path:
    """The job's ``fitfed_train.json``: as given, or in the app's ``config/`` folder above this script."""
    candidates = [Path(name)] + [folder / "config" / name for folder in Path(__file__).resolve().parents]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"training config {name!r} not found beside {Path(__file__).parent} or in any config/ above"
    )


def state_dict_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU tensors: PyTorch recipes drop numpy params, so FLARE must receive tensors."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_server_controls(helper: PTScaffoldHelper, received: FLModel) -> None:
    """Install the server's SCAFFOLD control variate sent in the model's meta."""
    controls = (received.meta or {}).get(AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL)
    if not controls:
        raise ValueError("SCAFFOLD job, but the server sent no global control variate: check the job's recipe")
    helper.load_global_controls(weights={k: torch.as_tensor(v) for k, v in controls.items()})


def start_dp(config: TrainConfig, data: SiteSplit, site: str, lineage_root: str) -> DPTrainer | None:
    """DP-SGD for this site's whole part in the training, when the job asks for it.

    The ledger charges the training's lineage root (see :mod:`fitfed.lineage`), so a job resumed
    after a crash continues the crashed job's accounting instead of starting a second one.

    The club's ledger is in its kit's ``local/`` folder. FLARE runs this script in the client's job
    process, whose working directory is the kit (the simulator: the site's workspace), as for
    :func:`fitfed.config.site_data_path`.
    """
    if config.dp is None:
        return None
    from fitfed.privacy.dp_sgd import DPTrainer
    from fitfed.privacy.ledger import open_ledger

    try:
        ledger = open_ledger(Path.cwd(), site)
    except ChainError as e:  # a tampered ledger: this site cannot account for its privacy, so it cannot train
        logger.error("site %s cannot take part: %s", site, e)
        raise
    if ledger is None or ledger.budget is None:
        logger.warning(
            "site %s has no privacy_budget in local/fitfed_site.yaml: DP-SGD's epsilon is reported (and recorded "
            "in local/ when there is one) but not limited; set privacy_budget to cap it",
            site,
        )
    job_id = flare.get_job_id()
    run_job_id = job_id if job_id != lineage_root else None
    return DPTrainer(config, len(data.y_train), ledger=ledger, job_id=lineage_root, run_job_id=run_job_id)


class ScaffoldClub:
    """SCAFFOLD's client side, with its control variate kept in the kit across a job and its continuations.

    Args:
        model: the club's model.
        lineage_root: the training the job belongs to (see :mod:`fitfed.lineage`).
        resumed: the job continues another, so the variate must be loaded, never started at zero.
        site: this club, for messages.
    """

    def __init__(self, model: nn.Module, lineage_root: str, resumed: bool, site: str):
        self.helper = PTScaffoldHelper()
        self.helper.init(model)
        self.lineage_root = lineage_root
        self.site = site
        self._pending_load = resumed

    def before_training(self, round_number: int) -> None:
        """In a continuation's first round, take up the variate the club had when the server's last round ended."""
        if self._pending_load:
            controls = load_scaffold_controls(Path.cwd(), self.lineage_root, round_number, self.site)
            self.helper.c_local.load_state_dict(controls)
            self._pending_load = False

    def after_training(self, round_number: int) -> None:
        """Keep the variate this round left, for a continuation should the server crash before the next."""
        save_scaffold_controls(Path.cwd(), self.lineage_root, round_number, self.helper.c_local.state_dict())


def train_round(model: nn.Module, data: SiteSplit, config: TrainConfig, received: FLModel,
                scaffold: ScaffoldClub | None, dp: DPTrainer | None = None) -> FLModel:  # fmt: skip
    """Train on the received model and package the result FLARE's aggregator expects."""
    fedprox_mu = get_fedprox_mu(received) if config.algorithm == "fedprox" else None
    round_number = received.current_round or 0
    if scaffold is not None:
        try:
            scaffold.before_training(round_number)
        except ClubStateMissing as e:  # fails this site's task: it must not train from a zero variate
            logger.error("%s", e)
            raise
        load_server_controls(scaffold.helper, received)
    if dp is not None:
        try:  # before training: a refused round trains nothing
            dp.charge_round(round_number)
        except PrivacyBudgetExceeded as e:  # fails this site's task, as bad data does; nothing is sent
            logger.error("this site stops training: %s", e)
            raise
    round_seed = config.seed * 100_003 + round_number
    helper = scaffold.helper if scaffold is not None else None
    result = train(model, data, config, round_seed=round_seed, fedprox_mu=fedprox_mu, scaffold=helper, dp=dp)
    # FLARE's aggregators weigh each update by this key; "rows" makes that the site's training rows.
    weight = result.steps if config.weight_by == "steps" else len(data.y_train)
    meta: dict[str, object] = {"NUM_STEPS_CURRENT_ROUND": weight, "train_loss": result.loss}
    if scaffold is not None:
        # As tensors: the helper returns numpy arrays, which end up in the server's checkpoint meta
        # and make it unloadable with torch.load(weights_only=True).
        meta[AlgorithmConstants.SCAFFOLD_CTRL_DIFF] = {
            k: torch.as_tensor(v) for k, v in scaffold.helper.get_delta_controls().items()
        }
        scaffold.after_training(round_number)
    return FLModel(params=state_dict_of(model), params_type=ParamsType.FULL, meta=meta)


def main() -> None:
    """Run the Client API loop until FLARE stops this site."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=TRAIN_CONFIG_FILE, help="the job's TrainConfig JSON")
    config_path = find_train_config(parser.parse_args().config)
    config = TrainConfig.model_validate_json(config_path.read_text())

    flare.init()  # (1) join the job
    site = flare.get_site_name()
    plan = load_resume_plan(config_path.parent)  # a continuation of a crashed job (fitfed resume)
    root = flare.get_job_id() if plan is None else plan.lineage_root
    try:  # (2) load and validate this site's data; a bad file fails this site only, with a safe message
        data = load_site_data(site_data_path(site), config.task)
    except (SiteDataError, FileNotFoundError) as e:
        # Failing this site's task (not exiting the process) lets FLARE tell the server, which carries on
        # with the other sites while at least min_updates remain.
        logger.error("site %s cannot take part: %s", site, e)
        raise
    model = make_model(config.model, data.num_features, seed=config.seed)
    scaffold = ScaffoldClub(model, root, plan is not None, site) if config.algorithm == "scaffold" else None
    dp = start_dp(config, data, site, root)

    while flare.is_running():
        received = flare.receive()  # (3) the current global model
        if received is None:
            break
        model.load_state_dict(received.params)
        metrics = evaluate(model, data.x_test, data.y_test)  # (4) score it on held-out rows
        if flare.is_evaluate():
            flare.send(FLModel(metrics=metrics))
            continue
        output = train_round(model, data, config, received, scaffold, dp)  # (5) local training
        output.metrics = {**metrics, **(dp.metrics() if dp is not None else {})}
        flare.send(output)  # (6) the update, with the received model's metrics


if __name__ == "__main__":
    main()
