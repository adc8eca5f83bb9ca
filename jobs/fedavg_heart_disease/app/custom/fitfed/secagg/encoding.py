"""Fixed-point encoding of real-valued updates into integers modulo 2^64, where masks add and cancel exactly.

A value x becomes round(x * 2^FRACTION_BITS) as a two's-complement 64-bit integer. Each club's rounding
error is at most 2^-(FRACTION_BITS+1) per coordinate (about 3e-8); a sum stays exact while its magnitude
is below 2^(63-FRACTION_BITS) (about 5.5e11), which :func:`encode` checks for one club's share of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

FRACTION_BITS = 24
MODULUS_BITS = 64
SCALE = float(2**FRACTION_BITS)
MAX_CLUBS = 2**10
# One club's encoded value must leave room for the sum of up to MAX_CLUBS clubs without wrapping around.
_LIMIT = 2.0 ** (MODULUS_BITS - 1 - FRACTION_BITS) / MAX_CLUBS


def rounding_error(clubs: int) -> float:
    """The largest error fixed point adds to a sum of ``clubs`` encoded vectors, per coordinate."""
    return clubs * 2.0 ** -(FRACTION_BITS + 1)


def encode(values: np.ndarray) -> np.ndarray:
    """Real values as uint64 fixed point; refuses values too large to sum without wrapping around."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("secure aggregation cannot encode an update holding NaN or infinity; check the local training")
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    if largest >= _LIMIT:
        raise OverflowError(
            f"an update coordinate of magnitude {largest:.3g} (times the club's weight) exceeds the fixed-point "
            f"range {_LIMIT:.3g}; lower the learning rate or clip the update (a privacy scope's clip_norm)"
        )
    return np.round(values * SCALE).astype(np.int64).view(np.uint64)


def decode(encoded: np.ndarray) -> np.ndarray:
    """The real values of a uint64 fixed-point vector (a sum of encoded vectors decodes to the sum)."""
    return np.asarray(encoded, dtype=np.uint64).view(np.int64).astype(np.float64) / SCALE


def as_float64(value: Any) -> np.ndarray:
    """A parameter (torch tensor or array) as a float64 numpy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def flatten(params: Mapping[str, Any]) -> np.ndarray:
    """Named parameters as one float64 vector, in sorted name order: the layout clubs mask and the server unmasks."""
    return np.concatenate([as_float64(params[name]).ravel() for name in sorted(params)])


def unflatten(vector: np.ndarray, like: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of :func:`flatten`, shaped like ``like``'s parameters."""
    out, offset = {}, 0
    for name in sorted(like):
        shape = tuple(like[name].shape)
        size = int(np.prod(shape))
        out[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    return out
