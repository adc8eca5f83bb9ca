"""The resume checkpoint: atomic replacement survives a SIGKILL mid-write; corruption is detected and named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fitfed.server.checkpoint import (
    CheckpointError,
    CheckpointManifest,
    config_fingerprint,
    read_checkpoint,
    read_manifest,
    write_checkpoint,
)


def _manifest(rounds: int) -> CheckpointManifest:
    return CheckpointManifest(
        job_id="job-1",
        lineage_root="job-1",
        rounds_completed=rounds,
        num_rounds=100,
        config_sha256="c" * 64,
        controller="FedAvg",
        events_hash="e" * 64,
    )


def test_a_checkpoint_reads_back_as_written(tmp_path: Path):
    # Arrange
    path = tmp_path / "checkpoint" / "resume.ckpt"
    state = {"weights": {"w": torch.arange(6.0).reshape(2, 3)}, "fedopt_optimizer": {"state": {}, "param_groups": []}}

    # Execute
    write_checkpoint(path, _manifest(3), state)
    manifest, loaded = read_checkpoint(path)

    # Assert: the manifest line is plain JSON, and describes the state that follows it
    header, _, payload = path.read_bytes().partition(b"\n")
    assert CheckpointManifest.model_validate_json(header) == manifest
    assert manifest.rounds_completed == 3 and manifest.state_bytes == len(payload)
    assert torch.equal(loaded["weights"]["w"], state["weights"]["w"])
    assert list(tmp_path.glob("checkpoint/.*partial")) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-10], "corrupt checkpoint (the state is"),
        (lambda data: data[:-10] + bytes([data[-10] ^ 1]) + data[-9:], "truncated or altered"),
        (lambda data: b"not json\n" + data.split(b"\n", 1)[1], "manifest line is not a fitfed-checkpoint/1"),
    ],
    ids=["truncated", "one byte altered", "manifest garbled"],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path: Path, damage, message: str):
    # Arrange
    path = tmp_path / "resume.ckpt"
    write_checkpoint(path, _manifest(2), {"weights": {"w": torch.ones(100)}})
    path.write_bytes(damage(path.read_bytes()))

    # Execute + Assert
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path)
    assert message in str(refused.value) and str(path) in str(refused.value)


def test_a_missing_checkpoint_says_so(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_manifest(tmp_path / "resume.ckpt")


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from fitfed.server.checkpoint import CheckpointManifest, write_checkpoint
    path = Path(sys.argv[1])
    for rounds in range(1, 10_000):
        manifest = CheckpointManifest(job_id="j", lineage_root="j", rounds_completed=rounds, num_rounds=10_000,
                                      config_sha256="c", controller="FedAvg", events_hash="e")
        write_checkpoint(path, manifest, {"weights": {"w": torch.full((2_000_000,), float(rounds))}})
        print(rounds, flush=True)
    """
)


def test_a_server_killed_while_writing_leaves_the_previous_checkpoint_usable(tmp_path: Path):
    # Arrange: a real process rewriting an 8 MB checkpoint as fast as it can
    path = tmp_path / "resume.ckpt"
    seen = []
    for attempt in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
        )
        try:
            assert writer.stdout is not None
            writer.stdout.readline()  # one checkpoint is complete
            time.sleep(0.05 + 0.037 * attempt)  # then kill it at a different point of a later write

            # Execute
            writer.send_signal(signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait(timeout=10)

        # Assert: the checkpoint on disk is one whole checkpoint, old or new, never a mixture
        manifest, state = read_checkpoint(path)
        assert torch.all(state["weights"]["w"] == float(manifest.rounds_completed))
        seen.append(manifest.rounds_completed)
    assert len(list(tmp_path.glob(".*.partial"))) >= 1  # some kill did land mid-write, and the leftover is ignored


def test_the_config_fingerprint_changes_with_anything_a_continuation_must_keep():
    base = config_fingerprint('{"learning_rate": 0.1, "seed": 0}', "FedAvg", 5)
    assert base == config_fingerprint('{"seed": 0, "learning_rate": 0.1}', "FedAvg", 5)  # key order is not a change
    assert base != config_fingerprint('{"learning_rate": 0.2, "seed": 0}', "FedAvg", 5)
    assert base != config_fingerprint('{"learning_rate": 0.1, "seed": 0}', "Scaffold", 5)
    assert base != config_fingerprint('{"learning_rate": 0.1, "seed": 0}', "FedAvg", 6)
