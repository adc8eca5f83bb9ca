"""The protocol's uses of the primitives: seeds from X25519 plus HKDF, masks from AES-CTR, shares sealed with AES-GCM.

Every derived key is bound to its purpose and to the round (job, round, both clubs' names), so no
seed or key from one round or pair can be replayed in another.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 32
_NONCE_BYTES = 12
PAIRWISE = b"fitfed-secagg/pairwise-mask"
SHARE_KEY = b"fitfed-secagg/share-encryption"


class SealError(ValueError):
    """A sealed share that does not open: altered, replayed from another round, or meant for someone else."""


def expand(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudorandom uint64 values from a 32-byte seed (AES-256 in counter mode, a fixed zero nonce).

    A zero nonce is safe because every seed is fresh: derived for one round and one pair, or drawn at random.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, not {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def agree(private: X25519PrivateKey, peer_public: bytes, *, purpose: bytes, context: bytes) -> bytes:
    """A 32-byte key both ends of an X25519 pair derive alike, for one purpose and one context."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=purpose + b"|" + context).derive(shared)


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key's public half."""
    return private.public_key().public_bytes_raw()


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-GCM: a random nonce, then the ciphertext and tag; ``associated`` is authenticated, not sent."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """Open what :func:`seal` made under the same key and associated data, or raise :class:`SealError`."""
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated)
    except (InvalidTag, ValueError) as e:
        raise SealError("a sealed share failed authentication") from e
