"""Trainers of one view epoch meet over the network, in a store hosted by the view's first member.

The host's trainer starts a ``TCPStore`` on a free port of its own address and publishes
(epoch, round, host, port) to its sidecar; every other member's trainer asks its own sidecar,
which asks the host's sidecar (authenticated peer API). Each member then announces its
arrival in the store and waits for all the others: the store is the epoch's meeting place
for its process group, the overlap-join notes and the joiners' progress. Nothing is shared
but the network.

Fencing: the host writes ``fence = "<epoch>:<round>"`` before publishing, and a member checks
it after connecting, so a store of another epoch or round (a port reused by the host) is
never joined. A round that fails is never reused; a member follows the newest round the
host has published for its epoch, and one that is ahead (it failed in a round the others still
wait in) says so in that round's store, so they leave it instead of waiting for its deadline.
"""

from __future__ import annotations

import datetime
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch.distributed as dist

from chaos_sidecar.protocol.local_api import RendezvousEntry
from chaos_train.sidecar_client import SidecarClient

ARRIVAL_DEADLINE_S = 120.0  # every member of a view reaches its meeting, or the round is given up
POLL_S = 0.005  # arrival checks: a store round trip on the host
LOOKUP_POLL_S = 0.02  # asking the sidecars where the host's store is
# one try to reach the host's store; between tries a member checks whether its view moved on
CONNECT_TRY_S = 2.0
WANTED_ROUND = "wanted-round"  # set in a round's store by a member that already failed in it


GROUP_KEY = "group"  # the meeting's random name (see Meeting.group)


class RendezvousFailed(RuntimeError):
    """The epoch's store could not be reached or was not the one expected."""


class RoundPassed(RendezvousFailed):
    """A member already failed in this round: meet again at once, in the round it is at."""


@dataclass
class Meeting:
    epoch: int
    round: int
    store: dist.Store  # the host holds the listening TCPStore itself: it serves while referenced
    # a random name the host gives this meeting: unlike (epoch, round), it differs between
    # groups of a job started again (view epochs start over with new sidecars)
    group: str = ""


class Rendezvous:
    """Meetings of this trainer with the members of each view epoch."""

    def __init__(self, sidecar: SidecarClient, node_id: str, address: str, timeout_s: float) -> None:
        self.sidecar = sidecar
        self.node_id = node_id
        self.address = address  # this node's host: the stores it hosts listen here
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.rounds: dict[int, int] = {}  # epoch -> the round this trainer is at
        self.finished_step: int | None = None  # a host's trainer said the job is done
        self._told: dict[int, int] = {}  # epoch -> the older round this trainer asked to leave

    def next_round(self, epoch: int) -> None:
        """The current round of ``epoch`` failed: meet in a fresh one."""
        self.rounds[epoch] = self.rounds.get(epoch, 0) + 1

    def meet(
        self,
        epoch: int,
        members: list[str],
        moved_on: Callable[[], bool],
        deadline_s: float = ARRIVAL_DEADLINE_S,
    ) -> Meeting | None:
        """Meet every member of ``epoch`` in the store of its current round. None when the view
        moves on (``moved_on()``), the deadline passes, or the host's trainer finished the job
        (``finished_step`` says so); raises RendezvousFailed when the store cannot be used."""
        deadline = time.monotonic() + deadline_s
        if members[0] == self.node_id:
            round_ = self.rounds.get(epoch, 0)
            store: dist.Store = dist.TCPStore(
                self.address, 0, None, True, self.timeout, wait_for_workers=False
            )
            store.set("fence", f"{epoch}:{round_}")
            store.set(GROUP_KEY, secrets.token_hex(6))
            self.sidecar.publish_rendezvous(RendezvousEntry(epoch, round_, self.address, store.port))
        else:
            entry = self._find_host(epoch, members[0], moved_on, deadline)
            if entry is None:
                return None
            round_ = self.rounds[epoch] = entry.round
            store = self._connect(entry, moved_on, deadline)
            if store is None:
                return None
            try:
                fence = store.get("fence").decode()
            except (RuntimeError, ValueError) as exc:  # refused, timed out, or gone
                raise RendezvousFailed(f"the store of epoch {epoch} at {entry.address}: {exc}") from None
            if fence != f"{epoch}:{round_}":
                raise RendezvousFailed(f"the store at {entry.address} is {fence}, not {epoch}:{round_}")
        store.set(f"arrived/{self.node_id}", "1")
        keys = [f"arrived/{m}" for m in members]
        while not store.check(keys):
            if moved_on() or time.monotonic() > deadline:
                return None
            if store.check([WANTED_ROUND]):  # a member failed this round already: move past it
                wanted = int(store.get(WANTED_ROUND))
                self.rounds[epoch] = max(self.rounds.get(epoch, 0), wanted - 1)
                raise RoundPassed(f"a member of epoch {epoch} is at round {wanted}, not {round_}")
            time.sleep(POLL_S)
        return Meeting(epoch, round_, store, store.get(GROUP_KEY).decode())

    def _connect(
        self, entry: RendezvousEntry, moved_on: Callable[[], bool], deadline: float
    ) -> dist.Store | None:
        """A client of the host's store, tried ``CONNECT_TRY_S`` at a time. A host that moved on
        to a newer view has closed this epoch's store (or its pod is gone): one long try sat
        out the whole timeout (15 s) although this member's sidecar already had the newer
        view. None when the view moved on or the deadline passed; RendezvousFailed once the
        tries add up to the timeout."""
        give_up = time.monotonic() + self.timeout.total_seconds()
        while True:
            try:
                try_s = datetime.timedelta(seconds=CONNECT_TRY_S)
                store = dist.TCPStore(entry.host, entry.port, None, False, try_s)
            except (RuntimeError, ValueError) as exc:  # refused, timed out, or gone
                if moved_on() or time.monotonic() > deadline:
                    return None
                if time.monotonic() > give_up:
                    message = f"the store of epoch {entry.epoch} at {entry.address}: {exc}"
                    raise RendezvousFailed(message) from None
                continue
            store.set_timeout(self.timeout)  # the meeting's own operations
            return store

    def _want_round(self, entry: RendezvousEntry, wanted: int) -> None:
        """Tell the members waiting in ``entry``'s older round that this trainer failed there
        (they leave it, and the host opens a round at least ``wanted``). Best effort: the old
        store may be gone already."""
        if self._told.get(entry.epoch) == entry.round:
            return
        self._told[entry.epoch] = entry.round
        try:
            old = dist.TCPStore(entry.host, entry.port, None, False, datetime.timedelta(seconds=2))
            if old.get("fence").decode() == f"{entry.epoch}:{entry.round}":
                old.set(WANTED_ROUND, str(wanted))
        except (RuntimeError, ValueError):
            pass

    def _find_host(
        self, epoch: int, host: str, moved_on: Callable[[], bool], deadline: float
    ) -> RendezvousEntry | None:
        """The host's entry for ``epoch`` at this trainer's round or a newer one."""
        while True:
            status = self.sidecar.rendezvous_status(epoch, host)
            if status is not None:
                if status.finished_step is not None:
                    self.finished_step = status.finished_step
                    return None
                entry = status.entry
                wanted = self.rounds.get(epoch, 0)
                if entry is not None and entry.epoch == epoch:
                    if entry.round >= wanted:
                        return entry
                    self._want_round(entry, wanted)
            if moved_on() or time.monotonic() > deadline:
                return None
            time.sleep(LOOKUP_POLL_S)
