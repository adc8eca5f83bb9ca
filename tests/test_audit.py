from __future__ import annotations

import json
from pathlib import Path

import pytest

from fitfed.audit import GENESIS, ChainError, chain_record, last_hash, verify_chain


def _write_chain(path: Path, events: list[dict]) -> None:
    previous, sequence = last_hash(path)
    assert (previous, sequence) == (GENESIS, 0)
    with open(path, "w") as f:
        for event in events:
            record = chain_record(event, previous, sequence)
            f.write(json.dumps(record) + "\n")
            previous, sequence = record["hash"], sequence + 1


def test_chain_verifies_and_continues(tmp_path: Path):
    # Prepare
    log = tmp_path / "events.jsonl"
    _write_chain(log, [{"event": "a"}, {"event": "b", "round": 0}])

    # Execute
    records = verify_chain(log)

    # Assert
    assert [r["event"] for r in records] == ["a", "b"]
    assert last_hash(log) == (records[-1]["hash"], 2)


def test_altered_record_is_detected(tmp_path: Path):
    # Prepare: a metric changed after the fact
    log = tmp_path / "events.jsonl"
    _write_chain(log, [{"event": "a", "auc": 0.5}, {"event": "b"}])
    log.write_text(log.read_text().replace('"auc": 0.5', '"auc": 0.9'))

    # Execute / Assert
    with pytest.raises(ChainError, match=r"events.jsonl:1: its content does not match its hash"):
        verify_chain(log)


def test_removed_record_is_detected(tmp_path: Path):
    # Prepare
    log = tmp_path / "events.jsonl"
    _write_chain(log, [{"event": "a"}, {"event": "b"}, {"event": "c"}])
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], lines[2]]) + "\n")

    # Execute / Assert
    with pytest.raises(ChainError, match=r"events.jsonl:2: does not follow line 1"):
        verify_chain(log)


def test_garbage_line_is_detected(tmp_path: Path):
    log = tmp_path / "events.jsonl"
    _write_chain(log, [{"event": "a"}])
    with open(log, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ChainError, match=r"events.jsonl:2: not a JSON record"):
        verify_chain(log)
