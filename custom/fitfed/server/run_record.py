"""The server's record of a fitfed run: per-site metrics each round, and the global model with its sidecar.

FLARE's own persistor keeps the weights; what it does not keep is which sites contributed,
what each measured, and what a model needs to be used later (feature order, encoding, task
hash). This component listens to the workflow's events and writes that next to the job's
results, so it travels with ``nvflare job download`` and the simulator workspace alike.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.dxo import MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS

from fitfed.aggregation.summary import REPORT_KEY
from fitfed.audit import chain_record, last_hash
from fitfed.config import TRAIN_CONFIG_FILE, TrainConfig
from fitfed.privacy.he import encrypted_layers, save_ciphertext_model
from fitfed.privacy_scope import SCOPE_HEADER
from fitfed.secagg.club import MASKING_ALGORITHM
from fitfed.spec import TaskSpec

RECORD_DIR = "fitfed"
EVENTS_FILE = "events.jsonl"
# A server component that has its own audit record to add fires AUDIT_EVENT with the record (a JSON-able dict,
# never secret material) in the AUDIT_RECORD property; the recorder chains it into events.jsonl.
AUDIT_EVENT = "fitfed.audit_record"
AUDIT_RECORD = "fitfed.audit_record_data"
FINAL_MODEL = "global_model"
BEST_MODEL = "best_global_model"
ROUNDS_DIR = "rounds"  # <RECORD_DIR>/rounds/global_model_round_<r>.pt: the global model after r rounds


class RunRecorder(FLComponent):
    """Records each site's metrics per round and writes the final and best global models with sidecars.

    Args:
        min_updates: fewest accepted site updates a round may aggregate; below it the job stops
            rather than build a global model from too few sites.
        persistor_id: the FLARE persistor whose checkpoints hold the global weights.
        train_config_file: the job's TrainConfig, shipped in the server app's config folder.
    """

    def __init__(self, min_updates: int, persistor_id: str = "persistor", train_config_file: str = TRAIN_CONFIG_FILE):
        super().__init__()
        if min_updates < 1:
            raise ValueError(f"min_updates={min_updates!r}: expected at least 1")
        self.min_updates = min_updates
        self.persistor_id = persistor_id
        self.train_config_file = train_config_file
        self._out: Path | None = None
        self._chain: tuple[str, int] = ("", 0)
        self._rounds_completed = 0
        self._round: int | None = None
        self._accepted: list[str] = []
        self._sites: set[str] = set()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Dispatch the workflow events this recorder cares about."""
        handlers = {
            EventType.START_RUN: self._start,
            AppEventType.ROUND_STARTED: self._round_started,
            AppEventType.AFTER_CONTRIBUTION_ACCEPT: self._contribution,
            AppEventType.BEFORE_AGGREGATION: self._check_enough_sites,
            AppEventType.AFTER_AGGREGATION: self._round_done,
            AppEventType.AFTER_LEARNABLE_PERSIST: self._keep_round_model,
            AppEventType.VALIDATION_RESULT_RECEIVED: self._final_evaluation,
            EventType.CLIENT_DISCONNECTED: self._site_dropped,
            EventType.END_RUN: self._finish,
            AUDIT_EVENT: self._component_record,
        }
        handler = handlers.get(event_type)
        if handler is not None:
            handler(fl_ctx)

    def _start(self, fl_ctx: FLContext) -> None:
        workspace = fl_ctx.get_engine().get_workspace()
        job_id = fl_ctx.get_job_id()
        self._out = Path(workspace.get_run_dir(job_id)) / RECORD_DIR
        self._out.mkdir(parents=True, exist_ok=True)
        self._chain = last_hash(self._out / EVENTS_FILE)
        self._config_path = Path(workspace.get_app_config_dir(job_id)) / self.train_config_file
        self._append({"event": "run_started", "job_id": job_id, "min_updates": self.min_updates})
        self.log_info(fl_ctx, f"fitfed run record in {self._out} (min_updates={self.min_updates})")

    def _round_started(self, fl_ctx: FLContext) -> None:
        self._round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        self._accepted = []
        self._append({"event": "round_started", "round": self._round})

    def _follow_round(self, fl_ctx: FLContext) -> None:
        """Notice a new round from the context: not every controller (SCAFFOLD's) fires ROUND_STARTED."""
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if current is not None and current != self._round:
            self._round_started(fl_ctx)

    def _contribution(self, fl_ctx: FLContext) -> None:
        self._follow_round(fl_ctx)
        site = _peer_name(fl_ctx)
        accepted = bool(fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED, False))
        result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT)
        record: dict[str, Any] = {"event": "site_update", "round": self._round, "site": site, "accepted": accepted}
        if isinstance(result, Shareable):
            record["privacy_scope"] = result.get_header(SCOPE_HEADER)  # None: the club applied no fitfed scope
            model = FLModelUtils.from_shareable(result)
            record["metrics"] = model.metrics or {}
            record["weight"] = (model.meta or {}).get("NUM_STEPS_CURRENT_ROUND")  # steps, or rows (weight_by)
            record["payload"] = _payload(result)
        else:
            record["reason"] = "the site's task failed; see that site's log"
        if accepted:
            self._accepted.append(site)
        self._sites.add(site)
        self._append(record)

    def _component_record(self, fl_ctx: FLContext) -> None:
        record = fl_ctx.get_prop(AUDIT_RECORD)
        if isinstance(record, dict) and isinstance(record.get("event"), str):
            if record["event"] == "run_resumed":  # a continuation's models count the rounds before it too
                self._rounds_completed = int(record["rounds_completed"])
            self._append(record)

    def _check_enough_sites(self, fl_ctx: FLContext) -> None:
        if len(self._accepted) >= self.min_updates:
            return
        reason = (
            f"round {self._round}: only {len(self._accepted)} site update(s) were usable ({self._accepted}), "
            f"fewer than min_updates={self.min_updates}; stopping so that no global model is built from too few sites"
        )
        self._append({"event": "round_aborted", "round": self._round, "reason": reason})
        self.system_panic(reason, fl_ctx)

    def _site_dropped(self, fl_ctx: FLContext) -> None:
        site = fl_ctx.get_prop(FLContextKey.DISCONNECTED_CLIENT_NAME)
        reason = (
            "FLARE deemed the site disconnected (no heartbeat); rounds go on without it while min_updates holds. "
            "It cannot rejoin this job even if it restarts (FLARE starts a site's part in a job only when the job "
            "is deployed): it takes part again in the next job, or in a `fitfed resume` continuation"
        )
        self._append({"event": "site_dropped", "round": self._round, "site": site, "reason": reason})
        self.log_warning(fl_ctx, f"site {site} dropped out in round {self._round}")

    def _round_done(self, fl_ctx: FLContext) -> None:
        result = fl_ctx.get_prop(AppConstants.AGGREGATION_RESULT)
        if isinstance(result, FLModel) and REPORT_KEY in (result.meta or {}):  # a fitfed robust aggregator's report
            self._append({"event": "aggregation_report", "round": self._round, **result.meta[REPORT_KEY]})
        self._append({"event": "round_completed", "round": self._round, "sites": sorted(self._accepted)})
        self._rounds_completed += 1

    def _final_evaluation(self, fl_ctx: FLContext) -> None:
        result = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)
        model = fl_ctx.get_prop(AppConstants.MODEL_OWNER)
        site = fl_ctx.get_prop(AppConstants.DATA_CLIENT)
        record: dict[str, Any] = {"event": "global_evaluation", "model": model, "site": str(site)}
        if isinstance(result, Shareable) and result.get_return_code() in (None, "OK"):
            record["metrics"] = FLModelUtils.from_shareable(result).metrics or {}
        else:
            record["reason"] = "the site could not evaluate the model; see that site's log"
        self._append(record)

    def _finish(self, fl_ctx: FLContext) -> None:
        if self._out is None:
            return
        persistor = fl_ctx.get_engine().get_component(self.persistor_id)
        written = []
        for name, attr in ((FINAL_MODEL, "_ckpt_save_path"), (BEST_MODEL, "_best_ckpt_save_path")):
            checkpoint = getattr(persistor, attr, None)
            if checkpoint and Path(checkpoint).is_file():
                self._write_model(Path(checkpoint), name, fl_ctx)
                written.append(name)
        self._append({"event": "run_finished", "models": written})

    def _keep_round_model(self, fl_ctx: FLContext) -> None:
        """Keep every round's global model: the persistor overwrites its one checkpoint each round."""
        checkpoint = getattr(fl_ctx.get_engine().get_component(self.persistor_id), "_ckpt_save_path", None)
        if self._out is None or self._round is None or not checkpoint or not Path(checkpoint).is_file():
            return
        (self._out / ROUNDS_DIR).mkdir(exist_ok=True)
        _save_weights(Path(checkpoint), self._out / ROUNDS_DIR / f"{FINAL_MODEL}_round_{self._round + 1}.pt")

    def _write_model(self, checkpoint: Path, name: str, fl_ctx: FLContext) -> None:
        """Save the persisted weights (a plain state dict, or HE ciphertext) plus the sidecar a later user needs."""
        assert self._out is not None
        encrypted = _save_weights(checkpoint, self._out / f"{name}.pt")
        config = TrainConfig.model_validate_json(self._config_path.read_text())
        job_meta = fl_ctx.get_prop(FLContextKey.JOB_META) or {}
        sidecar = model_sidecar(
            config,
            job_id=fl_ctx.get_job_id(),
            job_name=job_meta.get("name", ""),
            rounds=self._rounds_completed,
            sites=sorted(self._sites),
        )
        if encrypted:
            sidecar.update(encrypted=True, he={"enabled": True, "scheme": "CKKS"})
        (self._out / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        self.log_info(fl_ctx, f"wrote {self._out / name}.pt and its sidecar")

    def _append(self, record: dict[str, Any]) -> None:
        """Append one hash-chained event (see :mod:`fitfed.audit`), so any later edit is detectable."""
        if self._out is None:
            return
        previous, sequence = self._chain
        chained = chain_record({"time": round(time.time(), 3), **record}, previous, sequence)
        with open(self._out / EVENTS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(chained, default=str) + "\n")
        self._chain = (chained["hash"], sequence + 1)


def model_sidecar(config: TrainConfig, *, job_id: str, job_name: str, rounds: int, sites: list[str]) -> dict[str, Any]:
    """Everything needed to use the weights without guessing: task, inputs, encoding and provenance."""
    spec = config.task
    return {
        "format": "fitfed-model/1",
        "job_id": job_id,
        "job_name": job_name,
        "task": spec.name,
        "task_spec_sha256_16": spec.fingerprint(),
        "model": config.model.model_dump(),
        "algorithm": config.algorithm,
        "feature_names": spec.encoded_feature_names(),
        "normalisation": _normalisation(spec),
        "output": "one logit; sigmoid gives P(label in spec.label.positive)",
        "rounds": rounds,
        "sites": sites,
    }


def _normalisation(spec: TaskSpec) -> dict[str, str]:
    numeric = "standardised with each site's own training mean and std" if spec.preprocessing.standardize else "raw"
    dropped = ", first value dropped" if spec.preprocessing.one_hot_drop_first else ""
    return {"numeric": numeric, "categorical": f"one-hot over the spec's values{dropped}", "boolean": "0/1"}


def persisted_weights(checkpoint: Path) -> dict[str, Any]:
    """The weights in a FLARE PyTorch persistor's checkpoint: a state dict, or an HE job's ciphertext layers."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return state.get("model", state)


def _save_weights(checkpoint: Path, out: Path) -> bool:
    """Copy a FLARE PyTorch checkpoint's weights to ``out``: a plain state dict, or ciphertext for an HE job.

    Returns:
        Whether the weights are HE ciphertext (which only a key-holding club can decrypt).
    """
    weights = persisted_weights(checkpoint)
    layers = encrypted_layers(weights)
    if layers is not None:
        save_ciphertext_model(layers, out)
        return True
    torch.save({k: torch.as_tensor(v) for k, v in weights.items()}, out)
    return False


def _payload(result: Shareable) -> str:
    """What the server received from a club: "ckks" ciphertext (HE), a "masked" vector, or "plain" weights."""
    try:
        algorithm = from_shareable(result).get_meta_prop(MetaKey.PROCESSED_ALGORITHM)
    except ValueError:
        return "none"
    return {HE_ALGORITHM_CKKS: "ckks", MASKING_ALGORITHM: "masked"}.get(algorithm, "plain")


def _peer_name(fl_ctx: FLContext) -> str:
    peer = fl_ctx.get_peer_context()
    return peer.get_identity_name() if peer is not None else "unknown"
