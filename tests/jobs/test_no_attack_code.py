"""The attack harness cannot be enabled from a production job folder or a site kit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from attack_harness.harness import attacked_recipe
from attack_harness.poison import AttackConfig
from fitfed.config import SiteConfig, TrainConfig
from fitfed.jobs import build_recipe, export_into
from jobs.conftest import JOBS_DIR, job_module

FITFED = Path(__file__).resolve().parents[2] / "custom" / "fitfed"
HARNESS_NAMES = ("attack_harness", "UpdateAttackFilter")
NOT_SHIPPED = ("attack_harness", "benchmarks")  # top-level folders that only tests and benchmarks import
JOB_NAMES = sorted(p.stem for p in JOBS_DIR.glob("*.py"))


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


@pytest.mark.parametrize("name", JOB_NAMES)
def test_production_job_folders_hold_no_attack_code(name: str, tmp_path: Path):
    # Execute: the committed folder, and a fresh `fitfed jobs export`
    fresh = export_into(build_recipe(job_module(name)), tmp_path)

    # Assert
    for folder in (JOBS_DIR / name, fresh):
        for path in _files(folder):
            relative = path.relative_to(folder)
            assert not set(relative.parts) & set(NOT_SHIPPED), relative
            text = path.read_text(errors="replace")
            assert not any(word in text for word in HARNESS_NAMES), f"{relative} mentions the attack harness"


def test_the_fitfed_package_never_imports_the_harness():
    for path in FITFED.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] in NOT_SHIPPED for n in names), f"{path} imports {names}"


def test_fitfeds_client_config_refuses_an_attack_setting():
    # Prepare: a job's training config with an attack added by hand
    config = TrainConfig.model_validate_json((JOBS_DIR / "fedavg_churn/app/config/fitfed_train.json").read_text())
    tampered = {**config.model_dump(), "attack": {"kind": "sign_flip", "scale": 10}}

    # Execute / Assert: the client validates its config before training, and refuses
    with pytest.raises(ValidationError, match=r"attack\n  Extra inputs are not permitted"):
        TrainConfig.model_validate(tampered)


def test_a_site_kit_config_refuses_an_attack_setting():
    with pytest.raises(ValidationError, match=r"attack\n  Extra inputs are not permitted"):
        SiteConfig.model_validate({"data_path": "data.csv", "attack": "label_flip"})


def test_the_harness_refuses_a_job_whose_sites_send_full_weights():
    module = job_module("fedavg_churn")
    with pytest.raises(ValueError, match="has aggregator=None: the attack harness poisons weight differences"):
        attacked_recipe(module, module.SETTINGS, {"club_01": AttackConfig(kind="sign_flip")})
