"""Which training a job belongs to: a job resumed with ``fitfed resume`` continues another job's rounds.

``fitfed resume`` ships ``fitfed_resume.json`` (a :class:`ResumePlan`) in the continuation's app
config folder, so the server and every club see it. The *lineage root* (the first job of the
training) names the training everywhere state must carry over: a club's DP ledger charges the
whole training under it, and a club's SCAFFOLD state is kept under it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

RESUME_FILE = "fitfed_resume.json"


class ResumePlan(BaseModel):
    """A continuation job's link to the job it resumes.

    Args:
        resumed_from: the job whose checkpoint this job starts from.
        lineage_root: the first job of the training (``resumed_from`` itself, unless that was a continuation too).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    resumed_from: str
    lineage_root: str


def load_resume_plan(config_dir: Path) -> ResumePlan | None:
    """The plan in an app's config folder; None for a job that resumes nothing."""
    path = config_dir / RESUME_FILE
    return ResumePlan.model_validate_json(path.read_text()) if path.is_file() else None


def lineage_root(job_id: str, config_dir: Path) -> str:
    """The training a job belongs to: its lineage root if it is a continuation, else the job itself."""
    plan = load_resume_plan(config_dir)
    return job_id if plan is None else plan.lineage_root
