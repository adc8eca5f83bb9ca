"""Hash-chained event logs: each line carries the hash of the line before it, so an edit anywhere shows.

fitfed's run record (``events.jsonl``) is written this way. A reader verifies the chain before
trusting the record, for instance before exporting it as an audit trail.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


class ChainError(ValueError):
    """An event log whose hash chain does not verify: it was altered, truncated in the middle, or reordered."""


def chain_record(record: dict[str, Any], previous_hash: str, sequence: int) -> dict[str, Any]:
    """Return ``record`` with its sequence number, the previous record's hash and its own hash."""
    chained = {**record, "seq": sequence, "prev_hash": previous_hash}
    chained["hash"] = _digest(chained)
    return chained


def last_hash(path: Path) -> tuple[str, int]:
    """The hash and next sequence number to continue the chain in ``path`` (genesis if it is new)."""
    if not path.is_file():
        return GENESIS, 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        return GENESIS, 0
    last = json.loads(lines[-1])
    return last["hash"], last["seq"] + 1


def verify_chain(path: Path) -> list[dict[str, Any]]:
    """Read a hash-chained log and return its records.

    Raises:
        ChainError: naming the file and line where the chain breaks.
    """
    records = []
    previous = GENESIS
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ChainError(f"{path}:{number}: not a JSON record; the log was altered or truncated") from None
        body = {k: v for k, v in record.items() if k != "hash"}
        if record.get("prev_hash") != previous or record.get("seq") != len(records):
            raise ChainError(f"{path}:{number}: does not follow line {number - 1}; records were removed or reordered")
        if record.get("hash") != _digest(body):
            raise ChainError(f"{path}:{number}: its content does not match its hash; the record was altered")
        previous = record["hash"]
        records.append(record)
    return records


def _digest(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
