"""The four steps of a masked round, for a club (:class:`ClubRound`) and for the server (:class:`ServerRound`).

1. **Advertise.** Each club makes two fresh X25519 key pairs (one to seal shares, one to agree mask seeds)
   and a random self-mask seed, and signs the public keys with its FLARE identity.
2. **Share.** Each club checks every peer's signature against the federation's CA, then splits its
   self-mask seed and its mask key t-of-n and seals one share of each to every peer.
3. **Mask.** Each club sends its weighted update in fixed point plus its self-mask plus, for every peer
   that shared, the pair's mask: added by the club whose name sorts first, subtracted by the other.
4. **Unmask.** The server names who sent a masked update. Each club opens the shares it holds and gives
   the self-mask share of every survivor and the mask-key share of every club that dropped, never both
   for one club. The server rebuilds those secrets, removes the masks and learns only the sum.

Both sides refuse messages for another job or round, from clubs outside the round, duplicates, and
anything that does not parse; refusals carry reasons, never secret material.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fitfed.secagg.encoding import MAX_CLUBS, decode, encode
from fitfed.secagg.identity import ClubIdentity, KeyRefused, verify_signed
from fitfed.secagg.masks import PAIRWISE, SEED_BYTES, SHARE_KEY, SealError, agree, expand, public_bytes, seal, unseal
from fitfed.secagg.shamir import SHARE_BYTES, combine, split

PROTOCOL = "fitfed-secagg/1"


class ProtocolRejected(ValueError):
    """A protocol message refused: malformed, for another round, from a club outside the round, or a duplicate."""


class RoundAborted(RuntimeError):
    """The round cannot finish: fewer than t clubs are left at some step, or the secrets do not reconstruct."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    round: int = Field(ge=0)


class RoundContext(_Message):
    """What every party agrees on before a round: the job, the round, t, and the clubs selected (sorted)."""

    threshold: int = Field(ge=2)
    roster: tuple[str, ...]

    @model_validator(mode="after")
    def _sorted_roster(self) -> RoundContext:
        if list(self.roster) != sorted(set(self.roster)):
            raise ValueError("the roster must be sorted and without duplicates")
        if len(self.roster) > MAX_CLUBS:
            raise ValueError(f"{len(self.roster)} clubs: fixed point sums at most {MAX_CLUBS} without wrapping around")
        if len(self.roster) < self.threshold:
            raise ValueError(f"{len(self.roster)} clubs selected, fewer than the threshold t={self.threshold}")
        return self

    def point(self, club: str) -> int:
        """The club's Shamir share point: its position in the roster, from 1."""
        return self.roster.index(club) + 1

    def label(self, *parts: str) -> bytes:
        """Bytes binding a key or message to this job and round (and to the named clubs)."""
        return "|".join([PROTOCOL, self.job_id, str(self.round), *parts]).encode()

    def check(self, message: _Message, what: str) -> None:
        """Refuse a message made for another job or round (a replay)."""
        if (message.job_id, message.round) != (self.job_id, self.round):
            raise ProtocolRejected(f"{what} is for job {message.job_id!r} round {message.round}, not this round")


class Advertisement(_Message):
    """A club's round keys and the commitment to its self-mask seed, signed with its FLARE identity."""

    club: str
    cipher_public: bytes = Field(min_length=32, max_length=32)
    mask_public: bytes = Field(min_length=32, max_length=32)
    self_mask_commitment: bytes = Field(min_length=32, max_length=32)
    certificate: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        """What the signature covers: everything above but the certificate and signature themselves."""
        fields = [PROTOCOL.encode(), self.job_id.encode(), str(self.round).encode(), self.club.encode(),
                  self.cipher_public, self.mask_public, self.self_mask_commitment]  # fmt: skip
        return b"".join(len(f).to_bytes(4, "big") + f for f in fields)

    def verify(self, ca: x509.Certificate) -> None:
        """Raise :class:`KeyRefused` unless the club's CA-issued certificate signed these keys."""
        verify_signed(self.signed_bytes(), self.signature, self.certificate, ca=ca, name=self.club)


class SealedShare(_Message):
    """One club's shares (self-mask seed and mask key) for one peer, sealed to that peer."""

    sender: str
    recipient: str
    sealed: bytes


class MaskedUpdate(_Message):
    """A club's masked, weighted update: uint64 fixed point, plus its weight (sent plain, as FLARE's FedAvg does)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    club: str
    weight: float = Field(gt=0)
    vector: np.ndarray


class UnmaskRequest(_Message):
    """The server's word on who sent a masked update (survivors) and who shared keys but did not (dropped)."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


class UnmaskReply(_Message):
    """A club's revealed shares: survivors' self-mask seeds and dropped clubs' mask keys, by club name."""

    club: str
    self_mask_shares: dict[str, bytes]
    mask_key_shares: dict[str, bytes]


def parse(model: type[_Message], payload: object, what: str) -> _Message:
    """A message from the wire, or :class:`ProtocolRejected` saying (without its content) why not."""
    if isinstance(payload, model):
        return payload
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "(message)" for err in e.errors()})
        raise ProtocolRejected(f"{what} is malformed (fields: {', '.join(fields)})") from None


class ClubRound:
    """One club's side of one round. Its secrets live only in this object, for this round only."""

    def __init__(self, context: RoundContext, identity: ClubIdentity, ca: x509.Certificate):
        if identity.name not in context.roster:
            raise ProtocolRejected(f"{identity.name} was not selected for round {context.round}")
        self.context = context
        self.name = identity.name
        self._identity = identity
        self._ca = ca
        self._cipher_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._self_seed = os.urandom(SEED_BYTES)
        self._peers: dict[str, Advertisement] = {}
        self._sharers: tuple[str, ...] = ()
        self._advert: Advertisement | None = None

    def advertise(self) -> Advertisement:
        """Step 1: this club's signed public keys (the same object if asked again)."""
        if self._advert is not None:
            return self._advert
        unsigned = Advertisement(
            job_id=self.context.job_id,
            round=self.context.round,
            club=self.name,
            cipher_public=public_bytes(self._cipher_key),
            mask_public=public_bytes(self._mask_key),
            self_mask_commitment=hashlib.sha256(self._self_seed).digest(),
            certificate=self._identity.certificate,
            signature=b"",
        )
        self._advert = unsigned.model_copy(update={"signature": self._identity.sign(unsigned.signed_bytes())})
        return self._advert

    def share(self, advertisements: Iterable[object]) -> list[SealedShare]:
        """Step 2: check every peer's keys, then seal shares of this club's secrets to each of them."""
        peers: dict[str, Advertisement] = {}
        for payload in advertisements:
            advert = parse(Advertisement, payload, "a relayed key advertisement")
            self.context.check(advert, f"{advert.club}'s key advertisement")
            if advert.club not in self.context.roster or advert.club in peers:
                raise ProtocolRejected(f"the server relayed keys for {advert.club}, outside the round or twice")
            advert.verify(self._ca)  # KeyRefused: a forged or substituted key stops this club here
            peers[advert.club] = advert
        if peers.get(self.name) != self.advertise():
            raise KeyRefused(f"the server relayed keys for {self.name} that are not this club's own")
        if len(peers) < self.context.threshold:
            raise RoundAborted(f"only {len(peers)} clubs advertised keys, fewer than t={self.context.threshold}")
        self._peers = peers
        points = [self.context.point(c) for c in peers]
        seed_shares = split(self._self_seed, self.context.threshold, points)
        key_shares = split(_raw(self._mask_key), self.context.threshold, points)
        sealed = []
        for club, advert in sorted(peers.items()):
            x = self.context.point(club)
            key = agree(self._cipher_key, advert.cipher_public, purpose=SHARE_KEY, context=self._pair(self.name, club))
            plaintext = x.to_bytes(2, "big") + seed_shares[x] + key_shares[x]
            associated = self.context.label("share", self.name, club)
            sealed.append(
                SealedShare(
                    job_id=self.context.job_id,
                    round=self.context.round,
                    sender=self.name,
                    recipient=club,
                    sealed=seal(key, plaintext, associated),
                )  # fmt: skip
            )
        return sealed

    def mask(self, weighted_update: np.ndarray, sharers: Iterable[str]) -> np.ndarray:
        """Step 3: the weighted update in fixed point, plus the self-mask and the pairwise masks of every sharer."""
        sharers = tuple(sorted(set(sharers)))
        if self.name not in sharers or not set(sharers) <= set(self._peers):
            raise ProtocolRejected("the server's list of clubs that shared keys is not a subset of those advertised")
        if len(sharers) < self.context.threshold:
            raise RoundAborted(f"only {len(sharers)} clubs shared keys, fewer than t={self.context.threshold}")
        self._sharers = sharers
        length = weighted_update.size
        masked = encode(weighted_update.ravel()) + expand(self._self_seed, length)
        for peer in sharers:
            if peer != self.name:
                seed = agree(
                    self._mask_key, self._peers[peer].mask_public, purpose=PAIRWISE, context=self._pair(self.name, peer)
                )
                masked = masked + expand(seed, length) if self.name < peer else masked - expand(seed, length)
        return masked

    def unmask(self, request: object, shares: Iterable[object]) -> UnmaskReply:
        """Step 4: reveal survivors' self-mask shares and dropped clubs' mask-key shares, never both for one club."""
        request = parse(UnmaskRequest, request, "the unmask request")
        self.context.check(request, "the unmask request")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped or survivors | dropped != set(self._sharers) or self.name not in survivors:
            raise ProtocolRejected(
                "the unmask request must split exactly the clubs that shared keys into survivors and dropped"
            )
        if len(survivors) < self.context.threshold:
            raise RoundAborted(
                f"only {len(survivors)} clubs sent masked updates, fewer than t={self.context.threshold}"
            )
        opened: dict[str, tuple[bytes, bytes]] = {}
        for payload in shares:
            share = parse(SealedShare, payload, "a relayed share")
            self.context.check(share, f"the share from {share.sender}")
            if share.recipient != self.name or share.sender not in self._sharers or share.sender in opened:
                raise ProtocolRejected(f"a share from {share.sender} to {share.recipient} was relayed to {self.name}")
            key = agree(self._cipher_key, self._peers[share.sender].cipher_public, purpose=SHARE_KEY,
                        context=self._pair(share.sender, self.name))  # fmt: skip
            plaintext = unseal(key, share.sealed, self.context.label("share", share.sender, self.name))
            if int.from_bytes(plaintext[:2], "big") != self.context.point(self.name):
                raise SealError(f"the share from {share.sender} is for another point")
            opened[share.sender] = (plaintext[2 : 2 + SHARE_BYTES], plaintext[2 + SHARE_BYTES :])
        missing = set(self._sharers) - set(opened)
        if missing:
            raise ProtocolRejected(f"shares from {sorted(missing)} were not relayed to {self.name}")
        return UnmaskReply(
            job_id=self.context.job_id,
            round=self.context.round,
            club=self.name,
            self_mask_shares={c: opened[c][0] for c in sorted(survivors)},
            mask_key_shares={c: opened[c][1] for c in sorted(dropped)},
        )

    def _pair(self, a: str, b: str) -> bytes:
        return self.context.label(*sorted((a, b)))


class ServerRound:
    """The server's side of one round: it checks and relays messages, and in the end learns only the sum."""

    def __init__(self, context: RoundContext, ca: x509.Certificate, length: int):
        self.context = context
        self.length = length
        self._ca = ca
        self._adverts: dict[str, Advertisement] = {}
        self._shares: dict[str, list[SealedShare]] = {}
        self._masked: dict[str, MaskedUpdate] = {}
        self._replies: dict[str, UnmaskReply] = {}

    def _from_selected(self, club: str, claimed: str, step: str, seen: dict) -> None:
        if club not in self.context.roster:
            raise ProtocolRejected(f"{step} from {club}, which was not selected for round {self.context.round}")
        if claimed != club:
            raise ProtocolRejected(f"{step} from {club} claims to come from {claimed}")
        if club in seen:
            raise ProtocolRejected(f"a second {step} from {club} in round {self.context.round}")

    def receive_advertisement(self, club: str, payload: object) -> None:
        """Step 1: keep a selected club's keys if its CA-issued certificate signed them."""
        advert = parse(Advertisement, payload, f"the key advertisement from {club}")
        self.context.check(advert, f"the key advertisement from {club}")
        self._from_selected(club, advert.club, "key advertisement", self._adverts)
        advert.verify(self._ca)
        self._adverts[club] = advert

    @property
    def advertisements(self) -> list[Advertisement]:
        """The verified advertisements, to relay to every advertiser."""
        return [self._adverts[c] for c in sorted(self._adverts)]

    def need(self, have: Iterable[str], step: str) -> None:
        """Abort when fewer than t clubs are left at a step."""
        have = sorted(have)
        if len(have) < self.context.threshold:
            raise RoundAborted(
                f"round {self.context.round}: only {len(have)} club(s) {have} completed {step}, fewer than the "
                f"threshold t={self.context.threshold} needed to unmask; the round's updates cannot be opened"
            )

    def receive_shares(self, club: str, payloads: object) -> None:
        """Step 2: keep an advertiser's sealed shares, one for every advertiser."""
        if not isinstance(payloads, list):
            raise ProtocolRejected(f"the shares from {club} are malformed (not a list)")
        shares = [parse(SealedShare, p, f"a share from {club}") for p in payloads]
        for share in shares:
            self.context.check(share, f"a share from {club}")
        self._from_selected(club, shares[0].sender if shares else club, "set of shares", self._shares)
        if club not in self._adverts:
            raise ProtocolRejected(f"shares from {club}, which advertised no keys this round")
        if {s.sender for s in shares} != {club} or sorted(s.recipient for s in shares) != sorted(self._adverts):
            raise ProtocolRejected(f"the shares from {club} are not one per advertising club")
        self._shares[club] = shares

    @property
    def sharers(self) -> tuple[str, ...]:
        """The clubs that shared their secrets: the ones whose masks the others add."""
        return tuple(sorted(self._shares))

    def shares_for(self, club: str) -> list[SealedShare]:
        """The sealed shares addressed to ``club``, from every sharer."""
        return [s for sender in self.sharers for s in self._shares[sender] if s.recipient == club]

    def receive_masked(self, club: str, weight: float, vector: object) -> None:
        """Step 3: keep a sharer's masked update."""
        if not isinstance(vector, np.ndarray) or vector.dtype != np.uint64 or vector.shape != (self.length,):
            raise ProtocolRejected(f"the masked update from {club} is malformed (expected {self.length} uint64 values)")
        update = MaskedUpdate(
            job_id=self.context.job_id, round=self.context.round, club=club, weight=weight, vector=vector
        )
        self._from_selected(club, update.club, "masked update", self._masked)
        if club not in self._shares:
            raise ProtocolRejected(f"a masked update from {club}, which shared no keys this round")
        self._masked[club] = update

    @property
    def survivors(self) -> tuple[str, ...]:
        """The clubs whose masked updates arrived."""
        return tuple(sorted(self._masked))

    def unmask_request(self) -> UnmaskRequest:
        """Step 4's question to every survivor."""
        self.need(self.survivors, "the masked-update step")
        dropped = tuple(c for c in self.sharers if c not in self._masked)
        return UnmaskRequest(
            job_id=self.context.job_id, round=self.context.round, survivors=self.survivors, dropped=dropped
        )

    def receive_unmask(self, club: str, payload: object) -> None:
        """Step 4: keep a survivor's revealed shares if they cover exactly what was asked."""
        reply = parse(UnmaskReply, payload, f"the unmask reply from {club}")
        self.context.check(reply, f"the unmask reply from {club}")
        self._from_selected(club, reply.club, "unmask reply", self._replies)
        request = self.unmask_request()
        if club not in request.survivors:
            raise ProtocolRejected(f"an unmask reply from {club}, which sent no masked update")
        if set(reply.self_mask_shares) != set(request.survivors) or set(reply.mask_key_shares) != set(request.dropped):
            raise ProtocolRejected(f"the unmask reply from {club} does not answer the request")
        self._replies[club] = reply

    def aggregate(self) -> tuple[np.ndarray, float]:
        """The survivors' weighted sum (decoded) and their total weight; masks removed, nothing else learnt."""
        request = self.unmask_request()
        self.need(self._replies, "the unmask step")
        total = np.zeros(self.length, dtype=np.uint64)
        for update in self._masked.values():
            total = total + update.vector
        for club in request.survivors:
            seed = self._reconstruct(club, "self_mask_shares")
            if hashlib.sha256(seed).digest() != self._adverts[club].self_mask_commitment:
                raise RoundAborted(
                    f"the self-mask shares of {club} do not match its commitment; a club sent a bad share"
                )
            total = total - expand(seed, self.length)
        for club in request.dropped:
            key = X25519PrivateKey.from_private_bytes(self._reconstruct(club, "mask_key_shares"))
            if public_bytes(key) != self._adverts[club].mask_public:
                raise RoundAborted(
                    f"the mask-key shares of {club} do not match its public key; a club sent a bad share"
                )
            for survivor in request.survivors:
                pair = self.context.label(*sorted((club, survivor)))
                seed = agree(key, self._adverts[survivor].mask_public, purpose=PAIRWISE, context=pair)
                # The survivor added this pair's mask if its name sorts first, else subtracted it.
                total = total - expand(seed, self.length) if survivor < club else total + expand(seed, self.length)
        weight = sum(self._masked[c].weight for c in request.survivors)
        return decode(total), weight

    def _reconstruct(self, club: str, field: str) -> bytes:
        """A secret from t of the survivors' shares; the caller checks it against what its owner advertised."""
        shares = {self.context.point(r.club): getattr(r, field)[club] for r in self._replies.values()}
        return combine(dict(list(shares.items())[: self.context.threshold]))


def weighted_update(values: np.ndarray, weight: float) -> np.ndarray:
    """What a club masks: its update times its FedAvg weight, so the unmasked sum divides by the total weight."""
    return np.asarray(values, dtype=np.float64).ravel() * weight


def _raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
