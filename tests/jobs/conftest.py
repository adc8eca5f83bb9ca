"""Fixtures for running the job definitions in jobs/ in NVFlare's simulator."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from fitfed.datasets.churn import write_clubs
from fitfed.jobs import load_job_module

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"


def job_module(name: str) -> ModuleType:
    return load_job_module(JOBS_DIR / f"{name}.py")


@pytest.fixture(scope="session")
def club_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic clubs, as `make demo` writes them."""
    folder = tmp_path_factory.mktemp("clubs")
    write_clubs(folder, 3, seed=0)
    return folder
