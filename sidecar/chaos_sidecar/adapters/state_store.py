"""The sidecar's durable membership state on disk (``--state-dir``).

The runtime calls :meth:`StateStore.save` for a
:class:`~chaos_sidecar.membership.machine.Persist` action before it sends anything that step
produced, so a save sits on the critical path of every agreement (the coordinator's accept,
each member's vote, each install). It therefore writes *in place*: ``<node>.state`` holds two
fixed-size slots, each a header (magic, sequence number, length) and one encoded state (JSON
with its own SHA-256, :mod:`~chaos_sidecar.membership.durable`). A save overwrites the slot
that does not hold the newest state and ``fdatasync``s the file: one flush of blocks already
allocated, instead of a new file, a rename and two ``fsync`` calls (file and directory).

A crash mid-write tears only that slot; its checksum fails and :meth:`StateStore.load` takes
the other, the state before the interrupted step, whose messages never left. Only when
neither slot holds a sound state is the file moved aside (``.corrupt``) and reported, and the
sidecar starts as a new incarnation (see docs/membership.md). A ``<node>.state.json`` left by
an earlier version (one state, replaced by rename) is read when there is no slot file, and
removed once the slots hold a newer state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chaos_sidecar.config import SidecarConfig
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import Kind
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.membership.durable import MAX_STATE_BYTES, decode_state, encode_state
from chaos_sidecar.membership.machine import Durable
from chaos_sidecar.protocol.messages import MAX_INCARNATION, View

SLOT_MAGIC = b"CHS1"
SLOT_HEADER = struct.Struct(">4sQI")  # magic, sequence number, length of the encoded state
SLOT_BYTES = SLOT_HEADER.size + MAX_STATE_BYTES


class StateStore:
    def __init__(self, directory: Path, node_id: str) -> None:
        self.directory = directory
        self.path = directory / f"{node_id}.state"
        self.legacy_path = directory / f"{node_id}.state.json"
        self.node_id = node_id
        self.writes = 0
        self.sequence = 0  # of the newest sound slot; the next save writes sequence + 1
        self._loaded = False  # sequence is known only after a load

    def load(self) -> tuple[Durable | None, str | None]:
        """(saved state, None), (None, None) when there is none, or (None, why it was refused)."""
        self._loaded, self.sequence = True, 0
        if not self.path.exists() and self.legacy_path.exists():
            return self._load_legacy()
        try:
            with self.path.open("rb") as file:
                raw = file.read(2 * SLOT_BYTES)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"{self.path}: unreadable ({exc.strerror})"
        newest: tuple[int, Durable] | None = None
        problems = []
        for slot in (0, 1):
            try:
                found = self._decode_slot(raw[slot * SLOT_BYTES : (slot + 1) * SLOT_BYTES])
            except InputError as exc:
                problems.append(f"slot {slot}: {exc}")
                continue
            if found is not None and (newest is None or found[0] > newest[0]):
                newest = found
        if newest is None:
            return None, self._set_aside(self.path, "; ".join(problems)) if problems else None
        self.sequence = newest[0]
        return newest[1], None

    def _decode_slot(self, raw: bytes) -> tuple[int, Durable] | None:
        """(sequence, state) of a sound slot; None for a slot never written."""
        if len(raw) < SLOT_HEADER.size:
            raise InputError("state", "the file is shorter than its slots: damaged")
        magic, sequence, length = SLOT_HEADER.unpack_from(raw)
        if magic == b"\0" * 4 and sequence == 0 and length == 0:
            return None
        if magic != SLOT_MAGIC:
            raise InputError("state", "not a state slot (bad magic): damaged")
        if length > MAX_STATE_BYTES or SLOT_HEADER.size + length > len(raw):
            raise InputError("state", f"slot length {length} is out of range: damaged")
        return sequence, decode_state(raw[SLOT_HEADER.size : SLOT_HEADER.size + length], self.node_id)

    def _load_legacy(self) -> tuple[Durable | None, str | None]:
        try:
            with self.legacy_path.open("rb") as file:
                raw = file.read(MAX_STATE_BYTES + 1)
        except OSError as exc:
            return None, f"{self.legacy_path}: unreadable ({exc.strerror})"
        try:
            return decode_state(raw, self.node_id), None
        except InputError as exc:
            return None, self._set_aside(self.legacy_path, str(exc))

    @staticmethod
    def _set_aside(path: Path, problem: str) -> str:
        aside = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        return f"{path}: {problem} (moved to {aside.name})"

    def save(self, state: Durable) -> None:
        """Write ``state`` into the older slot; returns once it is on disk (raises OSError)."""
        if not self._loaded:  # never overwrite the newest slot of a file this store has not read
            self.load()
        data = encode_state(state)
        if len(data) > MAX_STATE_BYTES:
            raise OSError(errno.EFBIG, f"the state needs {len(data)} bytes, a slot holds {MAX_STATE_BYTES}")
        created = not self.path.exists()
        if created:
            self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if created:  # allocate both slots now, so that a save changes no metadata
                os.posix_fallocate(fd, 0, 2 * SLOT_BYTES)
            sequence = self.sequence + 1
            record = SLOT_HEADER.pack(SLOT_MAGIC, sequence, len(data)) + data
            offset = (sequence % 2) * SLOT_BYTES
            view = memoryview(record)
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            if created:
                os.fsync(fd)
            else:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:  # the new file's name must be on disk too
            self._sync_directory()
        self.sequence = sequence
        self.writes += 1
        if self.legacy_path.exists():  # the slots hold a newer state than an earlier version's file
            self.legacy_path.unlink()
            self._sync_directory()

    def _sync_directory(self) -> None:
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def initial_state(
    config: SidecarConfig, advertise: str, store: StateStore | None, log: Callable[..., None]
) -> sm.NodeState:
    """What a previous life of this node saved, if it is sound and the node is still reachable
    at the address it had; otherwise a new incarnation (a founder with ``--seed``, else a
    joiner), which never votes in an epoch an earlier one may have voted in. Saved at once."""
    settings = config.membership
    saved, problem = store.load() if store is not None else (None, None)
    if saved is not None and saved.view is not None:
        listed = saved.view.address_of(config.node_id)
        if listed is not None and listed != advertise:
            saved, problem = (
                None,
                f"the view lists {config.node_id} at {listed}, this sidecar is at {advertise}",
            )
    if saved is not None:
        state = sm.recover(saved, advertise, settings, time.monotonic())
        log(Kind.RECOVERED, epoch=state.epoch, status=state.status, incarnation=state.incarnation)
    else:
        incarnation = min(time.time_ns() // 1000, MAX_INCARNATION)  # later lives are larger
        if problem is not None:
            log(Kind.STATE_LOST, reason=problem, incarnation=incarnation)
            print(
                f"sidecar: durable state refused, rejoining as a new incarnation: {problem}", file=sys.stderr
            )
        if config.seed:
            view = View(1, (config.node_id,), config.node_id, (advertise,), incarnations=(incarnation,))
            state = sm.initial_member(config.node_id, view, settings, time.monotonic())
        else:
            state = sm.initial_joiner(config.node_id, advertise, config.contacts, settings, incarnation,
                                      standby=config.defer_join)  # fmt: skip
    if store is not None:
        try:
            store.save(sm.durable(state))
        except OSError as exc:
            raise InputError("--state-dir", f"cannot write {store.path}: {exc.strerror or exc}") from None
    return state
