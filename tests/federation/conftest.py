"""A provisioned federation on localhost, shared by the real-process tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from federation.harness import FAST_DEAD_CLIENT_DETECTION, Federation, make_roster, provision
from fitfed.datasets.churn import write_clubs


@contextmanager
def running_federation(root: Path, clubs: int = 3) -> Iterator[Federation]:
    """Server and clubs (three by default) running from kits provisioned with `nvflare provision`; stopped on exit."""
    env = {**os.environ, "HOME": str(root / "home"), **FAST_DEAD_CLIENT_DETECTION}
    env.pop("FITFED_DATA", None)
    (root / "home").mkdir()
    roster = make_roster(clubs)
    fed = Federation(roster=roster, kits=provision(roster, root, env), env=env)
    data = root / "data"
    write_clubs(data, len(roster.clubs), seed=0)
    for club in roster.clubs:
        fed.install_site_templates(club.name, data / f"{club.name}.csv")
    fed.install_server_policy()
    try:
        fed.start_server()
        for club in roster.clubs:
            fed.start_client(club.name)
        fed.wait_for_clients([c.name for c in roster.clubs])
        yield fed
    finally:
        fed.stop_all()


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One federation shared by the tests that leave every club running."""
    with running_federation(tmp_path_factory.mktemp("federation")) as fed:
        yield fed
