"""Resume after a server crash: checkpoint every completed round, and start a continuation job from one.

FLARE 2.9 keeps no job state across a server restart. :class:`RoundCheckpointer` writes the
server's side of the training to ``<run dir>/fitfed/checkpoint/`` after every round the
persistor saves (see :mod:`fitfed.server.checkpoint`). In a job that ``fitfed resume``
submitted (one with a :class:`fitfed.lineage.ResumePlan`), it instead starts the workflow
from the checkpoint of the job it resumes, or stops the job with the reason it cannot.

What the checkpoint holds beyond the global model and round: the best model and its metric,
SCAFFOLD's server control variate, and FedOpt's optimizer (and scheduler) state. FedAvg,
FedProx, the robust aggregators and secure aggregation keep no state from one round to the
next (a robust rule chooses from one round's updates; masking keys are made afresh each round
and bound to the job), so for them the model and round are the whole state.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from fitfed.audit import ChainError, last_hash, verify_chain
from fitfed.config import TRAIN_CONFIG_FILE
from fitfed.lineage import ResumePlan, load_resume_plan
from fitfed.privacy.he import encrypted_layers
from fitfed.server.checkpoint import (
    CheckpointError,
    CheckpointManifest,
    checkpoint_path,
    config_fingerprint,
    read_checkpoint,
    write_checkpoint,
)
from fitfed.server.run_record import (
    AUDIT_EVENT,
    AUDIT_RECORD,
    EVENTS_FILE,
    RECORD_DIR,
    ROUNDS_DIR,
    persisted_weights,
)

CHECKPOINTER_ID = "fitfed_checkpointer"  # its id in a job's server config, which `fitfed resume` looks for
LINEAGE_DIR = "lineage"  # <RECORD_DIR>/lineage/<job id>/: the run records of the jobs this one continues


class RoundCheckpointer(FLComponent):
    """Checkpoints the server's training state after every completed round, and resumes from one.

    Args:
        persistor_id: FLARE's PyTorch persistor (its checkpoint files hold the global and best models).
        controller_id: the training workflow.
        selector_id: FLARE's model selector, whose best metric is kept.
        generator_id: FedOpt's shareable generator, whose optimizer state is kept (absent in other jobs).
        train_config_file: the job's TrainConfig in the app's config folder.
    """

    def __init__(
        self,
        persistor_id: str = "persistor",
        controller_id: str = "controller",
        selector_id: str = "model_selector",
        generator_id: str = "shareable_generator",
        train_config_file: str = TRAIN_CONFIG_FILE,
    ):
        super().__init__()
        self.persistor_id = persistor_id
        self.controller_id = controller_id
        self.selector_id = selector_id
        self.generator_id = generator_id
        self.train_config_file = train_config_file
        self._record: Path | None = None
        self._manifest: dict[str, Any] = {}
        self._restore: dict[str, Any] | None = None
        self._best_round: int | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Resume at START_RUN (controller state once it is built), checkpoint after each persisted round."""
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == EventType.START_WORKFLOW and fl_ctx.get_prop(FLContextKey.WORKFLOW) == self.controller_id:
            self._restore_controller_state(fl_ctx)
        elif event_type == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
            self._best_round = _current_round(self._controller(fl_ctx))
        elif event_type == AppEventType.AFTER_LEARNABLE_PERSIST:
            self._checkpoint(fl_ctx)

    def _start(self, fl_ctx: FLContext) -> None:
        engine = fl_ctx.get_engine()
        workspace = engine.get_workspace()
        job_id = fl_ctx.get_job_id()
        self._record = Path(workspace.get_run_dir(job_id)) / RECORD_DIR
        config_dir = Path(workspace.get_app_config_dir(job_id))
        controller = self._controller(fl_ctx)
        start, count = _rounds(controller)
        name = type(controller).__name__
        plan = load_resume_plan(config_dir)
        self._manifest = {
            "job_id": job_id,
            "lineage_root": job_id if plan is None else plan.lineage_root,
            "num_rounds": start + count,
            "controller": name,
            "config_sha256": config_fingerprint((config_dir / self.train_config_file).read_text(), name, start + count),
        }
        if plan is None:
            return
        try:
            self._resume(plan, Path(workspace.get_run_dir(plan.resumed_from)) / RECORD_DIR, fl_ctx)
        except CheckpointError as e:
            reason = f"cannot resume job {plan.resumed_from}: {e}. Nothing was trained; no round was started over."
            self._audit({"event": "resume_refused", "resumed_from": plan.resumed_from, "reason": reason}, fl_ctx)
            self.system_panic(reason, fl_ctx)

    def _resume(self, plan: ResumePlan, source: Path, fl_ctx: FLContext) -> None:
        """Check the source's checkpoint against this job, then load it; raises CheckpointError with the reason."""
        manifest, state = read_checkpoint(checkpoint_path(source))
        if manifest.lineage_root != plan.lineage_root:
            raise CheckpointError(
                f"the checkpoint belongs to training {manifest.lineage_root}, not {plan.lineage_root}"
            )
        if manifest.config_sha256 != self._manifest["config_sha256"]:
            raise CheckpointError(
                "the configuration changed: this job's training config, workflow or number of rounds differs from "
                f"job {plan.resumed_from}'s ({manifest.controller}, {manifest.num_rounds} rounds). Resume with the "
                "original job's definition (`fitfed resume` downloads it), or start a new job"
            )
        if manifest.rounds_completed >= manifest.num_rounds:
            raise CheckpointError(f"all {manifest.num_rounds} rounds were completed; there is nothing to resume")
        self._copy_lineage(source, plan.resumed_from)
        controller = self._controller(fl_ctx)
        _set_rounds(controller, manifest.rounds_completed, manifest.num_rounds - manifest.rounds_completed)
        self._persistor_model(fl_ctx).load_state_dict(state["weights"])
        self._restore = {**state, "best_metric": manifest.best_metric}
        self._best_round = manifest.best_round
        original_hash, _ = last_hash(source / EVENTS_FILE)
        record = {
            "event": "run_resumed",
            "resumed_from": plan.resumed_from,
            "lineage_root": plan.lineage_root,
            "rounds_completed": manifest.rounds_completed,
            "next_round": manifest.rounds_completed,
            "num_rounds": manifest.num_rounds,
            "checkpoint_sha256": manifest.state_sha256,
            "resumed_from_events_hash": original_hash,
        }
        self._audit(record, fl_ctx)
        self.log_info(
            fl_ctx, f"resuming job {plan.resumed_from} after round {manifest.rounds_completed - 1} "
            f"(rounds {manifest.rounds_completed}..{manifest.num_rounds - 1} to go)",
        )  # fmt: skip

    def _copy_lineage(self, source: Path, resumed_from: str) -> None:
        """Carry the resumed job's run record (and its own lineage) into this one, after checking its chain."""
        assert self._record is not None
        try:
            verify_chain(source / EVENTS_FILE)
        except (ChainError, FileNotFoundError) as e:
            raise CheckpointError(f"job {resumed_from}'s run record is missing or fails its hash check ({e})") from None
        target = self._record / LINEAGE_DIR
        if (source / LINEAGE_DIR).is_dir():
            shutil.copytree(source / LINEAGE_DIR, target, dirs_exist_ok=True)
        (target / resumed_from).mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / EVENTS_FILE, target / resumed_from / EVENTS_FILE)
        if (source / ROUNDS_DIR).is_dir():
            shutil.copytree(source / ROUNDS_DIR, self._record / ROUNDS_DIR, dirs_exist_ok=True)

    def _restore_controller_state(self, fl_ctx: FLContext) -> None:
        if self._restore is None:
            return
        state, self._restore = self._restore, None
        controller = self._controller(fl_ctx)
        if "scaffold_global_controls" in state:
            controller._global_ctrl_weights = dict(state["scaffold_global_controls"])
        generator = fl_ctx.get_engine().get_component(self.generator_id)
        if "fedopt_optimizer" in state:
            generator.optimizer.load_state_dict(state["fedopt_optimizer"])
        if "fedopt_lr_scheduler" in state:
            generator.lr_scheduler.load_state_dict(state["fedopt_lr_scheduler"])
        selector = fl_ctx.get_engine().get_component(self.selector_id)
        if state.get("best_metric") is not None and hasattr(selector, "best_val_metric"):
            selector.best_val_metric = state["best_metric"]
        persistor = fl_ctx.get_engine().get_component(self.persistor_id)
        best = getattr(persistor, "_best_ckpt_save_path", None)
        if state.get("best_weights") is not None and best:
            torch.save({"model": state["best_weights"]}, best)

    def _checkpoint(self, fl_ctx: FLContext) -> None:
        """Write the checkpoint for the round just persisted; a failure is logged, never fatal to the round."""
        if self._record is None or not self._manifest:
            return
        controller = self._controller(fl_ctx)
        persistor = fl_ctx.get_engine().get_component(self.persistor_id)
        state: dict[str, Any] = {"weights": _weights(getattr(persistor, "_ckpt_save_path", None))}
        if not state["weights"]:
            return  # an HE job's persistor holds ciphertext: nothing this checkpoint can restore
        best = _weights(getattr(persistor, "_best_ckpt_save_path", None))
        if best:
            state["best_weights"] = best
        if hasattr(controller, "_global_ctrl_weights"):
            state["scaffold_global_controls"] = _tensors(controller._global_ctrl_weights)
        generator = fl_ctx.get_engine().get_component(self.generator_id)
        if getattr(generator, "optimizer", None) is not None:
            state["fedopt_optimizer"] = generator.optimizer.state_dict()
        if getattr(generator, "lr_scheduler", None) is not None:
            state["fedopt_lr_scheduler"] = generator.lr_scheduler.state_dict()
        selector = fl_ctx.get_engine().get_component(self.selector_id)
        best_metric = getattr(selector, "best_val_metric", None)
        finite = best_metric is not None and float(best_metric) != float("-inf")
        manifest = CheckpointManifest(
            **self._manifest,
            rounds_completed=_current_round(controller) + 1,
            best_metric=float(best_metric) if finite else None,
            best_round=self._best_round if finite else None,
            events_hash=last_hash(self._record / EVENTS_FILE)[0],
        )
        try:
            write_checkpoint(checkpoint_path(self._record), manifest, state)
        except OSError as e:
            done = manifest.rounds_completed - 1
            self.log_error(fl_ctx, f"could not write the resume checkpoint after round {done}: {e}")

    def _controller(self, fl_ctx: FLContext) -> Any:
        return fl_ctx.get_engine().get_component(self.controller_id)

    def _persistor_model(self, fl_ctx: FLContext) -> torch.nn.Module:
        model = fl_ctx.get_engine().get_component(self.persistor_id).model
        return fl_ctx.get_engine().get_component(model) if isinstance(model, str) else model

    def _audit(self, record: dict[str, Any], fl_ctx: FLContext) -> None:
        fl_ctx.set_prop(AUDIT_RECORD, record, private=True, sticky=False)
        self.fire_event(AUDIT_EVENT, fl_ctx)


def _rounds(controller: Any) -> tuple[int, int]:
    """The workflow's (first round, rounds to run): FLARE's FedAvg family and ScatterAndGather name them apart."""
    if isinstance(controller, ScatterAndGather):
        return controller._start_round, controller._num_rounds
    return getattr(controller, "start_round", 0), controller.num_rounds


def _set_rounds(controller: Any, start: int, count: int) -> None:
    if isinstance(controller, ScatterAndGather):
        controller._start_round, controller._num_rounds = start, count
    else:
        controller.start_round, controller.num_rounds = start, count


def _current_round(controller: Any) -> int:
    current = controller._current_round if isinstance(controller, ScatterAndGather) else controller.current_round
    return int(current or 0)


def _weights(checkpoint: str | None) -> dict[str, torch.Tensor]:
    """A FLARE PyTorch checkpoint's weights as tensors; empty if there is none or it is HE ciphertext."""
    if not checkpoint or not Path(checkpoint).is_file():
        return {}
    weights = persisted_weights(Path(checkpoint))
    return {} if encrypted_layers(weights) is not None else _tensors(weights)


def _tensors(values: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).clone() for k, v in values.items()}
