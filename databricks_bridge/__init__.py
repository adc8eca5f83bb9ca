"""databricks_bridge: fitfed's link from a FLARE federation to the lakehouse.

``export_job`` (the ``fitfed export`` command) takes a finished or running job's result and
writes one MLflow run per job, registers the final global model under a Unity Catalog name
with a ``champion`` alias, and appends the job's audit trail (FLARE's ``audit.log`` lines and
fitfed's hash-chained run record) to the table ``<catalog>.<schema>.fl_audit_events``.
By default all of it goes to an embedded local lakehouse; with Databricks settings, to a
workspace. See docs/bridge.md.

Example:
    >>> from databricks_bridge import BridgeSettings, export_job
    >>> report = export_job(Path("workspace/fedavg_churn"), BridgeSettings(state_dir=Path("lakehouse")))
"""

from typing import Any

from databricks_bridge.errors import BridgeError, TamperedTrailError
from databricks_bridge.settings import BridgeSettings, settings_from_environment

__all__ = [
    "BridgeError",
    "BridgeSettings",
    "ExportReport",
    "TamperedTrailError",
    "export_job",
    "settings_from_environment",
]


def __getattr__(name: str) -> Any:
    """Import the exporter (MLflow, torch, deltalake) on first use, so ``fitfed --help`` stays fast."""
    if name in ("export_job", "ExportReport"):
        from databricks_bridge import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'databricks_bridge' has no attribute {name!r}")
