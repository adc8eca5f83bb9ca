"""MaskedFedAvg on bad answers: the club is dropped, the round goes on, the trail says why."""

from __future__ import annotations

from fitfed.secagg.controller import MaskedFedAvg, _Failed
from fitfed.secagg.protocol import ProtocolRejected


def test_bad_answers_drop_only_their_club_and_are_recorded_without_their_content():
    # Setup: four clubs asked; one answers well, one sends garbage, one a rejected message, one failed its task
    controller = MaskedFedAvg(num_rounds=1, threshold=2)
    trail: dict = {"steps": []}
    accepted = []

    def accept(club: str, payload: dict) -> None:
        if payload.get("advertisement") == "replayed":
            raise ProtocolRejected(f"the key advertisement from {club} is for job 'j' round 0, not this round")
        accepted.append(club)

    answers = {"club_01": {"advertisement": "ok"}, "club_02": [b"\x00secret-looking"],
               "club_03": {"advertisement": "replayed"}, "club_04": _Failed("EXECUTION_EXCEPTION")}  # fmt: skip

    # Execute
    took = controller._take(trail, "advertise", ["club_01", "club_02", "club_03", "club_04", "club_05"], answers,
                            accept)  # fmt: skip

    # Assert: only the good answer counts; each other club is dropped with a reason that holds no payload
    assert took == accepted == ["club_01"]
    step = trail["steps"][0]
    assert step["took_part"] == ["club_01"] and step["dropped"] == ["club_02", "club_03", "club_04", "club_05"]
    assert step["reasons"]["club_02"] == "its answer is malformed"
    assert step["reasons"]["club_03"].startswith("refused: the key advertisement from club_03 is for job")
    assert "EXECUTION_EXCEPTION" in step["reasons"]["club_04"]
    assert "no answer" in step["reasons"]["club_05"]
    assert "secret-looking" not in str(trail)
