"""The server's side of secure aggregation in FLARE: FedAvg whose rounds are the protocol's four exchanges.

Each round, :class:`MaskedFedAvg` asks every connected club to advertise keys, relays them so clubs can
share their secrets, sends the global model for training (the clubs return masked updates), and asks
the survivors to unmask. Training is FLARE's usual task; the other three exchanges are aux messages
pushed to every club at once, so they add no task polling to the round. The server learns the weighted
mean of the survivors' updates and nothing more.
Every step's participants, drop-outs and refusals go to the run record; no secret material does.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.workflows.model_controller import ModelController
from pydantic import ValidationError

from fitfed.secagg.club import ADVERTISE, MASKED, PAYLOAD, SHARE, UNMASK, WEIGHT_KEY
from fitfed.secagg.encoding import as_float64, unflatten
from fitfed.secagg.identity import ROOT_CA, KeyRefused, load_ca
from fitfed.secagg.protocol import ProtocolRejected, RoundAborted, RoundContext, ServerRound
from fitfed.server.run_record import AUDIT_EVENT, AUDIT_RECORD


class MaskedFedAvg(ModelController):
    """FedAvg over weight differences, aggregated under pairwise masking with threshold t.

    Args:
        num_rounds: federated rounds.
        threshold: t, the fewest clubs that must stay to the end of a round for it to be unmasked.
        step_timeout: seconds a club has to answer each protocol exchange (training is not timed out); the job's
            first exchange waits up to 5 minutes (or step_timeout, if longer) for the clubs' jobs to start.
        persistor_id: the FLARE persistor holding the global model.
        ignore_result_error: FLARE's setting; a failed club is left out of its round.
        task_check_period: how often FLARE checks for answered tasks (see :mod:`fitfed.round_timing`).
        start_round: the first round to run (a job resumed after round k - 1 starts at k; see
            :mod:`fitfed.server.resume`); ``num_rounds`` rounds are run from it.
    """

    def __init__(
        self,
        num_rounds: int,
        threshold: int,
        step_timeout: int = 120,
        persistor_id: str = AppConstants.DEFAULT_PERSISTOR_ID,
        ignore_result_error: bool | None = True,
        task_check_period: float = 0.5,
        start_round: int = 0,
    ):
        super().__init__(
            persistor_id=persistor_id, ignore_result_error=ignore_result_error, task_check_period=task_check_period
        )
        self.num_rounds = num_rounds
        self.start_round = start_round
        self.threshold = threshold
        self.step_timeout = step_timeout
        self._step_clock = time.monotonic()

    def run(self) -> None:
        """Every round: advertise, share, train and mask, unmask; stop the job if a round cannot be unmasked."""
        startup = Path(self.engine.get_workspace().get_startup_kit_dir())
        ca = load_ca(startup / ROOT_CA)
        model = self.load_model()
        model.start_round, model.total_rounds = self.start_round, self.start_round + self.num_rounds
        for round_ in range(self.start_round, self.start_round + self.num_rounds):
            self.current_round = model.current_round = round_
            self.fl_ctx.set_prop(AppConstants.CURRENT_ROUND, self.current_round, private=True, sticky=False)
            self.event(AppEventType.ROUND_STARTED)
            try:
                mean = self._masked_round(model, ca)
            except RoundAborted as e:
                reason = f"{e}; the global model stays as it was after {round_} completed round(s)"
                self._audit({"event": "round_aborted", "round": self.current_round, "reason": reason})
                self.system_panic(reason, self.fl_ctx)
                return
            if mean is None:  # FLARE is stopping the job
                return
            update = unflatten(mean, model.params)
            self.fire_event_with_data(
                AppEventType.AFTER_AGGREGATION, self.fl_ctx, AppConstants.AGGREGATION_RESULT,
                FLModel(params=update, params_type=ParamsType.DIFF),
            )  # fmt: skip
            model = _apply(model, update)
            self.save_model(model)

    def _masked_round(self, model: FLModel, ca: Any) -> np.ndarray | None:
        round_ = self.current_round
        clubs = sorted(self.sample_clients())
        trail: dict[str, Any] = {"event": "secure_aggregation", "round": round_, "threshold": self.threshold,
                                 "selected": clubs, "steps": []}  # fmt: skip
        try:
            context = RoundContext(job_id=self.fl_ctx.get_job_id(), round=round_, threshold=self.threshold,
                                   roster=tuple(clubs))  # fmt: skip
        except ValidationError:
            self._audit(trail)
            raise RoundAborted(
                f"round {round_}: only {len(clubs)} club(s) connected, fewer than the threshold t={self.threshold}"
            ) from None
        length = sum(int(np.prod(tuple(v.shape))) for v in model.params.values())
        self._step_clock = time.monotonic()
        server = ServerRound(context, ca, length)
        try:
            # (1) keys, signed with each club's FLARE identity
            # The job's first message may reach a club whose job is still starting: keep asking a while.
            patience = max(self.step_timeout, _JOB_START_SECONDS) if round_ == self.start_round else 0.0
            answers = self._exchange(
                ADVERTISE, {c: {"context": context.model_dump()} for c in clubs}, patience=patience
            )
            took = self._take(trail, "advertise", clubs, answers,
                              lambda c, p: server.receive_advertisement(c, p.get("advertisement")))  # fmt: skip
            server.need(took, "key advertisement")
            # (2) sealed shares of every club's secrets, relayed
            relayed = [a.model_dump() for a in server.advertisements]
            answers = self._exchange(SHARE, {c: {"round": round_, "advertisements": relayed} for c in took})
            took = self._take(trail, "share", took, answers, lambda c, p: server.receive_shares(c, p.get("shares")))
            server.need(took, "secret sharing")
            # (3) training; each club's result filter masks its update for the clubs that shared
            masked = self._train(model, server)
            if masked is None:
                return None
            self._step(trail, "masked_update", list(server.sharers), masked)
            # (4) the survivors reveal what removes the masks, and nothing more
            request = server.unmask_request()
            answers = self._exchange(
                UNMASK,
                {c: {"round": round_, "request": request.model_dump(),
                     "shares": [s.model_dump() for s in server.shares_for(c)]} for c in request.survivors},
            )  # fmt: skip
            took = self._take(trail, "unmask", list(request.survivors), answers,
                              lambda c, p: server.receive_unmask(c, p.get("reply")))  # fmt: skip
            total, weight = server.aggregate()
        except RoundAborted:
            self._audit(trail)
            raise
        trail.update(aggregated=list(server.survivors), dropped_before_masking=list(request.dropped))
        self._audit(trail)
        return total / weight

    def _train(self, model: FLModel, server: ServerRound) -> dict[str, str | None] | None:
        """Send the global model to the clubs that shared; keep each masked update the protocol accepts."""
        outcome: dict[str, str | None] = {}

        def received(result: FLModel) -> bool:
            club = result.meta.get("client_name", "?")
            try:
                server.receive_masked(club, float(result.meta.get(WEIGHT_KEY) or 0), (result.params or {}).get(MASKED))
            except (ProtocolRejected, ValidationError) as e:
                outcome[club] = _reason(e)
                return False
            outcome[club] = None
            return True

        model.meta = {PAYLOAD: {"round": self.current_round, "sharers": list(server.sharers)}}
        self.send_model(task_name=AppConstants.TASK_TRAIN, targets=list(server.sharers), data=model, callback=received)
        if not self._wait():
            return None
        self.event(AppEventType.BEFORE_AGGREGATION)
        return outcome

    def _exchange(self, step: str, payloads: dict[str, dict], *, patience: float = 0.0) -> dict[str, Any]:
        """One protocol step: an aux message to each club with its own payload, all at once; each club's answer.

        ``patience``: how long to keep asking a club that cannot take the message yet (its job still starting).
        Each club gets its own request (FLARE 2.9's ``multicast_aux_requests`` fails on a keyword argument its
        cell does not take), sent from a small thread pool so the clubs answer in parallel.
        """
        answers: dict[str, Any] = {}
        waiting = dict(payloads)
        deadline = time.monotonic() + patience
        # A message to a job that has not started is lost, not refused: while patient, ask again every few seconds.
        attempt = min(float(self.step_timeout), _RETRY_SECONDS) if patience else float(self.step_timeout)
        retry = _NOT_YET | {ReturnCode.TIMEOUT} if patience else _NOT_YET
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(payloads)))) as pool:
            while waiting:
                asked = pool.map(lambda kv: self._ask(step, *kv, timeout=attempt), waiting.items())
                replies = dict(zip(waiting, asked, strict=True))
                for club, reply in replies.items():
                    code = reply.get_return_code(ReturnCode.OK) if isinstance(reply, Shareable) else "no reply"
                    answers[club] = reply.get(PAYLOAD) if code == ReturnCode.OK else _Failed(code)
                    if code == ReturnCode.OK or code not in retry:
                        del waiting[club]
                if not waiting or time.monotonic() >= deadline or self.abort_signal.triggered:
                    break
                time.sleep(0.2)  # some refusals come back at once
        return answers

    def _ask(self, step: str, club: str, payload: dict, timeout: float) -> Shareable | None:
        request = Shareable()
        request[PAYLOAD] = payload
        with self.engine.new_context() as fl_ctx:
            replies = self.engine.send_aux_request(
                targets=[club], topic=step, request=request, timeout=timeout, fl_ctx=fl_ctx
            )
        return replies.get(club)

    def _take(self, trail: dict, step: str, asked: list[str], answers: dict[str, Any], accept: Any) -> list[str]:
        """Feed each answer to the protocol; a refused or missing answer drops that club from the round."""
        outcome: dict[str, str | None] = {}
        for club in asked:
            answer = answers.get(club)
            if club not in answers:
                outcome[club] = "no answer (gone or timed out)"
                continue
            if isinstance(answer, _Failed):
                outcome[club] = answer.reason
                continue
            if not isinstance(answer, dict):
                outcome[club] = "its answer is malformed"
                continue
            try:
                accept(club, answer)
                outcome[club] = None
            except (ProtocolRejected, KeyRefused, ValidationError) as e:
                outcome[club] = _reason(e)
        self._step(trail, step, asked, outcome)
        return [c for c in asked if outcome.get(c) is None and c in outcome]

    def _step(self, trail: dict, step: str, asked: list[str], outcome: dict[str, str | None]) -> None:
        """Record a step: who took part, who dropped and why, and how long it took since the step before."""
        took = [c for c in asked if c in outcome and outcome[c] is None]
        now = time.monotonic()
        seconds, self._step_clock = now - self._step_clock, now
        trail["steps"].append({
            "step": step,
            "seconds": round(seconds, 3),
            "took_part": took,
            "dropped": [c for c in asked if c not in took],
            "reasons": {c: r for c, r in outcome.items() if r is not None},
        })  # fmt: skip

    def _wait(self) -> bool:
        while self.get_num_standing_tasks():
            if self.abort_signal.triggered:
                return False
            time.sleep(self._task_check_period)
        return True

    def _audit(self, record: dict[str, Any]) -> None:
        self.fire_event_with_data(AUDIT_EVENT, self.fl_ctx, AUDIT_RECORD, record)


# What a club whose job has not started yet answers (no handler for the topic yet, or no job cell to reach).
_RETRY_SECONDS = 3.0
_JOB_START_SECONDS = 300.0  # how long the job's first exchange waits for the clubs' jobs to start
_NOT_YET = {ReturnCode.TOPIC_UNKNOWN, ReturnCode.COMMUNICATION_ERROR, ReturnCode.SERVICE_UNAVAILABLE, "no reply"}


class _Failed:
    def __init__(self, code: str):
        self.reason = f"the club's step failed ({code}); its log says why"


def _reason(error: Exception) -> str:
    return f"refused: {error}" if not isinstance(error, ValidationError) else "refused: its message is malformed"


def _apply(model: FLModel, update: dict[str, np.ndarray]) -> FLModel:
    """The global model plus the mean update, each parameter in its own type and dtype."""
    params = {}
    for name, value in model.params.items():
        updated = as_float64(value) + update[name]
        if isinstance(value, torch.Tensor):
            params[name] = torch.as_tensor(updated, dtype=value.dtype)
        else:
            params[name] = updated.astype(np.asarray(value).dtype)
    return FLModel(params=params, params_type=ParamsType.FULL, meta={})
