"""The sidecar's durable membership state on disk (``--state-dir``).

:meth:`StateStore.save` writes atomically: a temporary file in the same directory, fsynced,
renamed over the old one, and the directory fsynced, so a crash leaves either the old state or
the new one, never half of each. The runtime calls it for a
:class:`~chaos_sidecar.membership.machine.Persist` action before it sends anything that step
produced. :meth:`StateStore.load` returns what a previous life saved; a file that fails its
checksum or its checks is moved aside (``.corrupt``) and reported, and the sidecar starts as a
new incarnation (see docs/membership.md).
"""

from __future__ import annotations

import contextlib
import os
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


class StateStore:
    def __init__(self, directory: Path, node_id: str) -> None:
        self.directory = directory
        self.path = directory / f"{node_id}.state.json"
        self.node_id = node_id
        self.writes = 0

    def load(self) -> tuple[Durable | None, str | None]:
        """(saved state, None), (None, None) when there is none, or (None, why it was refused)."""
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"{self.path}: unreadable ({exc.strerror})"
        try:
            return decode_state(raw, self.node_id), None
        except InputError as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return None, f"{self.path}: {exc} (moved to {aside.name})"

    def save(self, state: Durable) -> None:
        """Atomically replace the state file; returns once it is on disk (raises OSError)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = encode_state(state)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.writes += 1


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
