"""Shamir's t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Any t shares give the secret back; fewer than t say nothing about it. Points are x = 1..n (a club's
position in the round's roster), shares are fixed-length big-endian bytes so they travel as bytes.
"""

from __future__ import annotations

import secrets

PRIME = 2**521 - 1  # a Mersenne prime, far above any 32-byte secret
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def split(secret: bytes, threshold: int, points: list[int]) -> dict[int, bytes]:
    """Shares of ``secret`` at each x in ``points``; any ``threshold`` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, not {len(secret)}")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} must be between 1 and the {len(points)} shares")
    if len(set(points)) != len(points) or min(points) < 1:
        raise ValueError("share points must be distinct and positive")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big") for x in points}


def combine(shares: dict[int, bytes]) -> bytes:
    """The secret from shares at distinct points (Lagrange interpolation at 0); needs at least t of them."""
    xs = list(shares)
    total = 0
    for i, x_i in enumerate(xs):
        y_i = int.from_bytes(shares[x_i], "big")
        numerator, denominator = 1, 1
        for j, x_j in enumerate(xs):
            if i != j:
                numerator = numerator * -x_j % PRIME
                denominator = denominator * (x_i - x_j) % PRIME
        total = (total + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    if total >= 2 ** (8 * SECRET_BYTES):
        raise ValueError("the shares do not reconstruct a secret: too few, or inconsistent")
    return total.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % PRIME
    return result
