"""Where an export goes: the embedded local lakehouse (the default) or a Databricks workspace.

Secrets are never settings. In Databricks mode the host and token (or a profile of
``~/.databrickscfg``) come from the environment exactly as the Databricks CLI, SDK and MLflow
read them (``DATABRICKS_HOST``, ``DATABRICKS_TOKEN``, ``DATABRICKS_CONFIG_PROFILE``); the
bridge passes nothing of them on, and writes none of them anywhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from databricks_bridge.errors import BridgeError

Target = Literal["local", "databricks"]
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
DEFAULT_STATE_DIR = Path("fitfed_lakehouse")
LOCAL_EXPERIMENT = "fitfed"
DATABRICKS_EXPERIMENT = "/Shared/fitfed"


class BridgeSettings(BaseModel):
    """Where and under which names a job is exported.

    Args:
        target: ``local`` (embedded: sqlite MLflow and Delta tables in ``state_dir``) or ``databricks``.
        state_dir: the local state folder (local target only).
        catalog: Unity Catalog catalog of the model and the audit table.
        schema_name: Unity Catalog schema of the model and the audit table.
        model_name: the registered model's last name part; default ``<task>_model``.
        experiment: MLflow experiment; default ``fitfed`` (local) or ``/Shared/fitfed`` (Databricks).
        warehouse_id: the SQL warehouse that runs the audit MERGE (Databricks only).
        profile: a ``~/.databrickscfg`` profile, instead of ``DATABRICKS_HOST``/``DATABRICKS_TOKEN``.
        volume: the Unity Catalog Volume that stages audit rows (Databricks only).
        log_timezone: the IANA zone FLARE's audit.log times were written in; default this machine's.

    Example:
        >>> BridgeSettings(state_dir=Path("lakehouse")).registered_model("churn")
        'main.fitfed.churn_model'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Target = "local"
    state_dir: Path = DEFAULT_STATE_DIR
    catalog: str = Field(default="main", pattern=_IDENTIFIER)
    schema_name: str = Field(default="fitfed", pattern=_IDENTIFIER)
    model_name: str | None = Field(default=None, pattern=_IDENTIFIER)
    experiment: str | None = None
    warehouse_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]+$")
    profile: str | None = None
    volume: str = Field(default="fitfed_audit_staging", pattern=_IDENTIFIER)
    log_timezone: str | None = None

    @field_validator("log_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"log_timezone={value!r}: not an IANA time zone such as 'Europe/Berlin' or 'UTC'"
                ) from None
        return value

    @model_validator(mode="after")
    def _databricks_needs_a_warehouse(self) -> BridgeSettings:
        if self.target == "databricks" and not self.warehouse_id:
            raise ValueError(
                "target='databricks' needs warehouse_id (a SQL warehouse for the audit table's MERGE): "
                "pass --warehouse-id or set DATABRICKS_WAREHOUSE_ID"
            )
        return self

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment runs go into."""
        return self.experiment or (DATABRICKS_EXPERIMENT if self.target == "databricks" else LOCAL_EXPERIMENT)

    @property
    def timezone(self) -> ZoneInfo | None:
        """The zone of FLARE's audit.log times (None: this machine's)."""
        return ZoneInfo(self.log_timezone) if self.log_timezone else None

    def registered_model(self, task: str) -> str:
        """The three-level Unity Catalog name of the model."""
        model = self.model_name or f"{re.sub(r'[^A-Za-z0-9_]', '_', task)}_model"
        return f"{self.catalog}.{self.schema_name}.{model}"

    def audit_table(self) -> str:
        """The three-level name of the audit table."""
        return f"{self.catalog}.{self.schema_name}.fl_audit_events"

    def check_credentials(self) -> None:
        """In Databricks mode, fail early when no host or profile is configured (the values are never read here).

        Raises:
            BridgeError: naming the variables to set.
        """
        if self.target != "databricks" or self.profile or os.environ.get("DATABRICKS_CONFIG_PROFILE"):
            return
        if not os.environ.get("DATABRICKS_HOST"):
            raise BridgeError(
                "Databricks mode needs a workspace: set DATABRICKS_HOST and DATABRICKS_TOKEN (or another auth type "
                "the Databricks SDK reads from the environment), or pass --profile NAME from ~/.databrickscfg"
            )


def settings_from_environment(**overrides: object) -> BridgeSettings:
    """Settings from ``FITFED_*``/``DATABRICKS_*`` variables, then ``overrides`` (unset ones ignored).

    Raises:
        BridgeError: a setting that does not validate, with pydantic's explanation.
    """
    env = {
        "state_dir": os.environ.get("FITFED_LAKEHOUSE"),
        "catalog": os.environ.get("FITFED_UC_CATALOG"),
        "schema_name": os.environ.get("FITFED_UC_SCHEMA"),
        "warehouse_id": os.environ.get("DATABRICKS_WAREHOUSE_ID"),
        "profile": os.environ.get("DATABRICKS_CONFIG_PROFILE"),
    }
    values = {k: v for k, v in {**env, **overrides}.items() if v is not None}
    try:
        return BridgeSettings(**values)
    except ValueError as e:
        raise BridgeError(f"export settings: {e}") from None
