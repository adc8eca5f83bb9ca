"""Test-wide isolation: a temporary HOME, and no process outlives the test that started it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import psutil
import pytest

_HOME = tempfile.mkdtemp(prefix="fitfed-test-home-")


def pytest_configure(config: pytest.Config) -> None:
    # NVFlare and MLflow look under HOME (~/.nvflare); tests must never touch the real one.
    os.environ["HOME"] = _HOME


@pytest.fixture(autouse=True)
def stop_leftover_processes() -> Iterator[None]:
    """Kill, by PID, any child process a test leaves behind (the simulator's clients on failure)."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    leftovers = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for process in leftovers:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=10)
