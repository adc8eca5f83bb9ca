"""Preparing a continuation job: the crashed job's own definition, linked to it, or a refusal that says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fitfed.continuation import META_LINEAGE_ROOT, META_RESUMED_FROM, ResumeRefused, prepare_continuation
from fitfed.jobs import build_recipe, export_into, load_job_module
from fitfed.lineage import RESUME_FILE, ResumePlan, lineage_root, load_resume_plan

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def _downloaded(tmp_path: Path, name: str) -> Path:
    """A job definition as `download_job_result` leaves it: the exported folder plus the server's workspace."""
    module = load_job_module(JOBS / f"{name}.py")
    folder = export_into(build_recipe(module), tmp_path / "download")
    (folder / "workspace").mkdir()
    (folder / "workspace" / "log.txt").write_text("server log")
    return folder


def test_a_continuation_is_the_same_job_with_its_link_to_the_crashed_one(tmp_path: Path):
    # Arrange
    original = _downloaded(tmp_path, "fedavg_churn")

    # Execute
    definition, plan = prepare_continuation(original, "job-a", tmp_path / "continuation")

    # Assert: same config, plus the plan in the config folder and the link in meta.json; no downloaded workspace
    assert plan == ResumePlan(resumed_from="job-a", lineage_root="job-a")
    config = definition / "app" / "config"
    assert load_resume_plan(config) == plan and lineage_root("job-b", config) == "job-a"
    assert (config / "fitfed_train.json").read_text() == (original / "app/config/fitfed_train.json").read_text()
    meta = json.loads((definition / "meta.json").read_text())
    assert meta[META_RESUMED_FROM] == meta[META_LINEAGE_ROOT] == "job-a" and meta["name"] == "fedavg_churn"
    assert not (definition / "workspace").exists()

    # Execute + Assert: continuing the continuation keeps the training's first job as its root
    _, again = prepare_continuation(definition, "job-b", tmp_path / "second")
    assert again == ResumePlan(resumed_from="job-b", lineage_root="job-a")


def test_a_job_without_checkpoints_is_refused_before_anything_is_submitted(tmp_path: Path):
    # An HE job: the server holds only ciphertext, so fitfed keeps no checkpoint for it
    with pytest.raises(ResumeRefused, match="kept no resume checkpoints .*HE jobs"):
        prepare_continuation(_downloaded(tmp_path, "fedavg_he_churn"), "job-he", tmp_path / "continuation")
    assert not (tmp_path / "continuation").exists()


def test_a_job_without_a_resume_file_is_its_own_root(tmp_path: Path):
    assert load_resume_plan(tmp_path) is None and lineage_root("job-x", tmp_path) == "job-x"
    (tmp_path / RESUME_FILE).write_text(ResumePlan(resumed_from="b", lineage_root="a").model_dump_json())
    assert lineage_root("job-x", tmp_path) == "a"
