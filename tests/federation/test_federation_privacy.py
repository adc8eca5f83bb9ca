"""Each club enforces its own privacy policy: an unknown scope is refused, no scope means the club's default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federation.harness import Federation
from federation.test_federation_roles import _job_folder
from fitfed.audit import verify_chain
from fitfed.report import find_record_dir

pytestmark = pytest.mark.slow


def test_unknown_scope_is_refused_at_deploy_with_the_reason(federation: Federation, tmp_path: Path):
    # Execute
    with federation.session("lead@fed.example") as session:
        job_id = session.submit_job(str(_job_folder(tmp_path, scope="no_such_scope")))
        meta = session.wait_for_job(job_id, timeout=120, poll_interval=1.0)

    # Assert: no club ran it, and the submitter sees each club's reason
    assert meta["status"] == "FINISHED:FAILED_TO_RUN"
    details = "\n".join(meta["job_deploy_detail"])
    for club in ("club_01", "club_02", "club_03"):
        assert f"{club}: NVFLARE_ERROR: privacy scope 'no_such_scope' is not allowed" in details


def test_job_without_scope_gets_each_clubs_default(federation: Federation, tmp_path: Path):
    # Execute
    with federation.session("lead@fed.example") as session:
        job_id = session.submit_job(str(_job_folder(tmp_path)))
        meta = session.wait_for_job(job_id, timeout=240, poll_interval=1.0)
        result = Path(session.download_job_result(job_id, str(tmp_path / "download")))

    # Assert: every update the server received went through the club's default scope, "standard"
    assert meta["status"] == "FINISHED:COMPLETED"
    updates = [e for e in verify_chain(find_record_dir(result) / "events.jsonl") if e["event"] == "site_update"]
    assert len(updates) == 6  # 3 clubs x 2 rounds
    assert {(u["site"], u["privacy_scope"]) for u in updates} == {
        (c, "standard") for c in ("club_01", "club_02", "club_03")
    }
    assert "scope" not in json.loads((tmp_path / "fedavg_churn" / "meta.json").read_text())
