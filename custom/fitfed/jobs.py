"""Turning a job's typed settings into an NVFlare recipe with fitfed's parts attached.

Each file in ``jobs/`` picks an NVFlare recipe (FedAvg, FedProx, SCAFFOLD, FedOpt) and passes
it :func:`recipe_args`; :func:`add_fitfed_parts` then ships the training config to every
site, records the run on the server, and evaluates the final global model at every site.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from nvflare.apis.dxo import DataKind
from nvflare.apis.job_def import SERVER_SITE_NAME
from nvflare.app_common.workflows.base_model_controller import BaseModelController
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator
from nvflare.client.config import ExchangeFormat, TransferType
from nvflare.fuel.utils.log_utils import default_log_dict
from nvflare.job_config.defs import FilterType
from nvflare.recipe import SimEnv
from nvflare.recipe.spec import Recipe
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fitfed import client as client_module
from fitfed.aggregation.aggregator import robust_recipe_args
from fitfed.aggregation.config import AggregatorConfig, check_feasible, describe, refuse_with_encrypted_updates
from fitfed.config import DATA_ENV_VAR, TRAIN_CONFIG_FILE, TrainConfig
from fitfed.privacy.he import HEContextCheck
from fitfed.round_timing import RoundTiming, SimulatorRetry, apply_round_timing
from fitfed.secagg.club import (
    CLUB_COMPONENT,
    MaskUpdate,
    ReadRoundPlan,
    SecAggClub,
)
from fitfed.secagg.config import SecureAggregation, check_secure_aggregation
from fitfed.secagg.controller import MaskedFedAvg
from fitfed.server.final_eval import FinalModelEval
from fitfed.server.optimizers import Yogi
from fitfed.server.resume import CHECKPOINTER_ID, RoundCheckpointer
from fitfed.server.run_record import RunRecorder
from fitfed.task import make_model

# The client script is named relative to the folder holding the fitfed package, so the exported
# job says "fitfed/client.py" (found in the app's custom/ folder at any site), never a path on this machine.
_PACKAGE_PARENT = Path(client_module.__file__).resolve().parent.parent
_CLIENT_SCRIPT = "fitfed/client.py"
_SERVER_OPTIMIZERS = "fitfed/server/optimizers.py"


class ServerOptimizer(BaseModel):
    """FedOpt's server rule (Reddi et al. 2021): FedAdam with torch's Adam, FedYogi with fitfed's Yogi.

    Args:
        name: "adam" or "yogi".
        lr: the server learning rate (eta).
        betas: decay of the first and second moments.
        eps: the adaptivity tau, added to the root of the second moment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["adam", "yogi"] = "adam"
    lr: float = Field(gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = Field(default=1e-8, gt=0)

    def recipe_arg(self) -> dict[str, Any]:
        """The ``optimizer_args`` FLARE's FedOptRecipe takes: a class path and its arguments."""
        path = "torch.optim.Adam" if self.name == "adam" else f"{Yogi.__module__}.{Yogi.__name__}"
        return {"path": path, "args": {"lr": self.lr, "betas": list(self.betas), "eps": self.eps}}


class JobSettings(BaseModel):
    """One fitfed job: its name, its federation shape and how every site trains.

    Args:
        name: the job's name, also its folder under ``jobs/``.
        num_rounds: federated rounds.
        min_clients: clubs that must be connected for the job to start and go on (FLARE's min_clients).
            Every round goes to every connected club.
        min_updates: fewest usable club updates a round may aggregate (default: min_clients); a club
            whose task fails (bad data, crash) is left out of that round while this many remain.
        train: how each site trains (task spec, model, algorithm, optimizer).
        fedprox_mu: FedProx's proximal weight (algorithm "fedprox" only).
        server_optimizer: FedOpt's server optimizer (algorithm "fedopt" only, where it is required).
        aggregator: a robust aggregator (see docs/robust-aggregation.md; "fedavg" and "fedprox" only);
            checked against min_updates (or min_clients).
        timing: FLARE's polling periods (see :mod:`fitfed.round_timing`); the defaults make a small model's
            round about 10x faster than FLARE's own, and ``RoundTiming.flare_defaults()`` restores FLARE's.
        secure_aggregation: aggregate under pairwise masking (:mod:`fitfed.secagg`), so the server learns only
            the weighted sum of the updates; "fedavg" or "fedprox", never with HE or a robust aggregator, and only on
            provisioned kits (each club signs its keys with its FLARE identity; the simulator has none).
        he: encrypt every club's update with CKKS before it leaves the club (FLARE's ``FedAvgRecipeWithHE``);
            "fedavg" only, never with a robust aggregator, and only on kits provisioned with HEBuilder
            (FLARE refuses the simulator). The server then holds only the encrypted global model.

    Clubs always send weight differences, not weights: that is what a club's update-level DP filter
    (its ``strict`` privacy scope) clips and noises, whatever the job.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    num_rounds: int = Field(ge=1)
    min_clients: int = Field(ge=1)
    min_updates: int | None = Field(default=None, ge=1)
    train: TrainConfig
    fedprox_mu: float | None = Field(default=None, gt=0)
    server_optimizer: ServerOptimizer | None = None
    aggregator: AggregatorConfig | None = None
    timing: RoundTiming = RoundTiming()
    he: bool = False
    secure_aggregation: SecureAggregation | None = None

    @property
    def updates_needed(self) -> int:
        """The fewest usable club updates a round may aggregate: min_updates, else min_clients."""
        return self.min_updates or self.min_clients

    @model_validator(mode="after")
    def _algorithm_options(self) -> JobSettings:
        algorithm = self.train.algorithm
        if self.min_updates is not None and self.min_updates > self.min_clients:
            raise ValueError(f"min_updates={self.min_updates!r} cannot exceed min_clients={self.min_clients!r}")
        if (self.fedprox_mu is not None) != (algorithm == "fedprox"):
            raise ValueError(f"fedprox_mu={self.fedprox_mu!r} must be set exactly when train.algorithm='fedprox'")
        if (self.server_optimizer is not None) != (algorithm == "fedopt"):
            raise ValueError(
                f"server_optimizer must be set exactly when train.algorithm='fedopt' (algorithm is {algorithm!r})"
            )
        if self.aggregator is not None:
            if algorithm not in ("fedavg", "fedprox"):
                raise ValueError(
                    f"aggregator={self.aggregator.method!r} needs train.algorithm 'fedavg' or 'fedprox', not "
                    f"{algorithm!r}, whose server update is its own"
                )
            fewest = "min_updates" if self.min_updates else "min_clients"
            check_feasible(self.aggregator, self.updates_needed, setting=fewest)
        if self.he:
            if algorithm != "fedavg":
                raise ValueError(
                    f"he=True runs FLARE's FedAvg with HE: train.algorithm must be 'fedavg', not {algorithm!r}"
                )
            refuse_with_encrypted_updates(self.aggregator)
        if self.secure_aggregation is not None:
            check_secure_aggregation(
                self.secure_aggregation,
                algorithm=algorithm,
                min_clients=self.min_clients,
                he=self.he,
                robust=None if self.aggregator is None else describe(self.aggregator),
            )
        return self


def recipe_args(settings: JobSettings) -> dict[str, Any]:
    """The arguments every fitfed recipe shares: model, rounds, fitfed's client script (and any robust aggregator)."""
    spec = settings.train.task
    robust = {} if settings.aggregator is None else robust_recipe_args(settings.aggregator, settings.updates_needed)
    return {
        **_update_args(settings),
        **robust,
        "name": settings.name,
        "model": make_model(settings.train.model, len(spec.encoded_feature_names()), seed=settings.train.seed),
        "min_clients": settings.min_clients,
        "num_rounds": settings.num_rounds,
        "train_script": _CLIENT_SCRIPT,
        "train_args": f"--config {TRAIN_CONFIG_FILE}",
        # Tensors end to end: the server's checkpoints then load with torch.load(weights_only=True). FLARE's HE
        # encryptor works on numpy arrays, and its server checkpoints hold ciphertext either way.
        "server_expected_format": ExchangeFormat.NUMPY if settings.he else ExchangeFormat.PYTORCH,
    }


def _update_args(settings: JobSettings) -> dict[str, Any]:
    """Clubs send weight differences (FLARE computes them from the trained weights in the Client API)."""
    algorithm = settings.train.algorithm
    if algorithm == "fedopt":
        return {}  # FLARE's FedOpt recipe always transfers differences
    if algorithm == "scaffold":
        return {"params_transfer_type": TransferType.DIFF}  # its recipe takes no aggregator data kind
    return {"params_transfer_type": TransferType.DIFF, "aggregator_data_kind": DataKind.WEIGHT_DIFF}


def add_fitfed_parts(recipe: Recipe, settings: JobSettings) -> Recipe:
    """Ship the training config, record the run, checkpoint every round, and evaluate the final global model.

    An HE job instead checks each club's HE context before training, and has neither checkpoints (see
    :mod:`fitfed.server.resume`) nor a final evaluation: the server's final model is ciphertext, which a
    key-holding club decrypts (``fitfed he decrypt``).
    """
    config_file = Path(tempfile.mkdtemp(prefix="fitfed-job-")) / TRAIN_CONFIG_FILE
    config_file.write_text(settings.train.model_dump_json(indent=2) + "\n")
    job = _fed_job(recipe)
    job.add_file_to_clients(str(config_file), app_folder_type="config")
    job.add_file_to_server(str(config_file), app_folder_type="config")
    if settings.secure_aggregation is not None:
        _mask_every_round(job, settings)
    _every_club_every_round(job)
    apply_round_timing(recipe, settings.timing)
    if settings.server_optimizer is not None and settings.server_optimizer.name == "yogi":
        with _scripts_resolvable():  # named by class path only, so FLARE would not ship it with the job
            job.to_server(_SERVER_OPTIMIZERS)
    job.to_server(RunRecorder(min_updates=settings.updates_needed), id="fitfed_recorder")
    if settings.he:  # the server holds only ciphertext, which FLARE's HE persistor cannot be started from
        job.to_clients(HEContextCheck(), id="fitfed_he_check")
        return recipe
    job.to_server(RoundCheckpointer(), id=CHECKPOINTER_ID)  # after the recorder: its trail is open when it resumes
    locator_id = job.comp_ids.get("locator_id") or job.to_server(
        PTFileModelLocator(pt_persistor_id="persistor"), id="locator"
    )
    job.to_server(FinalModelEval(model_locator_id=locator_id))
    return recipe


def export_into(recipe: Recipe, jobs_dir: Path) -> Path:
    """Replace ``jobs_dir/<name>/`` with a fresh export, the folder ``nvflare job submit -j`` takes."""
    target = jobs_dir.resolve() / recipe.name
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _export(recipe, Path(tmp))
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(fresh, target)
    return target


def compare_export(recipe: Recipe, jobs_dir: Path) -> list[str]:
    """How the committed ``jobs_dir/<name>/`` differs from a fresh export of its definition (empty: no drift)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _tree(_export(recipe, Path(tmp)))
    committed = _tree(jobs_dir / recipe.name)
    differences = [f"{name} missing" for name in sorted(fresh.keys() - committed.keys())]
    differences += [f"{name} not in the definition" for name in sorted(committed.keys() - fresh.keys())]
    differences += [
        f"{name} differs" for name in sorted(fresh.keys() & committed.keys()) if fresh[name] != committed[name]
    ]
    return differences


def _export(recipe: Recipe, root: Path) -> Path:
    with _scripts_resolvable():
        recipe.export(str(root))
    for config in (root / recipe.name).rglob("config_fed_*.json"):
        _sort_task_lists(config)
    return root / recipe.name


def _sort_task_lists(config: Path) -> None:
    """FLARE writes a filter's task names from a set, in hash order; sorted, an export is the same every time."""

    def sort(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: sorted(v) if k == "tasks" and isinstance(v, list) else sort(v) for k, v in node.items()}
        return [sort(v) for v in node] if isinstance(node, list) else node

    original = json.loads(config.read_text())
    ordered = sort(original)
    if ordered != original:
        config.write_text(json.dumps(ordered, indent=4))


def _tree(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def simulate(recipe: Recipe, *, data_dir: Path, sites: list[str], workspace: Path, threads: int | None = None) -> Path:
    """Run the job in NVFlare's simulator, one site per CSV in ``data_dir``; returns the job's workspace.

    ``threads`` is how many sites train at once (default: all); each is a process of a few hundred MB.
    """
    workspace.mkdir(parents=True, exist_ok=True)
    env = SimEnv(
        clients=sites,
        num_threads=threads or len(sites),
        workspace_root=str(workspace.resolve()),
        log_config=str(_errors_only_on_console(workspace)),
    )
    _fed_job(recipe).to_clients(SimulatorRetry(), id="fitfed_simulator_retry")  # as a real club retries
    data_dir = data_dir.resolve()  # before the working directory changes
    with _scripts_resolvable(), _environment(DATA_ENV_VAR, str(data_dir)):
        recipe.run(env)  # simulated sites share this process's environment, so FITFED_DATA reaches them all
    return workspace.resolve() / recipe.name  # SimEnv names the job's workspace after the job


def _errors_only_on_console(workspace: Path) -> Path:
    """FLARE's default logging, with the console cut to errors: full logs stay in each site's log.txt."""
    config = copy.deepcopy(default_log_dict)
    config["handlers"]["consoleHandler"]["level"] = "ERROR"
    path = workspace.resolve() / "fitfed_log_config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextmanager
def _scripts_resolvable() -> Iterator[None]:
    """FLARE resolves a relative train_script against the working directory when it exports or runs."""
    previous = Path.cwd()
    os.chdir(_PACKAGE_PARENT)
    try:
        yield
    finally:
        os.chdir(previous)


def _every_club_every_round(job: Any) -> None:
    """Cross-silo rounds: send every round to every connected club, and go on without one whose task failed.

    FLARE's FedAvg-family controllers otherwise train a random ``min_clients`` of the connected
    clubs each round, and abort the whole job as soon as one of them fails. Here a failed or
    dropped club is left out of its round; RunRecorder still stops a round below min_updates,
    and FLARE itself ends the job when fewer than min_clients clubs remain connected.
    """
    for workflow in job._deploy_map[SERVER_SITE_NAME].app_config.workflows:
        controller = workflow.controller
        if isinstance(controller, BaseModelController):
            controller._ignore_result_error = True
            if hasattr(controller, "num_clients"):
                controller.num_clients = 0  # BaseFedAvg.sample_clients: 0 means every connected club
        elif isinstance(controller, ScatterAndGather):  # FedOpt's controller, which already asks every club
            controller.ignore_result_error = True


def _mask_every_round(job: Any, settings: JobSettings) -> None:
    """Swap the recipe's FedAvg controller for :class:`MaskedFedAvg`, and give every club the protocol's parts.

    The key exchanges are aux messages (answered by :class:`SecAggClub`); only training is a task.

    The masking filter is a job filter: FLARE runs it after the club's privacy-scope filters, so a club's
    DP noise is added before its update is masked.
    """
    assert settings.secure_aggregation is not None
    for workflow in job._deploy_map[SERVER_SITE_NAME].app_config.workflows:
        if isinstance(workflow.controller, BaseModelController):
            workflow.controller = MaskedFedAvg(
                num_rounds=settings.num_rounds,
                threshold=settings.secure_aggregation.threshold,
                step_timeout=settings.secure_aggregation.step_timeout,
                persistor_id=workflow.controller._persistor_id,
            )
    job.to_clients(SecAggClub(), id=CLUB_COMPONENT)
    job.to_clients(ReadRoundPlan(), filter_type=FilterType.TASK_DATA, tasks=["train"])
    job.to_clients(MaskUpdate(), filter_type=FilterType.TASK_RESULT, tasks=["train"])


def _fed_job(recipe: Recipe) -> Any:
    """The recipe's underlying FedJob: recipes expose no public handle for extra server components."""
    return recipe._job


def build_recipe(module: ModuleType, settings: JobSettings | None = None) -> Recipe:
    """Build a job definition's recipe (with its own SETTINGS unless others are given)."""
    with _scripts_resolvable():  # some recipes place the client script as they are constructed
        return module.build(settings or module.SETTINGS)


def load_job_module(path: Path) -> ModuleType:
    """Import a job definition file (``jobs/<name>.py``), which must define ``SETTINGS`` and ``build()``."""
    spec = importlib.util.spec_from_file_location(f"fitfed_job_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python job definition")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attribute in ("SETTINGS", "build"):
        if not hasattr(module, attribute):
            raise ImportError(f"{path}: a fitfed job definition must define {attribute}")
    return module
