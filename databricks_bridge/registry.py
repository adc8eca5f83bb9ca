"""The final global model as an MLflow model, registered under a Unity Catalog name, and the champion rule.

The model is logged with pickle serialization: MLflow's default ``pt2`` format
(``torch.export``) does not round-trip fitfed's modules. Its signature names the input columns
(the sidecar's feature order) and its input example is zeros, so no member data reaches
MLflow. fitfed's model classes are pickled by value, so the model loads where fitfed is not
installed (Model Serving, a notebook) and loading it adds nothing to ``sys.path``.

The alias ``champion`` moves to a new version only if that version beats the current champion
on the job's validation metric (the mean over clubs of the final model's key metric), for the
same metric and the same task spec; otherwise the run records why it did not move.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version

import cloudpickle
import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from databricks_bridge.model_files import GlobalModel, input_example
from fitfed import models as fitfed_models

CHAMPION = "champion"


@dataclass(frozen=True)
class ChampionDecision:
    """Whether the alias moved to the new version, and why (or why not)."""

    moved: bool
    reason: str


def log_model(model: GlobalModel, run_id: str) -> mlflow.models.model.ModelInfo:
    """Log ``model`` to the run as ``global_model``, pickle-serialized, with signature, example and sidecar."""
    example = input_example(model)
    with torch.no_grad():
        output = model.module(torch.tensor(example.to_numpy())).numpy()
    cloudpickle.register_pickle_by_value(fitfed_models)  # the classes travel inside the pickle
    try:
        with _expected_warnings_silenced(), mlflow.start_run(run_id=run_id, log_system_metrics=False):
            return mlflow.pytorch.log_model(
                model.module,
                name="global_model",
                signature=infer_signature(example, output),
                input_example=example,
                serialization_format="pickle",
                extra_files=[str(model.sidecar_path)],
                pip_requirements=_requirements(),
                metadata={"fitfed_feature_names": model.feature_names, "fitfed_output": model.sidecar.get("output")},
            )
    finally:
        cloudpickle.unregister_pickle_by_value(fitfed_models)


@contextmanager
def _expected_warnings_silenced() -> Iterator[None]:
    """Hide two warnings that are expected here and would only alarm the reader.

    MLflow warns that pickle is unsafe to load from untrusted sources: fitfed uses it on purpose
    (see the module docstring; docs/bridge.md tells who loads the model). torch warns that
    MLflow's check of the input example makes a tensor from pandas' read-only array.
    """
    pickle_warning = _DropMessages("Saving pytorch model by Pickle")
    logger = logging.getLogger("mlflow.pytorch")
    logger.addFilter(pickle_warning)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            yield
    finally:
        logger.removeFilter(pickle_warning)


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Register the logged model as a new version of ``name`` with lineage tags; returns the version."""
    return str(mlflow.register_model(model_uri, name, tags=tags).version)


def decide_champion(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> ChampionDecision:
    """Move ``champion`` to ``version`` if it beats the current champion; say why or why not."""
    current = _champion(client, name)
    value = tags.get("fitfed_validation_value")
    metric = tags["fitfed_validation_metric"]
    if value is None:
        return ChampionDecision(False, f"v{version} has no final {metric} (no club evaluated the final model)")
    if current is None:
        return _move(client, name, version, f"v{version} is the first champion ({metric} {float(value):.4f})")
    theirs = current.tags or {}
    if theirs.get("fitfed_validation_metric") != metric or theirs.get("fitfed_validation_value") is None:
        return ChampionDecision(
            False, f"champion v{current.version} was not validated on {metric}; the two cannot be compared"
        )
    if theirs.get("fitfed_task_spec_sha256_16") != tags.get("fitfed_task_spec_sha256_16"):
        return ChampionDecision(False, f"champion v{current.version} was trained for a different task spec")
    ours, best = float(value), float(theirs["fitfed_validation_value"])
    higher = tags.get("fitfed_validation_higher_is_better", "true") == "true"
    if (ours > best) if higher else (ours < best):
        return _move(client, name, version, f"v{version} {metric} {ours:.4f} beats v{current.version} {best:.4f}")
    return ChampionDecision(
        False, f"v{version} {metric} {ours:.4f} does not beat champion v{current.version} {best:.4f}"
    )


def _move(client: MlflowClient, name: str, version: str, reason: str) -> ChampionDecision:
    client.set_registered_model_alias(name, CHAMPION, version)
    return ChampionDecision(True, reason)


def _champion(client: MlflowClient, name: str):  # noqa: ANN202 - ModelVersion | None
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _requirements() -> list[str]:
    """Pinned from this environment, so MLflow need not infer them (which loads the model in a subprocess)."""
    return [f"torch=={version('torch').split('+')[0]}", f"pydantic=={version('pydantic')}",
            f"cloudpickle=={version('cloudpickle')}", f"pandas=={version('pandas')}"]  # fmt: skip
