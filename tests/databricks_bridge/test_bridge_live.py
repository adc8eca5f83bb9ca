"""Opt-in: a real export to a Databricks workspace (pytest -m databricks_live, with credentials set).

Needs DATABRICKS_HOST with DATABRICKS_TOKEN (or DATABRICKS_CONFIG_PROFILE), DATABRICKS_WAREHOUSE_ID,
and FITFED_UC_CATALOG/FITFED_UC_SCHEMA naming a schema the identity may create a model, a table
and a Volume in. Each run registers one more model version and adds one job's rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bridge_jobs import crafted_job

from databricks_bridge import export_job, settings_from_environment

pytestmark = pytest.mark.databricks_live


def test_live_export_and_reexport(tmp_path: Path):
    # Prepare
    settings = settings_from_environment(target="databricks", experiment="/Shared/fitfed-live-test")
    job = crafted_job(tmp_path / "job", rounds=2)

    # Execute
    first = export_job(job, settings)
    second = export_job(job, settings)

    # Assert
    assert first.model_version is not None and first.audit_rows > 0
    assert second.nothing_new and second.run_id == first.run_id
