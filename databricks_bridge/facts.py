"""What a job was: the MLflow params and registry lineage, read from its configs and run record.

Differential privacy, homomorphic encryption and robust aggregation are read from the job's
own config where present and recorded as ``off`` (or FLARE's built-in aggregation) otherwise:

- DP: a ``dp`` (or ``privacy.dp``) object in ``fitfed_train.json`` with ``noise_multiplier``,
  ``clip_norm``, ``target_epsilon``, ``target_delta``; or a FLARE privacy filter in the configs.
  ε spent is the largest ``privacy_epsilon`` (or ``dp_epsilon``/``epsilon``) any site reported.
- HE: see :mod:`databricks_bridge.model_files`.
- Aggregator: a server component whose id or class names an aggregator, else FLARE's built-in
  weighted average.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from databricks_bridge.job_result import SERVER_CONFIG, JobResult
from databricks_bridge.metrics import epsilon_spent, rounds_completed
from databricks_bridge.model_files import component_paths, is_encrypted

OFF = "off"
_TRAIN_PARAMS = ("algorithm", "local_steps", "local_epochs", "batch_size", "optimizer", "learning_rate", "momentum",
                 "seed")  # fmt: skip
_DP_FIELDS = ("noise_multiplier", "clip_norm", "target_epsilon", "target_delta")
# Differential-privacy filters a job's configs may name: fitfed's, and FLARE's own.
_DP_FILTERS = frozenset({"GaussianUpdateDP", "PercentilePrivacy", "SVTPrivacy"})
_CONTROLLER_PARAMS = {"num_rounds": "num_rounds", "mu": "fedprox_mu"}


@dataclass(frozen=True)
class KeyMetric:
    """The job's validation metric: what FLARE's model selector ranks models by."""

    name: str
    higher_is_better: bool


def static_params(job: JobResult) -> dict[str, str]:
    """Params known from the job's configs: the same at every export, so logged at the first."""
    train = job.train_config
    params: dict[str, Any] = {k: train.get(k) for k in _TRAIN_PARAMS}
    params["task"] = (train.get("task") or {}).get("name")
    params["model"] = (train.get("model") or {}).get("name", "logreg")
    if params["model"] == "mlp":
        params["hidden_units"] = (train.get("model") or {}).get("hidden_units")
    params.update(_controller_params(job))
    params["min_clients"] = job.meta.get("min_clients")
    params["min_updates"] = job.events[0].get("min_updates")
    params.update(dp_settings(job))
    params["he"] = "on" if is_encrypted(job, None) else OFF
    params["aggregator"] = aggregator(job)
    params["key_metric"] = key_metric(job).name
    return {k: _text(v) for k, v in params.items() if v is not None}


def final_params(job: JobResult, sidecar: dict[str, Any] | None) -> dict[str, str]:
    """Params known once the run finished: clubs, rounds done (by the whole training), ε spent, the task spec hash."""
    events = job.training_events
    clubs = (sidecar or {}).get("sites") or sorted({e["site"] for e in events if e.get("event") == "site_update"})
    epsilon = epsilon_spent(events)
    params = {
        "clubs": ",".join(clubs),
        "num_clubs": len(clubs),
        "rounds_completed": rounds_completed(events),
        "dp_epsilon_spent": OFF if epsilon is None else round(epsilon, 6),
    }
    if sidecar and sidecar.get("task_spec_sha256_16"):
        params["task_spec_sha256_16"] = sidecar["task_spec_sha256_16"]
    return {k: _text(v) for k, v in params.items()}


def dp_settings(job: JobResult) -> dict[str, Any]:
    """``dp`` on/off and its settings, from the train config or a FLARE privacy filter."""
    train = job.train_config
    dp = train.get("dp") or (train.get("privacy") or {}).get("dp")
    if isinstance(dp, dict) and dp.get("enabled", True):
        settings = {f"dp_{k}": dp.get(k) for k in _DP_FIELDS}
        settings["dp_clip_norm"] = settings["dp_clip_norm"] or dp.get("max_grad_norm")
        return {"dp": "on", **settings}
    filters = [name for name in (p.rsplit(".", 1)[-1] for p in component_paths(job)) if name in _DP_FILTERS]
    if filters:
        return {"dp": f"on ({', '.join(sorted(set(filters)))})"}
    # A club's strict scope applies DP outside the job's configs; its updates then report their epsilon.
    return {"dp": "on (club privacy scope)" if epsilon_spent(job.training_events) is not None else OFF}


def aggregator(job: JobResult) -> str:
    """The server's aggregator: a component named for aggregation, else FLARE's built-in weighted average."""
    server = job.configs.get(SERVER_CONFIG, {})
    for component in server.get("components", []):
        path, ident = str(component.get("path", "")), str(component.get("id", ""))
        if "aggregat" in ident.lower() or "aggregator" in path.rsplit(".", 1)[-1].lower():
            args = json.dumps(component.get("args") or {}, sort_keys=True)
            return f"{path.rsplit('.', 1)[-1]} {args}"[:500]
    return "weighted_average (FLARE built-in)"


def key_metric(job: JobResult) -> KeyMetric:
    """The metric FLARE's IntimeModelSelector ranks by (fitfed's jobs: accuracy, higher is better)."""
    server = job.configs.get(SERVER_CONFIG, {})
    for component in server.get("components", []):
        if str(component.get("path", "")).endswith("IntimeModelSelector"):
            args = component.get("args") or {}
            return KeyMetric(args.get("key_metric", "accuracy"), not args.get("negate_key_metric", False))
    return KeyMetric("accuracy", True)


def lineage_tags(job: JobResult, params: dict[str, str], validation: float | None, metric: KeyMetric) -> dict[str, str]:
    """Tags for a registered model version: where it came from, and the audit trail head that proves it."""
    tags = {
        "fitfed_job_id": job.job_key,
        "fitfed_job_name": job.job_name,
        "fitfed_run_uid": job.lineage_uid,
        "fitfed_lineage_root": job.lineage_root,
        "fitfed_job_ids": ",".join(job.job_ids),
        "fitfed_clubs": params.get("clubs", ""),
        "fitfed_rounds": params.get("rounds_completed", ""),
        "fitfed_algorithm": params.get("algorithm", ""),
        "fitfed_epsilon": params.get("dp_epsilon_spent", OFF),
        "fitfed_audit_head": job.head_hash,
        "fitfed_task_spec_sha256_16": params.get("task_spec_sha256_16", ""),
        "fitfed_validation_metric": metric.name,
        "fitfed_validation_higher_is_better": str(metric.higher_is_better).lower(),
    }
    if validation is not None:
        tags["fitfed_validation_value"] = repr(validation)
    return tags


def _controller_params(job: JobResult) -> dict[str, Any]:
    server = job.configs.get(SERVER_CONFIG, {})
    for workflow in server.get("workflows", []):
        args = workflow.get("args") or {}
        if "GlobalModelEval" in str(workflow.get("path", "")):
            continue
        found = {name: args[key] for key, name in _CONTROLLER_PARAMS.items() if key in args}
        found.setdefault("num_rounds", _default_rounds(str(workflow.get("path", ""))))
        found["controller"] = str(workflow.get("path", "")).rsplit(".", 1)[-1]
        return found
    return {}


def _default_rounds(path: str) -> Any:
    """The controller's own num_rounds default, for configs that leave it out (FLARE omits defaults on export)."""
    import importlib
    import inspect

    module_name, _, class_name = path.rpartition(".")
    if not module_name.startswith("nvflare."):  # never import what a downloaded config names, beyond FLARE's own
        return None
    try:
        controller = getattr(importlib.import_module(module_name), class_name)
        for cls in controller.__mro__:  # FedAvg takes num_rounds through **kwargs from a base class
            parameter = inspect.signature(cls.__init__).parameters.get("num_rounds")
            if parameter is not None:
                return parameter.default
    except (ImportError, AttributeError, ValueError):
        pass
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
