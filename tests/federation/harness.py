"""A real FLARE federation on localhost for tests: provisioned kits, server and clubs as processes.

Every process is started in its own process group and stopped by PID (its whole group, so the
job processes a client spawns go too), on success or failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml
from nvflare.fuel.flare_api.flare_api import Session, new_secure_session

from fitfed.provision import Roster, write_project

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SITE_TEMPLATES = REPO / "provisioning" / "site_templates"
HEARTBEAT_INTERVAL = 2.0
# FLARE waits this long (default 60 s and 30 s) before it deems a club that stopped beating dead.
FAST_DEAD_CLIENT_DETECTION = {"NVFLARE_DEAD_CLIENT_GRACE_PERIOD": "2", "NVFLARE_DEAD_CLIENT_CHECK_LEAD_TIME": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_roster(clubs: int = 3, name: str = "fitfed_test") -> Roster:
    """Three clubs on localhost, each with its IT contact; a federation admin, a lead and an observer."""
    club_entries = [{"name": f"club_{i:02d}", "org": f"club{i:02d}"} for i in range(1, clubs + 1)]
    people = [{"email": "admin@fed.example", "org": "fed", "role": "project_admin"}]
    people += [
        {"email": f"it@club{i:02d}.example", "org": f"club{i:02d}", "role": "org_admin"} for i in range(1, clubs + 1)
    ]
    people += [
        {"email": "lead@fed.example", "org": "fed", "role": "lead"},
        {"email": "viewer@fed.example", "org": "fed", "role": "member"},
    ]
    return Roster.model_validate(
        {
            "federation": name,
            "server": {"host": "localhost", "org": "fed", "fed_learn_port": free_port(), "admin_port": free_port()},
            "clubs": club_entries,
            "people": people,
        }
    )


def provision(roster: Roster, root: Path, env: dict[str, str]) -> Path:
    """Run plain `nvflare provision` on the rendered project.yml; returns the folder of kits."""
    project = write_project(roster, root / "project.yml")
    subprocess.run(
        [PYTHON, "-m", "nvflare.cli", "provision", "-p", str(project), "-w", str(root / "prov")],
        check=True,
        env=env,
        cwd=root,
        capture_output=True,
        timeout=120,
    )
    return root / "prov" / roster.federation / "prod_00"


@dataclass
class Federation:
    """Kits, running processes and admin sessions of one test federation."""

    roster: Roster
    kits: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def kit(self, name: str) -> Path:
        return self.kits / name

    def install_site_templates(self, club: str, data_path: Path) -> None:
        """Drop fitfed's site templates into a club's local/ folder, pointing at its data."""
        local = self.kit(club) / "local"
        for template in ("privacy.json", "authorization.json", "resources.json"):
            shutil.copy(SITE_TEMPLATES / template, local / template)
        self.set_privacy_budget(club, data_path, epsilon=1000.0)

    def set_privacy_budget(self, club: str, data_path: Path, epsilon: float, delta: float = 1e-5) -> None:
        """Write the club's fitfed_site.yaml: its data, and its privacy budget (read afresh every round)."""
        site = {"data_path": str(data_path), "privacy_budget": {"epsilon": epsilon, "delta": delta}}
        (self.kit(club) / "local" / "fitfed_site.yaml").write_text(yaml.safe_dump(site))

    def install_server_policy(self, heart_beat_timeout: float = 8.0) -> None:
        """fitfed's authorization policy, a job store of this test's own, and a short heartbeat timeout.

        FLARE's default heartbeat timeout (600 s) suits a WAN; clients here beat every HEARTBEAT_INTERVAL seconds.
        """
        local = self.kit(self.roster.server.host) / "local"
        shutil.copy(SITE_TEMPLATES / "authorization.json", local)
        text = (local / "resources.json.default").read_text()
        # FLARE keeps its job store and snapshots in /tmp/nvflare by default: shared by every server on the machine.
        resources = json.loads(text.replace("/tmp/nvflare", str(self.kits.parent / "server_state")))
        resources["servers"][0]["heart_beat_timeout"] = heart_beat_timeout
        (local / "resources.json").write_text(json.dumps(resources, indent=2))

    def start_server(self) -> None:
        org = self.roster.server.org
        self._start(self.roster.server.host, "server_train", "fed_server.json", [f"org={org}"])

    def start_client(self, club: str, kit: Path | None = None, as_name: str | None = None) -> subprocess.Popen:
        """Start a club's client; ``kit`` and ``as_name`` start someone else's kit under that club's identity."""
        org = next(c.org for c in self.roster.clubs if c.name == club)
        extra = [f"uid={club}", f"org={org}", f"heart_beat_interval={HEARTBEAT_INTERVAL}"]
        return self._start(as_name or club, "client_train", "fed_client.json", extra, kit=kit)

    def _start(
        self, name: str, module: str, config: str, extra: list[str], kit: Path | None = None
    ) -> subprocess.Popen:
        kit = kit or self.kit(name)
        command = [
            PYTHON,
            "-u",
            "-m",
            f"nvflare.private.fed.app.{'server' if 'server' in module else 'client'}.{module}",
        ]
        command += ["-m", str(kit), "-s", config, "--set", "secure_train=true", "config_folder=config", *extra]
        log = open(kit / "process.out", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            command, cwd=kit, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = process
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop a participant's whole process group by PID."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def crash(self, name: str) -> None:
        """SIGKILL a participant and every process it started (FLARE runs each job in a process of its own)."""
        process = self.processes.pop(name)
        tree = [process.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)

    @contextmanager
    def session(self, user: str, timeout: float = 30.0) -> Iterator[Session]:
        session = new_secure_session(user, str(self.kit(user)), timeout=timeout)
        try:
            yield session
        finally:
            session.close()

    def connected_clubs(self) -> set[str]:
        admin = next(p.email for p in self.roster.people if p.role == "project_admin")
        with self.session(admin) as session:
            return {c.name for c in session.get_system_info().client_info}

    def wait_until_gone(self, clubs: list[str], timeout: float = 60.0) -> None:
        """Block until the server has dropped these clubs; a club restarted sooner is dropped with its old entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not set(clubs) & self.connected_clubs():
                return
            time.sleep(1)
        raise TimeoutError(f"the server still lists {clubs} after {timeout}s")

    def wait_for_clients(self, clubs: list[str], timeout: float = 90.0) -> None:
        """Block until the server lists every club as connected."""
        deadline = time.monotonic() + timeout
        admin = next(p.email for p in self.roster.people if p.role == "project_admin")
        with self.session(admin) as session:
            while time.monotonic() < deadline:
                info = session.get_system_info()
                connected = {c.name for c in info.client_info}
                if set(clubs) <= connected:
                    return
                time.sleep(1)
        raise TimeoutError(f"clubs {clubs} did not all connect within {timeout}s")
