"""Runs the pure membership state machine against a real clock and real sockets.

:class:`MembershipRuntime` owns the :class:`~chaos_sidecar.membership.machine.NodeState`,
feeds it ticks and received messages, and executes the returned actions: sends become
frames on the peer streams, the rest go to the event log and to waiters. It decides nothing.

Durable state: a step that changed it returns a :class:`~chaos_sidecar.membership.machine.
Persist` action first; with a :class:`~chaos_sidecar.adapters.state_store.StateStore` the
runtime writes it (fsynced) before it executes anything else of that step. When the write
fails the step is dropped whole (the state stays as before, nothing is sent: as if the input
had been lost on the way), logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

from chaos_sidecar.adapters.peer_stream import PeerLinks
from chaos_sidecar.adapters.state_store import StateStore
from chaos_sidecar.errors import ProtocolError
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.parties import screen
from chaos_sidecar.protocol.messages import Message, Relay, decode, encode
from chaos_sidecar.security import Verifier, check_relay_seal, party_policy, relay_seal

MAX_SLEEP_S = 5.0  # a standby node, due never, still looks at its state now and then


class MembershipRuntime:
    def __init__(
        self,
        state: sm.NodeState,
        secret: bytes,
        log: EventLog,
        metrics: SidecarMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_reject: Callable[[str], None] | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.secret = secret
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self._proposed: dict[int, float] = {}  # epoch -> when this node proposed it
        self.blocked: set[str] = set()  # fault injection: peers whose traffic we drop
        self.links: PeerLinks | None = None
        self.changed = asyncio.Condition()
        self._due = math.inf  # when the ticker sleeps until
        self._next_due = sm.next_due(state)  # of the current state (it changes only in apply)
        self._wake = asyncio.Event()  # set when an event brings the next tick forward
        self.on_reject = on_reject or (lambda reason: None)
        self.relay_verifier = Verifier(secret)  # seals of relayed messages: fresh, once each

    # --- inputs -----------------------------------------------------------------------------

    async def apply(self, event: sm.Event) -> None:
        started = time.perf_counter()
        state, actions = sm.step(self.state, event, self.clock())
        if actions and isinstance(actions[0], sm.Persist):
            if not self._persist(actions[0].state):
                return  # dropped whole: nothing that depends on the lost write happens
            actions = actions[1:]
        self.state = state
        if any(isinstance(a, sm.Decided) for a in actions):
            self.metrics.decision_seconds.observe(time.perf_counter() - started)
        self._next_due = sm.next_due(self.state)
        if self._next_due < self._due:
            self._wake.set()
        await self._execute(actions)

    async def receive(self, raw: bytes, authenticated_as: str) -> str | None:
        """Handle one peer message from an authenticated stream; returns a rejection reason."""
        try:
            message = decode(raw)
        except ProtocolError as exc:
            self.on_reject(exc.reason)
            return exc.reason
        if message.sender != authenticated_as:
            self.on_reject("spoofed_sender")
            return "spoofed_sender"
        if message.sender in self.blocked:
            return "blocked"
        body = message.body
        if isinstance(body, Relay) and body.to == self.state.node_id:
            # the relay is authenticated by its stream; the origin by its seal
            inner = encode(body.inner)
            reason = check_relay_seal(self.relay_verifier, body.seal, body.inner.sender, body.to, inner,
                                      time.time_ns())  # fmt: skip
            if reason is not None:
                self.on_reject(f"relay_{reason}")
                return f"relay_{reason}"
        policy = party_policy(self.secret)  # a multi-party job: its admission policy decides first
        if policy is not None and self.state.view is not None:
            members, pending = frozenset(self.state.view.members), sm.fresh_joins(self.state, self.clock())
            refused = screen(policy, message, members, pending)  # type: ignore[arg-type]
            if refused is not None:
                self.on_reject(refused)
                return refused
        await self.apply(sm.Receive(message))
        return None

    def _persist(self, saved: sm.Durable) -> bool:
        if self.store is None:
            return True
        try:
            self.store.save(saved)
        except OSError as exc:
            self.on_reject("persist_failed")
            self.log.write(Kind.ERROR, where="persist", path=str(self.store.path), error=str(exc))
            return False
        return True

    def _sealed(self, message: Message) -> Message:
        """A relayed message of this node's own gets its end-to-end seal."""
        body = message.body
        if not isinstance(body, Relay) or body.seal or body.inner.sender != self.state.node_id:
            return message
        seal = relay_seal(self.secret, body.inner.sender, body.to, encode(body.inner), time.time_ns())
        return dataclasses.replace(message, body=dataclasses.replace(body, seal=seal))

    async def tick_forever(self) -> None:
        """Tick when the state machine is next due (``sm.next_due``): a quiet member sleeps
        from heartbeat to heartbeat instead of waking at the retry pace."""
        while True:
            self._due = self._next_due
            delay = self._due - self.clock()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(delay, MAX_SLEEP_S))
                continue  # something happened, or it is time: look again
            self._due = math.inf
            try:
                await self.apply(sm.Tick())
            except Exception:  # a bug must not silence the heartbeats: report it, keep ticking
                traceback.print_exc()
                self.log.write(Kind.ERROR, where="tick")
                await asyncio.sleep(self.state.settings.retry_interval)

    # --- outputs ----------------------------------------------------------------------------

    async def _execute(self, actions: list[sm.Action]) -> None:
        notify = False
        encoded: dict[int, bytes] = {}  # a broadcast is one message object: encode it once
        for action in actions:
            match action:
                case sm.Send(to, address, message):
                    if to not in self.blocked and self.links is not None:
                        raw = encoded.get(id(message))
                        if raw is None:
                            raw = encoded[id(message)] = encode(self._sealed(message))
                        self.links.send(address, raw)
                case sm.Installed(view, status):
                    self.metrics.epoch.set(view.epoch)
                    self.metrics.members.set(len(view.members))
                    if view.epoch in self._proposed:
                        self.metrics.agreement_seconds.observe(
                            time.monotonic() - self._proposed.pop(view.epoch)
                        )
                    self.log.write(
                        Kind.INSTALLED,
                        epoch=view.epoch,
                        members=list(view.members),
                        coordinator=view.coordinator,
                        status=status,
                    )
                    notify = True
                case sm.LeftAlone(view):
                    self.metrics.members.set(0)
                    self.log.write(Kind.LEFT, epoch=view.epoch, alone=True)
                    notify = True
                case sm.Decided(view, changes):
                    self._proposed[view.epoch] = time.monotonic()
                    for change in changes:
                        self.metrics.events.labels(change[0]).inc()
                    self.log.write(
                        Kind.DECIDED,
                        epoch=view.epoch,
                        members=list(view.members),
                        changes=[list(c) for c in changes],
                    )
                case sm.Accepting(view, ballot):  # a hop of the agreement, for its latency breakdown
                    self.log.write(Kind.VOTED, epoch=view.epoch, ballot=list(ballot))
                case sm.Observed(change):
                    self.log.write(Kind.OBSERVED, change=list(change))
                case sm.TopologyChanged(version, links):
                    if (
                        version[1]
                        and self.state.view is not None
                        and self.state.node_id == self.state.view.coordinator
                    ):
                        self.metrics.events.labels("topology").inc()
                    self.log.write(Kind.TOPOLOGY, version=list(version), down=[list(x) for x in links])
                    notify = True
                case sm.Rejected(reason):
                    self.on_reject(reason)
                case sm.MajorityChanged(reachable, reaches, needed):
                    # over: reaches a majority again, or is no member any more
                    self.metrics.no_majority.set(0 if reachable else 1)
                    if not reachable:
                        self.metrics.majority_lost.inc()
                    view = self.state.view
                    kind = Kind.NO_MAJORITY_OVER if reachable else Kind.NO_MAJORITY
                    self.log.write(kind, reaches=list(reaches), needed=needed,
                                   members=len(view.members) if view else 0)  # fmt: skip
                    notify = True
        if notify:
            async with self.changed:
                self.changed.notify_all()

    async def close(self) -> None:
        if self.links is not None:
            await self.links.close()
        self.log.close()

    # --- views for the local API ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        s = self.state
        return {
            "node": s.node_id,
            "address": s.address,  # the URL peers reach this node at; its trainer binds to its host
            "status": s.status,
            "view": None if s.view is None else s.view.to_json(),
            "topology": {"version": list(s.topology[0]), "down": [list(x) for x in s.topology[1]]},
            "majority": None
            if not s.is_member or s.view is None
            else {"reachable": not s.majority_lost, "reaches": sorted(s.my_hears), "needed": s.view.majority},
            "blocked": sorted(self.blocked),
            "traffic": {
                "sent_bytes": self.links.sent_bytes if self.links else 0,
                "sent_frames": self.links.sent_frames if self.links else 0,
            },
        }
