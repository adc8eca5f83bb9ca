"""The server's resume checkpoint: one file, replaced atomically after every completed round.

A checkpoint is ``<run dir>/fitfed/checkpoint/resume.ckpt``: one line of JSON (the
:class:`CheckpointManifest`, readable with ``head -1``), then the torch-serialised state.
The manifest carries the state's length and SHA-256, so a truncated or altered file is
detected before anything is loaded. It is written to a temporary file, flushed to disk and
renamed over the old one: a crash at any moment leaves either the old checkpoint or the new
one, never a mixture.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CHECKPOINT_DIR = "checkpoint"  # under the run record's folder (fitfed.server.run_record.RECORD_DIR)
CHECKPOINT_FILE = "resume.ckpt"
FORMAT = "fitfed-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, altered, or does not match the job that would resume from it."""


class CheckpointManifest(BaseModel):
    """What a checkpoint holds, checked before its state is trusted.

    Args:
        job_id: the FLARE job that wrote it.
        lineage_root: the first job of the training this job continues (its own id if it resumes nothing).
        rounds_completed: rounds whose global model is in the checkpoint (the next round is this number).
        num_rounds: the training's total rounds.
        config_sha256: fingerprint of the job's configuration (see :func:`config_fingerprint`).
        controller: the server workflow's class, whose state the checkpoint holds.
        best_metric: the best global model's validation metric so far, when there is one.
        best_round: the round that produced it.
        events_hash: the run record's last hash when the checkpoint was written (links it to the audit trail).
        state_bytes: length of the serialised state after the manifest line.
        state_sha256: its SHA-256.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = FORMAT
    job_id: str
    lineage_root: str
    rounds_completed: int = Field(ge=1)
    num_rounds: int = Field(ge=1)
    config_sha256: str
    controller: str
    best_metric: float | None = None
    best_round: int | None = None
    events_hash: str
    state_bytes: int = 0
    state_sha256: str = ""


def checkpoint_path(record_dir: Path) -> Path:
    """Where a run's checkpoint lives, given its run record folder (``<run dir>/fitfed``)."""
    return record_dir / CHECKPOINT_DIR / CHECKPOINT_FILE


def config_fingerprint(train_config_json: str, controller: str, num_rounds: int) -> str:
    """A hash of what must not change between a job and its continuation: training config, workflow, rounds."""
    canonical = json.dumps(
        {"train": json.loads(train_config_json), "controller": controller, "num_rounds": num_rounds}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_checkpoint(path: Path, manifest: CheckpointManifest, state: dict[str, Any]) -> None:
    """Replace the checkpoint at ``path`` atomically (write, fsync, rename, fsync the folder)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    manifest = manifest.model_copy(
        update={"state_bytes": len(payload), "state_sha256": hashlib.sha256(payload).hexdigest()}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        f.write(manifest.model_dump_json().encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_manifest(path: Path) -> CheckpointManifest:
    """The checkpoint's manifest, after checking that the state it describes is whole and unaltered.

    Raises:
        CheckpointError: missing, truncated, altered, or not a fitfed checkpoint; the message says which.
    """
    return _read(path)[0]


def read_checkpoint(path: Path) -> tuple[CheckpointManifest, dict[str, Any]]:
    """The manifest and the state, verified.

    Raises:
        CheckpointError: as :func:`read_manifest`, or the state cannot be loaded.
    """
    manifest, payload = _read(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path}: the checkpoint's state cannot be loaded ({type(e).__name__})") from None
    return manifest, state


def _read(path: Path) -> tuple[CheckpointManifest, bytes]:
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint. The job completed no round, or ran before fitfed kept checkpoints, "
            "or the server's workspace was removed"
        )
    data = path.read_bytes()
    header, _, payload = data.partition(b"\n")
    try:
        manifest = CheckpointManifest.model_validate_json(header)
    except ValidationError:
        raise CheckpointError(f"{path}: corrupt checkpoint (its manifest line is not a {FORMAT} manifest)") from None
    if len(payload) != manifest.state_bytes or hashlib.sha256(payload).hexdigest() != manifest.state_sha256:
        raise CheckpointError(
            f"{path}: corrupt checkpoint (the state is {len(payload)} bytes; the manifest expects "
            f"{manifest.state_bytes} bytes with SHA-256 {manifest.state_sha256[:12]}...); it was truncated or altered"
        )
    return manifest, payload
