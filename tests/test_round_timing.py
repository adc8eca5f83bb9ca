"""FLARE's polling periods, as a job sets them: in its exported configs, and in FLARE's objects at run time."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.wf_comm_server import WFCommServer
from nvflare.private.fed.client.client_runner import ClientRunner
from pydantic import ValidationError

from fitfed.jobs import JobSettings, build_recipe, export_into
from fitfed.round_timing import (
    RESULT_POLL_ATTRIBUTE,
    RESULT_POLL_MODULE,
    ClientResultPoll,
    RoundTiming,
    ServerTaskCheck,
    SimulatorRetry,
)
from jobs.conftest import job_module


def _export(tmp_path: Path, name: str, timing: RoundTiming) -> tuple[dict, dict]:
    module = job_module(name)
    settings = JobSettings.model_validate({**dict(module.SETTINGS), "timing": timing})
    folder = export_into(build_recipe(module, settings), tmp_path)
    config = folder / "app" / "config"
    return (json.loads((config / "config_fed_server.json").read_text()),
            json.loads((config / "config_fed_client.json").read_text()))  # fmt: skip


def test_exported_job_carries_every_period(tmp_path: Path):
    # Execute
    timing = RoundTiming(task_request_interval=0.3, controller_check_period=0.07, server_check_period=0.04,
                         result_poll_interval=0.03)  # fmt: skip
    server, client = _export(tmp_path, "fedavg_churn", timing)

    # Assert: the server's own setting, the controller's argument, and the two parts with their periods
    assert server["server"] == {"task_request_interval": 0.3}
    assert server["workflows"][0]["args"]["task_check_period"] == 0.07
    parts = {c["path"]: c["args"] for c in server["components"] + client["components"]}
    assert parts["fitfed.round_timing.ServerTaskCheck"] == {"period": 0.04}
    assert parts["fitfed.round_timing.ClientResultPoll"] == {"interval": 0.03}
    assert not any("SimulatorRetry" in path for path in parts), "the simulator's retry must never ship"


def test_flare_defaults_export_flares_own_periods(tmp_path: Path):
    server, _ = _export(tmp_path, "fedavg_heart_disease", RoundTiming.flare_defaults())
    assert server["server"] == {"task_request_interval": 2.0}
    assert "task_check_period" not in server["workflows"][0]["args"]  # FLARE omits its own default, 0.5


def test_periods_outside_sane_bounds_are_refused():
    with pytest.raises(ValidationError, match="task_request_interval"):
        RoundTiming(task_request_interval=0.0)


def test_flare_still_has_the_values_these_parts_set():
    # A FLARE upgrade that renames them would silently bring back 2.5 s rounds: fail here instead
    assert hasattr(importlib.import_module(RESULT_POLL_MODULE), RESULT_POLL_ATTRIBUTE)
    assert hasattr(WFCommServer(), "_task_check_period")
    assert callable(ClientRunner.fetch_and_run_one_task)


def test_client_result_poll_is_set_just_before_the_run_and_not_when_built(monkeypatch: pytest.MonkeyPatch):
    module = importlib.import_module(RESULT_POLL_MODULE)
    monkeypatch.setattr(module, RESULT_POLL_ATTRIBUTE, 0.5)
    part = ClientResultPoll(0.02)
    assert getattr(module, RESULT_POLL_ATTRIBUTE) == 0.5

    part.handle_event(EventType.ABOUT_TO_START_RUN, FLContext())

    assert getattr(module, RESULT_POLL_ATTRIBUTE) == 0.02


def test_server_task_check_sets_every_workflows_task_monitor():
    # Prepare: a server runner with two workflows, each with FLARE's communicator at its 0.2 s default
    communicators = [WFCommServer(), WFCommServer()]
    runner = SimpleNamespace(config=SimpleNamespace(
        workflows=[SimpleNamespace(controller=SimpleNamespace(communicator=c)) for c in communicators]))  # fmt: skip
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.RUNNER, runner, private=True, sticky=False)

    # Execute
    ServerTaskCheck(0.05).handle_event(EventType.START_RUN, fl_ctx)

    # Assert
    assert [c._task_check_period for c in communicators] == [0.05, 0.05]


def test_simulator_retry_asks_again_after_the_servers_interval(monkeypatch: pytest.MonkeyPatch):
    # Prepare: a fetch that has no task twice, then runs one; FLARE's own fetch restored afterwards
    answers = iter([(0.01, False), (0.01, False), (0.01, True)])
    monkeypatch.setattr(ClientRunner, "fetch_and_run_one_task", lambda runner, fl_ctx: next(answers))
    runner = SimpleNamespace(run_abort_signal=SimpleNamespace(triggered=False))

    # Execute
    SimulatorRetry(max_wait=2.0).handle_event(EventType.ABOUT_TO_START_RUN, FLContext())
    result = ClientRunner.fetch_and_run_one_task(runner, FLContext())

    # Assert: one call from the worker got through both early answers to the task
    assert result == (0.01, True)
