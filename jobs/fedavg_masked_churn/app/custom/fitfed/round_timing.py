"""How quickly FLARE notices each step of a round, and the job parts that set it.

With FLARE 2.9's defaults a round of a tiny model takes about 2.5 s, nearly all of it waiting:

- the server tells each client to wait ``task_request_interval`` (2 s) before asking for its next task;
- the in-process Client API polls for the new model and for the script's result every 0.5 s;
- FedAvg-family controllers check whether a round is complete every 0.5 s (``task_check_period``);
- the server's task monitor ticks every 0.2 s, a period FLARE offers no way to set (its controllers
  write their period to an attribute the monitor never reads).

The first two are job settings; the last two are private module values that :class:`ClientResultPoll`
and :class:`ServerTaskCheck` set from inside the job, and that warn rather than fail when a FLARE
version no longer has them. ``docs/round-timing.md`` has the measurements and the WAN trade-off:
only ``task_request_interval`` adds network traffic (one task request per idle client per interval).
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_def import SERVER_SITE_NAME
from nvflare.app_common.workflows.base_model_controller import BaseModelController
from nvflare.recipe.spec import Recipe
from pydantic import BaseModel, ConfigDict, Field

# Module values of FLARE 2.9 that these parts change; named so a test can check they still exist.
RESULT_POLL_MODULE = "nvflare.app_common.executors.client_api.in_process_backend"
RESULT_POLL_ATTRIBUTE = "_RESULT_POLL_INTERVAL"


class RoundTiming(BaseModel):
    """FLARE's polling periods for a job, in seconds.

    The defaults make a tiny model's round about 0.25 s on localhost (2.5 s with FLARE's own) and stay
    reasonable over a WAN: each idle club asks for a task 5 times a second.

    Args:
        task_request_interval: how long a club waits before asking the server for its next task (FLARE: 2.0).
        controller_check_period: how often a FedAvg-family controller checks for a finished round (FLARE: 0.5).
        server_check_period: how often the server's task monitor checks for answered tasks (FLARE: 0.2).
        result_poll_interval: how often a club's executor checks for the training script's result (FLARE: 0.5).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_request_interval: float = Field(default=0.2, ge=0.01, le=60)
    controller_check_period: float = Field(default=0.05, ge=0.01, le=60)
    server_check_period: float = Field(default=0.05, ge=0.01, le=60)
    result_poll_interval: float = Field(default=0.02, ge=0.005, le=60)

    @classmethod
    def lan(cls) -> RoundTiming:
        """For one site or a LAN: each idle club asks for a task 20 times a second (see docs/round-timing.md)."""
        return cls(task_request_interval=0.05, controller_check_period=0.01, server_check_period=0.01,
                   result_poll_interval=0.01)  # fmt: skip

    @classmethod
    def flare_defaults(cls) -> RoundTiming:
        """FLARE 2.9's own periods (for comparison: about 2.5 s per round)."""
        return cls(task_request_interval=2.0, controller_check_period=0.5, server_check_period=0.2,
                   result_poll_interval=0.5)  # fmt: skip


def apply_round_timing(recipe: Recipe, timing: RoundTiming) -> None:
    """Write ``timing`` into a recipe: the server's config, the controllers' args, and the two setter parts."""
    recipe.add_server_config({"server": {"task_request_interval": timing.task_request_interval}})
    job = recipe._job  # recipes expose no public handle for controller args or extra components
    for workflow in job._deploy_map[SERVER_SITE_NAME].app_config.workflows:
        if isinstance(workflow.controller, BaseModelController):
            workflow.controller._task_check_period = timing.controller_check_period
    job.to_server(ServerTaskCheck(timing.server_check_period), id="fitfed_server_task_check")
    job.to_clients(ClientResultPoll(timing.result_poll_interval), id="fitfed_client_result_poll")


class ClientResultPoll(FLComponent):
    """Sets how often the in-process Client API checks for a new model and for the script's result.

    FLARE 2.9 reads this from a module value (0.5 s) and has no setting for it. The value is set just
    before the run starts (before the executor reads it), in the club's job process only.
    """

    def __init__(self, interval: float = 0.02):
        super().__init__()
        self.interval = interval

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Before the executor starts, set the poll interval."""
        if event_type != EventType.ABOUT_TO_START_RUN:
            return
        module = _import(RESULT_POLL_MODULE)
        if module is None or not hasattr(module, RESULT_POLL_ATTRIBUTE):
            self.log_warning(fl_ctx, f"this FLARE has no {RESULT_POLL_MODULE}.{RESULT_POLL_ATTRIBUTE}; left as is")
            return
        setattr(module, RESULT_POLL_ATTRIBUTE, self.interval)


class ServerTaskCheck(FLComponent):
    """Sets the period of the server's task monitor, which decides when every club has answered.

    FLARE 2.9 creates it at 0.2 s and hands it the controller's period under a name it never reads.
    """

    def __init__(self, period: float = 0.05):
        super().__init__()
        self.period = period

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """At the start of the run, set the period on every workflow's communicator."""
        if event_type != EventType.START_RUN:
            return
        runner = fl_ctx.get_prop(FLContextKey.RUNNER)
        workflows = getattr(getattr(runner, "config", None), "workflows", None) or []
        communicators = [getattr(w.controller, "communicator", None) for w in workflows]
        changed = [c for c in communicators if c is not None and hasattr(c, "_task_check_period")]
        for communicator in changed:
            communicator._task_check_period = self.period
        if len(changed) != len(workflows):
            self.log_warning(fl_ctx, f"task monitor period set on {len(changed)} of {len(workflows)} workflows")


class SimulatorRetry(FLComponent):
    """Simulator only: retry an early task request after the server's interval, not the simulator's fixed 0.5 s.

    FLARE's simulator worker sleeps 0.5 s whenever a club asks for a task before the round has one;
    a real client sleeps the interval the server sent. This part makes the simulated club do what a
    real one does, and is added by :func:`fitfed.jobs.simulate`, never to an exported job.
    """

    def __init__(self, max_wait: float = 2.0):
        super().__init__()
        self.max_wait = max_wait

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Before the club's first task request, make its requests retry as a real club's do."""
        if event_type != EventType.ABOUT_TO_START_RUN:
            return
        from nvflare.private.fed.client.client_runner import ClientRunner

        fetch = ClientRunner.fetch_and_run_one_task
        if getattr(fetch, "_fitfed_retry", False):
            return
        max_wait = self.max_wait

        def fetch_and_retry(runner: ClientRunner, fl_ctx: FLContext) -> tuple[float, bool]:
            deadline = time.monotonic() + max_wait
            while True:
                interval, processed = fetch(runner, fl_ctx)
                if processed or runner.run_abort_signal.triggered or time.monotonic() + interval > deadline:
                    return interval, processed
                time.sleep(interval)

        fetch_and_retry._fitfed_retry = True  # type: ignore[attr-defined]
        ClientRunner.fetch_and_run_one_task = fetch_and_retry  # type: ignore[method-assign]


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
