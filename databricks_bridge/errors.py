"""The bridge's exceptions: each message names the file (and line) at fault and what to do about it."""

from __future__ import annotations


class BridgeError(Exception):
    """An export that cannot go ahead. Nothing was written for it; what was exported before is intact."""


class TamperedTrailError(BridgeError):
    """A run record whose hash chain does not verify, or that disagrees with what was already exported."""
