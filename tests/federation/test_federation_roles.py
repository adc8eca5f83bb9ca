"""A provisioned club federation, run as real processes, enforces FLARE roles and privacy scopes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nvflare.fuel.flare_api.api_spec import AuthorizationError

from federation.harness import Federation
from fitfed.audit import verify_chain
from fitfed.jobs import build_recipe, export_into, load_job_module
from fitfed.report import load_report

pytestmark = pytest.mark.slow

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def _job_folder(tmp_path: Path, scope: str | None = None) -> Path:
    module = load_job_module(JOBS / "fedavg_churn.py")
    settings = module.SETTINGS.model_copy(update={"num_rounds": 2})
    folder = export_into(build_recipe(module, settings), tmp_path)
    if scope is not None:
        meta = json.loads((folder / "meta.json").read_text())
        meta["scope"] = scope
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


def test_lead_submits_and_downloads_the_global_model(federation: Federation, tmp_path: Path):
    # Execute
    with federation.session("lead@fed.example") as session:
        job_id = session.submit_job(str(_job_folder(tmp_path)))
        meta = session.wait_for_job(job_id, timeout=240, poll_interval=1.0)
        result = Path(session.download_job_result(job_id, str(tmp_path / "download")))

    # Assert
    assert meta["status"] == "FINISHED:COMPLETED"
    report = load_report(result)
    assert report.completed_rounds == 2 and sorted(report.sites) == ["club_01", "club_02", "club_03"]
    assert report.final_model.is_file() and report.final_model.with_suffix(".json").is_file()
    verify_chain(report.record_dir / "events.jsonl")


@pytest.mark.parametrize("user", ["viewer@fed.example", "it@club01.example"])
def test_members_and_org_admins_cannot_submit(federation: Federation, tmp_path: Path, user: str):
    with federation.session(user) as session:
        with pytest.raises(AuthorizationError):
            session.submit_job(str(_job_folder(tmp_path)))


def test_org_admin_operates_only_their_own_club(federation: Federation):
    with federation.session("it@club01.example") as session:
        assert "log.txt" in session.ls_target("club_01")
        with pytest.raises(AuthorizationError):
            session.ls_target("club_02")
