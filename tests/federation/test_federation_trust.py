"""Trust is by construction: a club from another CA cannot join, a job changed after signing cannot run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nvflare.fuel.hci.client import file_transfer

from federation.harness import Federation, make_roster, provision
from federation.test_federation_roles import _job_folder

pytestmark = pytest.mark.slow


def test_client_from_another_ca_cannot_join(federation: Federation, tmp_path: Path):
    # Prepare: the same club name and server address, provisioned by a different CA
    roster = make_roster(name="other_federation").model_copy(update={"server": federation.roster.server})
    (tmp_path / "home").mkdir()
    foreign_kit = provision(roster, tmp_path, {**federation.env, "HOME": str(tmp_path / "home")}) / "club_01"

    # Execute: start the impostor from its own kit, against our server
    federation._start(
        "club_01_impostor", "client_train", "fed_client.json", ["uid=club_01", "org=club01"], kit=foreign_kit
    )
    try:
        log = foreign_kit / "process.out"
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and "CERTIFICATE_VERIFY_FAILED" not in log.read_text():
            time.sleep(1)
        with federation.session("admin@fed.example") as session:
            clients = session.get_system_info().client_info
    finally:
        federation.kill("club_01_impostor")

    # Assert: the mutual-TLS handshake fails, and the server still knows only its own three clubs
    assert "CERTIFICATE_VERIFY_FAILED" in log.read_text()
    assert sorted(c.name for c in clients) == ["club_01", "club_02", "club_03"]


def test_job_changed_after_signing_is_rejected(federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Prepare: the admin client signs the job folder as usual, then its training config is altered
    original_sign = file_transfer.sign_folders

    def sign_then_tamper(folder: str, *args: object, **kwargs: object) -> None:
        original_sign(folder, *args, **kwargs)
        config = Path(folder) / "app" / "config" / "fitfed_train.json"
        config.write_text(config.read_text().replace('"learning_rate": 0.005', '"learning_rate": 5.0'))

    monkeypatch.setattr(file_transfer, "sign_folders", sign_then_tamper)

    # Execute
    with federation.session("lead@fed.example") as session:
        job_id = session.submit_job(str(_job_folder(tmp_path)))
        meta = session.wait_for_job(job_id, timeout=120, poll_interval=1.0)

    # Assert: the server refuses to deploy it, and says why
    assert meta["status"] == "FINISHED:FAILED_TO_RUN"
    server_detail = [d for d in meta["job_deploy_detail"] if d.startswith("server:")]
    assert server_detail and "signature verification" in server_detail[0], meta["job_deploy_detail"]
