"""A club's side of secure aggregation in FLARE: the protocol's extra tasks, and masking the training result.

Three parts share one :class:`SecAggClub` component (job id ``fitfed_secagg_club``):

- :class:`SecAggClub` itself answers the advertise, share and unmask steps. They are FLARE aux messages the
  server pushes to the club's job, answered at once, so they cost no task polling (see docs/round-timing.md);
  only the server may send them.
- :class:`ReadRoundPlan` reads, from the training task, which clubs shared keys this round.
- :class:`MaskUpdate` turns the training result into the masked vector. It is a job filter, so FLARE runs
  it after the club's privacy-scope filters: differential privacy is applied before masking.

A round's secrets live in the club's job process for that round only and never leave it unsealed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from fitfed.secagg.encoding import flatten
from fitfed.secagg.identity import ROOT_CA, ClubIdentity, KeyRefused, load_ca
from fitfed.secagg.masks import SealError
from fitfed.secagg.protocol import ClubRound, ProtocolRejected, RoundAborted, RoundContext, weighted_update

CLUB_COMPONENT = "fitfed_secagg_club"
ADVERTISE, SHARE, UNMASK = "fitfed_secagg_advertise", "fitfed_secagg_share", "fitfed_secagg_unmask"
PAYLOAD = "fitfed_secagg"  # the key under which protocol messages travel in a Shareable or a DXO's meta
MASKED = "fitfed_masked"  # the masked vector's name in the training result
MASKING_ALGORITHM = "fitfed-masking"  # the result's PROCESSED_ALGORITHM, as FLARE's HE marks CKKS
WEIGHT_KEY = "NUM_STEPS_CURRENT_ROUND"

_REFUSALS = (KeyRefused, ProtocolRejected, RoundAborted, SealError)
logger = logging.getLogger(__name__)


class SecAggClub(FLComponent):
    """This club's identity and its current round: answers the protocol's steps and serves the filters."""

    def __init__(self) -> None:
        super().__init__()
        self._identity: ClubIdentity | None = None
        self._ca: Any = None
        self._server: str | None = None
        self._round: ClubRound | None = None
        self._sharers: tuple[str, ...] | None = None
        self._last_round = -1

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """At the start of the job, take the protocol's steps as aux messages from the server."""
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            for topic in (ADVERTISE, SHARE, UNMASK):
                engine.register_aux_message_handler(topic=topic, message_handle_func=self._answer)

    def _answer(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        """Run one protocol step and reply with its message; a refusal replies with an error and its reason logged."""
        self._load_identity(fl_ctx)
        peer = fl_ctx.get_peer_context()
        sender = peer.get_identity_name() if peer is not None else None
        if sender != self._server:  # FLARE lets clubs message each other; only the server runs the protocol
            self.log_error(fl_ctx, f"{topic}: refused a protocol step sent by {sender}, not by the server")
            return make_reply(ReturnCode.BAD_PEER_CONTEXT)
        payload = request.get(PAYLOAD)
        if not isinstance(payload, dict):
            self.log_error(fl_ctx, f"{topic}: the server's message is malformed (no {PAYLOAD} payload)")
            return make_reply(ReturnCode.BAD_REQUEST_DATA)
        try:
            if topic == ADVERTISE:
                answer = self.advertise(payload, fl_ctx)
            elif topic == SHARE:
                answer = self.share(payload)
            else:
                answer = self.unmask(payload)
        except _REFUSALS as e:  # the reason names clubs and rounds, never secret material
            self.log_error(fl_ctx, f"{topic}: this club refuses the step: {e}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        except ValueError as e:
            self.log_error(fl_ctx, f"{topic}: the server's message is malformed: {type(e).__name__}")
            return make_reply(ReturnCode.BAD_REQUEST_DATA)
        reply = make_reply(ReturnCode.OK)
        reply[PAYLOAD] = answer
        return reply

    def _load_identity(self, fl_ctx: FLContext) -> None:
        if self._identity is None:
            startup = Path(fl_ctx.get_engine().get_workspace().get_startup_kit_dir())
            self._identity = ClubIdentity.from_kit(startup, fl_ctx.get_identity_name())
            self._ca = load_ca(startup / ROOT_CA)
            # The kit names the federation's server; its identity is what FLARE authenticates messages with.
            self._server = json.loads((startup / "fed_client.json").read_text())["servers"][0]["name"]

    def advertise(self, payload: dict, fl_ctx: FLContext) -> dict:
        """Start a round: check it is this job's next round and that this club is in it, then sign fresh keys."""
        self._load_identity(fl_ctx)
        assert self._identity is not None
        context = RoundContext.model_validate(payload.get("context"))
        if self._round is not None and self._round.context == context and self._sharers is None:
            return {"advertisement": self._round.advertise().model_dump()}  # the server asked again: same keys
        if context.job_id != fl_ctx.get_job_id():
            raise ProtocolRejected(f"a round context for job {context.job_id!r}, not this job")
        if context.round <= self._last_round:
            raise ProtocolRejected(f"a round context for round {context.round}, already past (a replay)")
        self._round = ClubRound(context, self._identity, self._ca)
        self._sharers = None
        self._last_round = context.round
        return {"advertisement": self._round.advertise().model_dump()}

    def share(self, payload: dict) -> dict:
        """Check the relayed keys and seal this club's shares to each peer."""
        current = self._current(payload)
        return {"shares": [s.model_dump() for s in current.share(payload.get("advertisements") or [])]}

    def plan(self, payload: dict) -> None:
        """Remember which clubs shared keys, as the training task says; the result is masked for them."""
        self._current(payload)
        self._sharers = tuple(payload.get("sharers") or ())

    def mask(self, update: np.ndarray, weight: float) -> np.ndarray:
        """The weighted update, masked for this round's sharers; refuses to run outside a planned round."""
        if self._round is None or self._sharers is None:
            raise ProtocolRejected("a training result with no secure-aggregation round planned; nothing is sent")
        return self._round.mask(weighted_update(update, weight), self._sharers)

    def unmask(self, payload: dict) -> dict:
        """Reveal the asked-for shares, then forget this round's secrets."""
        current = self._current(payload)
        try:
            return {"reply": current.unmask(payload.get("request"), payload.get("shares") or []).model_dump()}
        finally:
            self._round, self._sharers = None, None

    def _current(self, payload: dict) -> ClubRound:
        if self._round is None or payload.get("round") != self._round.context.round:
            raise ProtocolRejected(f"a message for round {payload.get('round')!r}, which this club has not begun")
        return self._round


def _club(fl_ctx: FLContext) -> SecAggClub:
    club = fl_ctx.get_engine().get_component(CLUB_COMPONENT)
    if not isinstance(club, SecAggClub):
        raise RuntimeError(f"secure aggregation needs the job component {CLUB_COMPONENT!r}; re-export the job")
    return club


class ReadRoundPlan(Filter):
    """A task-data filter on the training task: hands the round's list of sharers to :class:`SecAggClub`."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Pass the task on unchanged, having noted its plan."""
        dxo = from_shareable(shareable)
        plan = dxo.get_meta_prop(PAYLOAD)
        if not isinstance(plan, dict):
            raise ProtocolRejected("a training task without a secure-aggregation plan; this club will not train")
        _club(fl_ctx).plan(plan)
        return shareable


class MaskUpdate(Filter):
    """A task-result filter on the training task: replaces the update with its masked, weighted vector.

    Parameters are laid out by :func:`fitfed.secagg.encoding.flatten`, which the server inverts. Metrics and the
    weight stay in the result's meta, in the clear, as in any FedAvg job.
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """The result with its update masked; raises (so nothing is sent) if masking is impossible."""
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable  # a failed task carries no update to mask
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            raise ProtocolRejected(f"secure aggregation masks weight differences, not {dxo.data_kind}")
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM):
            raise ProtocolRejected("the update is already encrypted; masking does not combine with HE")
        weight = float(dxo.get_meta_prop(WEIGHT_KEY, 0) or 0)
        if weight <= 0:
            raise ProtocolRejected(f"the training result has no positive {WEIGHT_KEY}; nothing is sent")
        masked = DXO(DataKind.WEIGHT_DIFF, data={MASKED: _club(fl_ctx).mask(flatten(dxo.data), weight)},
                     meta=dict(dxo.meta))  # fmt: skip
        masked.set_meta_prop(MetaKey.PROCESSED_ALGORITHM, MASKING_ALGORITHM)
        return masked.update_shareable(shareable)
