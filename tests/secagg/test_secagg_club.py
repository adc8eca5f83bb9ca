"""A club's protocol handler: it answers only the federation's server, and only this job's next round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from fitfed.secagg.club import ADVERTISE, PAYLOAD, SecAggClub
from fitfed.secagg.protocol import Advertisement, RoundContext

SERVER = "fitfed_fed"
JOB = "job-1"


class _Workspace:
    def __init__(self, startup: Path):
        self.startup = startup

    def get_startup_kit_dir(self) -> str:
        return str(self.startup)


class _Engine:
    def __init__(self, startup: Path):
        self.workspace = _Workspace(startup)

    def get_workspace(self) -> _Workspace:
        return self.workspace

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """FLARE's components fire an event when they log an error; nothing listens here."""


def _kit(tmp_path: Path, authority, club: str) -> Path:
    """A club's startup folder as `nvflare provision` writes it: key, certificate, root CA, server name."""
    identity = authority.identity(club)
    startup = tmp_path / "startup"
    startup.mkdir()
    key = identity._key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    (startup / "client.key").write_bytes(key)
    (startup / "client.crt").write_bytes(identity.certificate)
    (startup / "rootCA.pem").write_bytes(authority.certificate.public_bytes(serialization.Encoding.PEM))
    (startup / "fed_client.json").write_text(json.dumps({"servers": [{"name": SERVER}]}))
    return startup


def _context(startup: Path, club: str, sender: str) -> FLContext:
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, sender, private=False, sticky=False)
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, _Engine(startup), private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, JOB, private=False, sticky=False)
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, club, private=False, sticky=False)
    fl_ctx.set_peer_context(peer)
    return fl_ctx


def _advertise_request(round_: int, job: str = JOB) -> Shareable:
    request = Shareable()
    context = RoundContext(job_id=job, round=round_, threshold=2, roster=("club_01", "club_02"))
    request[PAYLOAD] = {"context": context.model_dump()}
    return request


@pytest.fixture
def club(tmp_path: Path, authority) -> tuple[SecAggClub, Path]:
    return SecAggClub(), _kit(tmp_path, authority, "club_01")


def test_the_servers_request_gets_a_signed_advertisement(club, authority):
    component, startup = club
    reply = component._answer(ADVERTISE, _advertise_request(0), _context(startup, "club_01", SERVER))
    assert reply.get_return_code() == ReturnCode.OK
    advert = Advertisement.model_validate(reply[PAYLOAD]["advertisement"])
    advert.verify(authority.certificate)  # raises if the kit's key did not sign it
    assert advert.club == "club_01" and advert.round == 0


def test_a_request_from_another_club_is_refused_and_changes_nothing(club):
    # Execute: club_02 asks club_01 to begin round 7 (which would make round 1 look like a replay)
    component, startup = club
    reply = component._answer(ADVERTISE, _advertise_request(7), _context(startup, "club_01", "club_02"))

    # Assert: refused; the server's round 1 still goes ahead
    assert reply.get_return_code() == ReturnCode.BAD_PEER_CONTEXT
    reply = component._answer(ADVERTISE, _advertise_request(1), _context(startup, "club_01", SERVER))
    assert reply.get_return_code() == ReturnCode.OK


def test_replayed_foreign_and_malformed_requests_are_refused(club):
    component, startup = club
    server = _context(startup, "club_01", SERVER)
    assert component._answer(ADVERTISE, _advertise_request(3), server).get_return_code() == ReturnCode.OK
    # the same round again (before sharing) is the server asking again: the same keys come back
    assert component._answer(ADVERTISE, _advertise_request(3), server).get_return_code() == ReturnCode.OK
    replayed = component._answer(ADVERTISE, _advertise_request(2), server)
    foreign = component._answer(ADVERTISE, _advertise_request(4, job="another-job"), server)
    malformed = Shareable()
    malformed[PAYLOAD] = {"context": {"round": "x"}}
    assert replayed.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert foreign.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert component._answer(ADVERTISE, malformed, server).get_return_code() == ReturnCode.BAD_REQUEST_DATA
    assert component._answer(ADVERTISE, Shareable(), server).get_return_code() == ReturnCode.BAD_REQUEST_DATA
