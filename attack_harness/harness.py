"""Build an attacked NVFlare simulator job from a fitfed job definition (tests and benchmarks only)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
from nvflare.recipe.spec import Recipe

from attack_harness.filter import UpdateAttackFilter
from attack_harness.poison import AttackConfig
from fitfed import client as fitfed_client
from fitfed.jobs import JobSettings, build_recipe, load_job_module, simulate
from fitfed.spec import TaskSpec


def attacked_recipe(module: ModuleType, settings: JobSettings, attacks: Mapping[str, AttackConfig]) -> Recipe:
    """The job's recipe with an :class:`UpdateAttackFilter` on every client, poisoning the sites in ``attacks``.

    Raises:
        ValueError: the settings have no aggregator, so sites would send full weights the filter cannot poison.
    """
    if settings.aggregator is None:
        raise ValueError(
            f"job {settings.name!r} has aggregator=None: the attack harness poisons weight differences, which "
            "sites send only with an aggregator; use {'method': 'fedavg'} for the FedAvg baseline"
        )
    recipe = build_recipe(module, settings)
    plan = {site: attack.model_dump() for site, attack in attacks.items() if attack.poisons_update}
    # Adding a client filter makes the recipe place fitfed's client script, named relative to the package's parent.
    with contextlib.chdir(Path(fitfed_client.__file__).resolve().parent.parent):
        recipe.add_client_output_filter(UpdateAttackFilter(plan), tasks=["train"])
    return recipe


def poison_data(source: Path, target: Path, spec: TaskSpec, attacks: Mapping[str, AttackConfig]) -> Path:
    """Copy a folder of ``<site>.csv`` files, flipping the labels of every label_flip attacker's rows."""
    target.mkdir(parents=True, exist_ok=True)
    for csv in sorted(source.glob("*.csv")):
        attack = attacks.get(csv.stem)
        if attack is not None and attack.kind == "label_flip":
            _write_flipped(csv, target / csv.name, spec)
        else:
            shutil.copyfile(csv, target / csv.name)
    return target


def _write_flipped(source: Path, target: Path, spec: TaskSpec) -> None:
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    positive = {str(v) for v in spec.label.positive}
    negatives = [str(v) for v in spec.label.values if str(v) not in positive]
    column = spec.label.column
    flipped = {**{v: negatives[0] for v in positive}, **{v: sorted(positive)[0] for v in negatives}}
    frame[column] = [flipped.get(v.strip(), v) for v in frame[column]]  # missing or invalid cells stay as they are
    frame.to_csv(target, index=False)


def run_attacked_job(
    job_file: Path, settings: dict[str, Any], attacks: dict[str, dict[str, Any]], data_dir: Path, workspace: Path
) -> Path:
    """Run a job definition with ``settings`` under ``attacks`` in NVFlare's simulator; returns the job's workspace.

    Takes and returns plain values so that tests can run several attacked jobs in worker processes.
    """
    module = load_job_module(job_file)
    plan = {site: AttackConfig.model_validate(attack) for site, attack in attacks.items()}
    with tempfile.TemporaryDirectory(prefix="fitfed-attacked-data-") as tmp:
        data = poison_data(data_dir, Path(tmp), module.SETTINGS.train.task, plan)
        recipe = attacked_recipe(module, JobSettings.model_validate(settings), plan)
        sites = sorted(p.stem for p in data.glob("*.csv"))
        return simulate(recipe, data_dir=data, sites=sites, workspace=workspace)
