"""The masking protocol's maths and refusals, every party in one process (real processes: tests/federation/)."""

from __future__ import annotations

import numpy as np
import pytest

from fitfed.secagg.encoding import decode, encode, flatten, rounding_error, unflatten
from fitfed.secagg.identity import KeyRefused
from fitfed.secagg.protocol import ClubRound, ProtocolRejected, RoundAborted, RoundContext, ServerRound, weighted_update

LENGTH = 257


def _round(identities, ca, n: int, threshold: int, round_: int = 0):
    ids = identities(n)
    context = RoundContext(job_id="job-1", round=round_, threshold=threshold, roster=tuple(sorted(ids)))
    clubs = {name: ClubRound(context, identity, ca) for name, identity in ids.items()}
    return context, clubs, ServerRound(context, ca, LENGTH)


def _send_masked(server: ServerRound, club: ClubRound, name: str, updates, weights) -> None:
    server.receive_masked(name, weights[name], club.mask(weighted_update(updates[name], weights[name]), server.sharers))


def _run(server: ServerRound, clubs: dict[str, ClubRound], updates, weights, *, drop_after_masking=()):
    """Every step; clubs in drop_after_masking send their masked update and then vanish."""
    for name, club in clubs.items():
        server.receive_advertisement(name, club.advertise().model_dump())
    relayed = [a.model_dump() for a in server.advertisements]
    for name, club in clubs.items():
        server.receive_shares(name, [s.model_dump() for s in club.share(relayed)])
    for name, club in clubs.items():
        _send_masked(server, club, name, updates, weights)
    request = server.unmask_request()
    for name, club in clubs.items():
        if name not in drop_after_masking:
            server.receive_unmask(name, club.unmask(request.model_dump(), server.shares_for(name)).model_dump())
    return server.aggregate()


def _updates(names, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0, 0.1, LENGTH) for n in names}, {n: float(rng.integers(5, 50)) for n in names}


def test_unmasked_sum_equals_weighted_fedavg_within_fixed_point_tolerance(identities, authority):
    # Setup
    _, clubs, server = _round(identities, authority.certificate, 5, threshold=3)
    updates, weights = _updates(clubs)

    # Execute
    total, weight = _run(server, clubs, updates, weights)

    # Assert: the unmasked mean is FedAvg's weighted mean, to within fixed point's stated rounding
    expected = sum(weights[n] * updates[n] for n in clubs) / sum(weights.values())
    assert weight == sum(weights.values())
    assert np.max(np.abs(total / weight - expected)) <= rounding_error(5) / weight


def test_a_club_dropped_after_masking_leaves_the_survivors_correct_sum(identities, authority):
    # Setup
    _, clubs, server = _round(identities, authority.certificate, 5, threshold=3)
    updates, weights = _updates(clubs, seed=1)

    # Execute: club_02 never answers the unmask step; its masked update arrived, so it counts
    total, weight = _run(server, clubs, updates, weights, drop_after_masking=("club_02",))

    # Assert
    expected = sum(weights[n] * updates[n] for n in clubs)
    assert np.max(np.abs(total - expected)) <= rounding_error(5)


def test_a_club_dropped_before_masking_is_left_out_and_its_masks_removed(identities, authority):
    # Setup
    _, clubs, server = _round(identities, authority.certificate, 5, threshold=3)
    updates, weights = _updates(clubs, seed=2)
    for name, club in clubs.items():
        server.receive_advertisement(name, club.advertise())
    for name, club in clubs.items():
        server.receive_shares(name, club.share(server.advertisements))

    # Execute: club_03 shared its keys, then died before sending its masked update
    survivors = [n for n in clubs if n != "club_03"]
    for name in survivors:
        _send_masked(server, clubs[name], name, updates, weights)
    request = server.unmask_request()
    for name in survivors:
        reply = clubs[name].unmask(request, server.shares_for(name))
        assert set(reply.mask_key_shares) == {"club_03"} and "club_03" not in reply.self_mask_shares
        server.receive_unmask(name, reply)
    total, weight = server.aggregate()

    # Assert: the sum of the four survivors only, with club_03's pairwise masks removed
    assert request.dropped == ("club_03",)
    expected = sum(weights[n] * updates[n] for n in survivors)
    assert weight == sum(weights[n] for n in survivors)
    assert np.max(np.abs(total - expected)) <= rounding_error(4)


def test_fewer_than_t_survivors_aborts_the_round(identities, authority):
    # Setup
    _, clubs, server = _round(identities, authority.certificate, 4, threshold=3)
    updates, weights = _updates(clubs)
    for name, club in clubs.items():
        server.receive_advertisement(name, club.advertise())
    for name, club in clubs.items():
        server.receive_shares(name, club.share(server.advertisements))
    for name in ("club_01", "club_02"):
        _send_masked(server, clubs[name], name, updates, weights)

    # Execute / Assert: two masked updates cannot be opened with t=3
    with pytest.raises(RoundAborted, match=r"only 2 club\(s\).*threshold t=3"):
        server.unmask_request()


def test_a_club_never_reveals_both_secrets_of_one_club(identities, authority):
    # Setup
    context, clubs, server = _round(identities, authority.certificate, 4, threshold=2)
    updates, weights = _updates(clubs)
    for name, club in clubs.items():
        server.receive_advertisement(name, club.advertise())
    for name, club in clubs.items():
        server.receive_shares(name, club.share(server.advertisements))
    for name, club in clubs.items():
        _send_masked(server, club, name, updates, weights)
    honest = server.unmask_request()

    # Execute / Assert: a server asking for club_04 as both survivor and dropped is refused
    greedy = honest.model_copy(update={"dropped": ("club_04",)})
    with pytest.raises(ProtocolRejected, match="split exactly"):
        clubs["club_01"].unmask(greedy, server.shares_for("club_01"))


def test_a_key_signed_under_another_ca_is_refused_by_the_server(identities, authority):
    # Setup: an impostor with a certificate for club_02's name from a CA outside the federation
    from secagg.conftest import Authority

    context, clubs, server = _round(identities, authority.certificate, 3, threshold=2)
    impostor = ClubRound(context, Authority("rogue").identity("club_02"), authority.certificate)

    # Execute / Assert
    with pytest.raises(KeyRefused, match="not issued by this federation's CA"):
        server.receive_advertisement("club_02", impostor.advertise())
    server.receive_advertisement("club_02", clubs["club_02"].advertise())  # the real club_02 is still welcome


def test_a_substituted_key_is_refused_by_the_clubs(identities, authority):
    # Setup
    _, clubs, server = _round(identities, authority.certificate, 3, threshold=2)
    for name, club in clubs.items():
        server.receive_advertisement(name, club.advertise())
    relayed = [a.model_dump() for a in server.advertisements]

    # Execute: a server (or anyone in between) swaps club_03's mask key for its own
    relayed[2]["mask_public"] = bytes(32)

    # Assert: club_01 refuses the round rather than share secrets under a key it cannot trust
    with pytest.raises(KeyRefused, match="club_03: the signature over its keys does not verify"):
        clubs["club_01"].share(relayed)


def test_a_certificate_of_one_club_cannot_sign_for_another(identities, authority):
    # Setup: club_01 signs an advertisement claiming to be club_02
    context, clubs, server = _round(identities, authority.certificate, 3, threshold=2)
    advert = clubs["club_01"].advertise().model_dump()
    advert["club"] = "club_02"

    # Execute / Assert
    with pytest.raises((KeyRefused, ProtocolRejected)):
        server.receive_advertisement("club_02", advert)


@pytest.mark.parametrize(
    ("sender", "mutate", "reason"),
    [
        ("club_02", lambda m: {**m, "round": 0}, "for job 'job-1' round 0, not this round"),
        ("club_02", lambda m: {**m, "mask_public": b"short"}, "malformed"),
        ("club_02", lambda m: {"garbage": 1}, "malformed"),
        ("club_09", lambda m: {**m, "club": "club_09"}, "not selected"),
        ("club_03", lambda m: m, "claims to come from club_02"),
    ],
    ids=["replayed", "wrong-size-key", "garbage", "unselected", "wrong-sender"],
)
def test_bad_messages_are_rejected_and_the_round_goes_on(identities, authority, sender, mutate, reason):
    # Setup: club_02's advertisement from round 0 is kept by an attacker; round 1 begins
    old_context, old_clubs, _ = _round(identities, authority.certificate, 4, threshold=3, round_=0)
    replay = old_clubs["club_02"].advertise().model_dump()
    _, clubs, server = _round(identities, authority.certificate, 4, threshold=3, round_=1)
    bad = mutate(replay) if reason.startswith("for job") else mutate(clubs["club_02"].advertise().model_dump())

    # Execute / Assert: the bad message is refused with a reason
    with pytest.raises(ProtocolRejected, match=reason):
        server.receive_advertisement(sender, bad)

    # Assert: the round still completes with every genuine message
    updates, weights = _updates(clubs, seed=3)
    total, weight = _run(server, clubs, updates, weights)
    assert np.max(np.abs(total - sum(weights[n] * updates[n] for n in clubs))) <= rounding_error(4)


def test_duplicate_and_unasked_messages_are_rejected(identities, authority):
    _, clubs, server = _round(identities, authority.certificate, 3, threshold=2)
    server.receive_advertisement("club_01", clubs["club_01"].advertise())
    with pytest.raises(ProtocolRejected, match="second key advertisement"):
        server.receive_advertisement("club_01", clubs["club_01"].advertise())
    with pytest.raises(ProtocolRejected, match="masked update from club_01 is malformed"):
        server.receive_masked("club_01", 1.0, np.zeros(3))
    with pytest.raises(ProtocolRejected, match="shared no keys"):
        server.receive_masked("club_01", 1.0, np.zeros(LENGTH, dtype=np.uint64))


def test_what_the_server_receives_is_independent_of_the_update(identities, authority):
    """Over many rounds, a club's masked vector neither correlates with its update nor decodes close to it."""
    # Setup: one club's update is the same every round; the others vary
    rng = np.random.default_rng(7)
    fixed = rng.normal(0, 0.1, LENGTH)
    correlations, distances = [], []

    # Execute
    for round_ in range(40):
        ids = identities(3)
        context = RoundContext(job_id="job-1", round=round_, threshold=2, roster=tuple(sorted(ids)))
        clubs = {n: ClubRound(context, i, authority.certificate) for n, i in ids.items()}
        adverts = [c.advertise() for c in clubs.values()]
        for club in clubs.values():
            club.share(adverts)
        masked = clubs["club_01"].mask(weighted_update(fixed, 1.0), sorted(clubs))
        as_real = decode(masked)
        correlations.append(np.corrcoef(fixed, masked.astype(np.float64))[0, 1])
        distances.append(np.median(np.abs(as_real - fixed)))

    # Assert: correlations are what independent vectors give (|r| ~ 1/sqrt(257) = 0.06), and the decoded
    # masked vector is astronomically far from the update (uniform over +-5.5e11, the update is ~0.1)
    assert abs(np.mean(correlations)) < 0.03
    assert np.max(np.abs(correlations)) < 0.3
    assert min(distances) > 1e9


def test_fixed_point_round_trip_and_refusals():
    values = np.array([0.0, 1.5, -2.25, 1e-9, -123.456789])
    assert np.max(np.abs(decode(encode(values)) - values)) <= rounding_error(1)
    summed = encode(values) + encode(-values / 2)
    assert np.max(np.abs(decode(summed) - values / 2)) <= rounding_error(2)
    with pytest.raises(OverflowError, match="exceeds the fixed-point range"):
        encode(np.array([1e12]))
    with pytest.raises(ValueError, match="NaN or infinity"):
        encode(np.array([np.nan]))


def test_flatten_and_unflatten_share_one_layout_for_tensors_and_arrays():
    import torch

    params = {"b.bias": torch.tensor([1.0, 2.0]), "a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    flat = flatten(params)
    assert flat.dtype == np.float64 and flat.tolist() == [0, 1, 2, 3, 4, 5, 1, 2]  # sorted by name
    back = unflatten(flat, params)
    assert back.keys() == params.keys() and back["a.weight"].shape == (2, 3)
    np.testing.assert_array_equal(back["b.bias"], [1.0, 2.0])
