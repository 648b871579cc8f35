"""Durable checkpoints: what lets a job resume when no live member holds the state (every
node died, or a new job points at an old checkpoint directory).

Every ``every`` steps one member writes one (the members take turns, so no member pays for
all of them): the state is copied at the step boundary and written on the trainer's writer
thread while training goes on. A checkpoint is a directory ``step-<step>`` holding a snapshot
(the same format as the state transfers: manifest with a sha256 per shard); it is written
under a temporary name, fsynced and renamed, so a half-written one is never seen as complete.
The newest ``keep`` are kept. Loading verifies every shard and the tensors' names and shapes;
a corrupt, truncated or foreign checkpoint is refused with a message naming the file and the
mismatch, and the next older one is tried. A failed write (a full disk) is logged and counted
and training goes on.

The directory must be storage every member reaches (a shared volume, a mounted bucket): in
Kubernetes ``spec.checkpoint`` names it; ``chaos-train run``/``local`` take ``--checkpoint-dir``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import Kind
from chaos_sidecar.transfer.snapshot import data_path, read_manifest, verify_shard
from chaos_train import state as snapshot_state

NAME = "state"  # the snapshot's name inside a checkpoint directory
_COMPLETE = re.compile(r"step-(\d{9})")


@dataclass(frozen=True)
class CheckpointPolicy:
    directory: Path
    every: int  # steps between checkpoints
    keep: int = 3  # complete checkpoints kept (older ones are removed)

    def __post_init__(self) -> None:
        if self.every <= 0:
            raise InputError("checkpoint.every", f"expected a positive number of steps, got {self.every}")
        if self.keep <= 0:
            raise InputError("checkpoint.keep", f"expected a positive count, got {self.keep}")


def checkpoint_dir(directory: Path, step: int) -> Path:
    return directory / f"step-{step:09d}"


class Checkpoints:
    def __init__(self, policy: CheckpointPolicy, node_id: str, log: Callable[..., None]) -> None:
        self.policy = policy
        self.node_id = node_id
        self.log = log
        self.failed = 0  # writes that failed (the count the event log and tests read)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.policy.every == 0

    def writer(self, members: list[str], step: int) -> str:
        """The member that writes the checkpoint of ``step``: they take turns."""
        ordered = sorted(members)
        return ordered[(step // self.policy.every) % len(ordered)]

    def write(self, captured: snapshot_state.Captured, step: int) -> None:
        """Write ``captured`` (see chaos_train.state.capture) as the checkpoint of ``step``.
        Runs on the writer thread; never raises."""
        final = checkpoint_dir(self.policy.directory, step)
        tmp = self.policy.directory / f".tmp-{final.name}-{self.node_id}"
        self.log("checkpoint_started", step=step)  # the write's start: the chaos harness kills here
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            snapshot_state.write(tmp, NAME, captured, step=step, epoch=0)
            for path in tmp.iterdir():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
            if final.exists():  # another member wrote this step already (a regroup moved turns)
                shutil.rmtree(tmp, ignore_errors=True)
                self.log("checkpoint_skipped", step=step, reason="written by another member")
                return
            tmp.rename(final)
            _fsync_dir(self.policy.directory)
            self.log(Kind.CHECKPOINT, step=step, path=str(final))
            self._prune()
        except OSError as exc:  # a full disk, a lost mount: this checkpoint fails, training goes on
            self.failed += 1
            shutil.rmtree(tmp, ignore_errors=True)
            self.log(Kind.CHECKPOINT_FAILED, step=step, error=str(exc)[:200], failed=self.failed)

    def _prune(self) -> None:
        for step in self.complete()[self.policy.keep :]:
            shutil.rmtree(checkpoint_dir(self.policy.directory, step), ignore_errors=True)

    def complete(self) -> list[int]:
        """The steps of the complete checkpoints, newest first."""
        if not self.policy.directory.is_dir():
            return []
        found = [_COMPLETE.fullmatch(p.name) for p in self.policy.directory.iterdir()]
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def newest_valid(self, at_most: int | None = None) -> int | None:
        """The newest checkpoint (at most ``at_most``) whose data matches its manifest."""
        for step in self.complete():
            if at_most is not None and step > at_most:
                continue
            if self._verify(step) is None:
                return step
        return None

    def _verify(self, step: int) -> str | None:
        """Why the checkpoint of ``step`` cannot be loaded, or None."""
        directory = checkpoint_dir(self.policy.directory, step)
        try:
            manifest = read_manifest(directory, NAME)
            if manifest.step != step:
                return f"its manifest says step {manifest.step}"
            data = data_path(directory, NAME).read_bytes()
            for index in range(manifest.shard_count):
                offset, length = manifest.shard_range(index)
                if not verify_shard(manifest, index, memoryview(data)[offset : offset + length]):
                    return f"shard {index} does not match its checksum"
        except (InputError, OSError, ValueError) as exc:
            return str(exc)
        return None

    def load(self, replica: snapshot_state.Replica, step: int) -> list[int] | None:
        """Load the checkpoint of ``step`` into ``replica``; returns [step, *extra], or None
        (logged, naming the file and the mismatch) when it is corrupt or from another model."""
        directory = checkpoint_dir(self.policy.directory, step)
        problem = self._verify(step)
        if problem is None:
            try:  # checks every entry before it changes anything
                return snapshot_state.load(directory, NAME, replica)
            except (InputError, ValueError, RuntimeError) as exc:
                problem = str(exc)
        self.log(Kind.CHECKPOINT_REFUSED, step=step, path=str(directory), reason=problem[:300])
        return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
