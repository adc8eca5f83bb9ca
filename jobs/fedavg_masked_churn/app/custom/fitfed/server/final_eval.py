"""Scoring the final global model at every club that is still in the federation."""

from __future__ import annotations

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.workflows.global_model_eval import GlobalModelEval


class FinalModelEval(GlobalModelEval):
    """FLARE's global-model evaluation, minus the clubs that dropped out during training.

    FLARE fixes the evaluation's participants when the job starts and learns of a dead club only
    in the workflow running when it died, so a club that dropped out mid-training would make
    the evaluation wait for it until its timeout. This workflow remembers every club FLARE
    deemed disconnected and leaves it out.
    """

    def __init__(self, model_locator_id: str, validation_timeout: int = 600):
        super().__init__(model_locator_id=model_locator_id, validation_timeout=validation_timeout)
        self._dropped: set[str] = set()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Note every club FLARE deems disconnected, whichever workflow was running."""
        if event_type == EventType.CLIENT_DISCONNECTED:
            self._dropped.add(fl_ctx.get_prop(FLContextKey.DISCONNECTED_CLIENT_NAME))
        super().handle_event(event_type, fl_ctx)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Evaluate at the clubs still present."""
        if self._dropped:
            self._participating_clients = [c for c in self._participating_clients if c not in self._dropped]
            self.log_info(fl_ctx, f"not evaluating at dropped club(s) {sorted(self._dropped)}")
        super().control_flow(abort_signal, fl_ctx)
