"""Fixtures for the bridge: crafted job results, a local lakehouse, the loopback Databricks fake, live opt-in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridge_jobs import crafted_job
from fake_databricks import FAKE_TOKEN, FakeDatabricks

from databricks_bridge import BridgeSettings

LIVE_VARIABLES = ("DATABRICKS_HOST", "DATABRICKS_WAREHOUSE_ID", "FITFED_UC_CATALOG", "FITFED_UC_SCHEMA")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Live tests run only when asked for (-m databricks_live) and given a workspace."""
    asked = "databricks_live" in (config.getoption("-m") or "")
    missing = [v for v in LIVE_VARIABLES if not os.environ.get(v)]
    if not (os.environ.get("DATABRICKS_TOKEN") or os.environ.get("DATABRICKS_CONFIG_PROFILE")):
        missing.append("DATABRICKS_TOKEN or DATABRICKS_CONFIG_PROFILE")
    for item in items:
        if "databricks_live" not in item.keywords:
            continue
        if not asked:
            item.add_marker(pytest.mark.skip(reason="live Databricks test: opt in with -m databricks_live"))
        elif missing:
            item.add_marker(pytest.mark.skip(reason=f"live Databricks test: set {', '.join(missing)}"))


@pytest.fixture
def lakehouse(tmp_path: Path) -> BridgeSettings:
    """Settings for an embedded lakehouse of the test's own."""
    return BridgeSettings(state_dir=tmp_path / "lakehouse")


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A finished three-round, three-club job result."""
    return crafted_job(tmp_path / "job")


@pytest.fixture
def fake_databricks(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDatabricks]:
    """The loopback fake, with the environment the real clients read pointing at it; always stopped."""
    for name in (
        "DATABRICKS_CONFIG_PROFILE",
        "DATABRICKS_CLIENT_ID",
        "DATABRICKS_CLIENT_SECRET",
        "DATABRICKS_AUTH_TYPE",
    ):
        monkeypatch.delenv(name, raising=False)
    with FakeDatabricks() as fake:
        monkeypatch.setenv("DATABRICKS_HOST", fake.url)
        monkeypatch.setenv("DATABRICKS_TOKEN", FAKE_TOKEN)
        yield fake
        assert fake.unexpected == [], f"calls the fake does not know: {fake.unexpected}"
