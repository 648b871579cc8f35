"""Picks up a changed party key file or admission policy from their mounted files, without a
restart: a party's key rotates, or the parties change, while the job trains.

Both files are polled (inode, size and mtime of their targets, as for the join secret) every
``poll_s``; when either changed, both are read and checked as a pair
(:func:`chaos_sidecar.parties.check_reload`): the policy parses, lists this node's party and
its key, the party owns this node's id, the party is the same, the key is valid now. Then the
pair replaces the one in force for every holder of the secret at once (signing, verifying,
admitting); else the refusal is logged (stderr, event log ``party_reload``), counted, and the
pair in force stays. Because the pair is checked together, the files may change in either
order: a new key not yet in the old policy is refused, then taken when the new policy lists it.
A key whose window has not begun is checked again at every poll (time lifts that refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chaos_sidecar.config import file_version, read_party_files
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.parties import KeyNotYetValid, check_key_window, check_reload
from chaos_sidecar.security import RotatingSecret

FILES = ("key", "policy")
Versions = tuple[tuple[int, int, int], ...]


class PartyFilesWatch:
    def __init__(
        self, key_file: Path, policy_file: Path, node_id: str, secret: RotatingSecret,
        metrics: SidecarMetrics, log: EventLog, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.paths = (key_file, policy_file)
        self.node_id = node_id
        self.secret = secret
        self.metrics = metrics
        self.log = log
        self.clock = clock  # this node's wall clock: key windows are wall-clock times
        self.seen: Versions | str = "unreadable"  # the versions last decided on
        with contextlib.suppress(OSError):
            self.seen = self._versions()  # read at start, checked then
        self.waiting: Versions | None = None  # versions refused until their key's window begins

    async def run(self, poll_s: float) -> None:
        self.warn_if_outside_window()
        while True:
            await asyncio.sleep(poll_s)
            self.poll()

    def poll(self) -> None:
        try:
            now = self._versions()
        except OSError as exc:
            if self.seen != "unreadable":  # once per episode, not every poll
                self.seen = "unreadable"
                for file in FILES:
                    self.metrics.party_reloads.labels(file, "unreadable").inc()
                self.log.write(
                    Kind.PARTY_RELOAD, result="unreadable", error=f"{exc.filename}: {exc.strerror}"
                )
            return
        if now == self.seen:
            return
        changed = [f for i, f in enumerate(FILES) if isinstance(self.seen, str) or self.seen[i] != now[i]]
        try:
            signer, policy = read_party_files(str(self.paths[0]), str(self.paths[1]), self.node_id)  # type: ignore[misc]
            check_reload(self.secret.party, signer, policy, self.node_id, self.clock())  # type: ignore[arg-type]
        except InputError as exc:
            if not isinstance(exc, KeyNotYetValid):
                self.seen = now
            elif self.waiting == now:
                return  # said already; checked again at every poll until the window begins
            else:
                self.waiting = now
            self._refused(exc, changed)
            return
        self.seen, self.waiting = now, None
        self.secret.party, self.secret.policy = signer, policy
        for file in changed:
            self.metrics.party_reloads.labels(file, "accepted").inc()
        self.log.write(Kind.PARTY_RELOAD, result="accepted", changed=changed, party=signer.party,
                       public_key=signer.public_key, parties=[p.name for p in policy.parties])  # fmt: skip

    def warn_if_outside_window(self) -> None:
        """At start: a key outside its window on this node's clock gets a warning (peers will
        refuse it; the node still starts, since the window may be about to begin)."""
        try:
            check_key_window(self.secret.party, self.secret.policy, self.clock())  # type: ignore[arg-type]
        except InputError as exc:
            self.log.write(Kind.WARNING, field=exc.field, detail=exc.message)
            print(f"chaos-train sidecar: warning: {exc}: peers refuse its signatures outside the key's "
                  "window", file=sys.stderr, flush=True)  # fmt: skip

    def _refused(self, exc: InputError, changed: list[str]) -> None:
        for file in changed:
            self.metrics.party_reloads.labels(file, "refused").inc()
        self.log.write(
            Kind.PARTY_RELOAD, result="refused", changed=changed, field=exc.field, detail=exc.message
        )
        one_line = " ".join(str(exc).split())  # a YAML error spans lines
        print(f"chaos-train sidecar: warning: changed party files refused: {one_line}; the key and policy "
              "in force stay", file=sys.stderr, flush=True)  # fmt: skip

    def _versions(self) -> Versions:
        return tuple(file_version(p) for p in self.paths)
