"""A deterministic simulator for the membership state machine.

N nodes run :func:`~chaos_sidecar.membership.machine.step` over a simulated network driven
by one seeded ``random.Random``: the same seed gives the same schedule, so a failing seed
replays exactly. During the fault phase the scheduler injects the enabled faults; then it
heals everything and lets the group settle. Invariants are checked after every step:

* no two different views committed with the same epoch;
* no ballot carries two values, and no two values are chosen (accepted under one ballot by a
  majority of the predecessor's members) for one epoch, committed or not;
* each node's committed epoch only grows (across restarts too; a node that lost its state
  is a new incarnation, whose epochs start again);
* every committed view was accepted by a majority of its predecessor's members, under one
  ballot;
* an acceptor keeps its word across restarts: it never promises or accepts below a ballot it
  promised, its promises report the highest ballot it accepted, and a new incarnation never
  votes in an epoch where an earlier one did (checked on the messages it sends);
* after the faults stop (everything healed, a majority alive), all live nodes converge to
  one view, whose members are exactly the live nodes that did not leave, within
  ``settle_s`` simulated seconds, and keep it for ``hold_s``.

Partial connectivity: the ``bridge`` fault cuts every link between two sides while one or
more hubs still reach everyone, and ``final_bridge`` leaves such a cut in place after the
faults stop (one hub: a member of the newest view; nodes outside it, which have no relays,
on the hub's side). Convergence then needs a connected majority to keep committing: members
that cannot reach each other directly must be heard through the hub.

Crash recovery: a restart keeps only what the node's last :class:`~chaos_sidecar.membership.
machine.Persist` action wrote (and, now and then, not even that: the node comes back as a new
incarnation). Besides the ``crash`` faults on the schedule, a node crashes right after a step
that takes part in an agreement (PREPARE, PROMISE, ACCEPT, ACCEPTED, COMMIT, a decision or an
install) with probability ``paxos_crash_p``, half the time part-way through executing that
step's actions (the writes and sends after the cut never happen; a step of which nothing got
out never happened), and restarts soon after; messages from before a restart, and some sent
to it while it was down, are delivered after it.

No wall clock is read except to time the decision step (``decision_ns``).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace

from chaos_sidecar.membership import machine as sm
from chaos_sidecar.membership.support import support_from_scratch
from chaos_sidecar.protocol.messages import Accepted, Ballot, Message, Promise, Relay, View, decode, encode

FAULT_KINDS = (
    "crash",
    "partition",
    "drop",
    "duplicate",
    "reorder",
    "delay",
    "link",
    "bridge",
    "join",
    "leave",
)


PAXOS_KINDS = frozenset({"prepare", "promise", "accept", "accepted", "commit", "nack"})
STALE_REPLAYS = 8  # messages from before a restart delivered again after it


def parse_faults(text: str) -> frozenset[str]:
    """``all``, ``none`` or a comma-separated subset of :data:`FAULT_KINDS`."""
    text = text.strip()
    if text == "all":
        return frozenset(FAULT_KINDS)
    if text in ("", "none"):
        return frozenset()
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; choose from {', '.join(FAULT_KINDS)}")
    return frozenset(kinds)


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 5
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    fault_s: float = 2.0
    """Simulated seconds of fault injection."""
    fault_rate: float = 6.0
    """Injected fault events per simulated second."""
    settle_s: float = 10.0
    """Bound on convergence time after the faults stop."""
    min_group: int = 3
    """Leaves are not injected below this size."""
    wire: bool = False
    """Round-trip every message through the JSON codec."""
    final_bridge: bool = False
    """Leave a bridge cut (two sides, one hub) in place after the faults stop."""
    hold_s: float = 0.0
    """Convergence counts once the group has kept the converged view (no commit, everyone a
    member) this long: a group that converges only in passing, between removals and
    re-admissions, fails."""
    due_ticks: bool = True
    """Tick each node when :func:`~chaos_sidecar.membership.machine.next_due` says, as the
    sidecar does; False ticks every node at the retry pace and checks that a quiet node's
    early ticks change nothing (that ``next_due`` never skips work)."""
    paxos_crash_p: float = 0.05
    """With ``crash`` faults: chance that a node crashes right after a step that takes part in
    an agreement (it restarts 0.01-1 s later, even after the faults stop)."""
    amnesia_p: float = 0.2
    """Chance that a restart finds no durable state (a lost or corrupt state file): the node
    comes back as a new incarnation."""
    settings: sm.Settings = field(default_factory=sm.Settings)


@dataclass
class ScheduleResult:
    seed: int
    events: int = 0
    steps: int = 0
    ticks: int = 0
    messages: int = 0
    violations: list[str] = field(default_factory=list)
    converged: bool = False
    converge_s: float | None = None
    decision_ns: list[int] = field(default_factory=list)
    max_epoch: int = 0
    bridged_commits: int = 0
    """Epochs first committed while a bridge cut was in place."""
    crashes: int = 0
    agreement_crashes: int = 0
    """Crashes right after a step that took part in an agreement."""
    lost_state: int = 0
    """Restarts without the durable state (new incarnations)."""
    trace: list[str] = field(default_factory=list)


class _Sim:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.cfg = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self.queue: list[tuple[float, int, str, object]] = []
        self.seq = 0
        self.result = ScheduleResult(seed)
        self.trace: deque[str] = deque(maxlen=60)
        ids = [f"n{i}" for i in range(config.nodes)]
        self.initial = View(1, tuple(ids), ids[0], tuple(ids))
        self.states: dict[str, sm.NodeState] = {
            n: sm.initial_member(n, self.initial, config.settings, 0.0) for n in ids
        }
        self.crashed: set[str] = set()
        self.saved: dict[str, sm.Durable] = {n: sm.durable(s) for n, s in self.states.items()}
        self.reborn: set[str] = set()  # back as a new incarnation, not re-admitted yet
        self.incarnations = 0
        self.recent: deque[tuple[str, str, Message]] = deque(maxlen=200)  # agreement messages sent
        self.missed: dict[str, list[tuple[str, str, Message]]] = {}  # agreement messages lost in a crash
        self.left: set[str] = set()
        self.leaving: set[str] = set()
        self.joined = 0
        # invariant bookkeeping
        self.committed: dict[int, View] = {1: self.initial}
        self.accepts: dict[View, set[str]] = {}
        self.ballot_values: dict[tuple[int, Ballot], View] = {}
        self.ballot_accepts: dict[tuple[int, Ballot], set[str]] = {}
        self.chosen: dict[int, View] = {1: self.initial}
        # (node, epoch) -> (incarnation, highest ballot promised, highest accepted), as sent
        self.votes: dict[tuple[str, int], tuple[int, Ballot | None, Ballot | None]] = {}
        self.epochs: dict[str, int] = dict.fromkeys(ids, 1)
        # network faults
        self.groups: dict[str, int] | None = None
        self.down: set[frozenset[str]] = set()
        self.bridged: set[frozenset[str]] = set()  # links cut by the current bridge
        self.drop_p = 0.0
        self.dup_p = 0.0
        self.jitter = 0.0
        self.extra_delay = 0.0
        self.faults_on = True
        self.tick_at: dict[str, float] = {}  # due_ticks: each node's scheduled tick

    # --- scheduling ----------------------------------------------------------------------

    def push(self, at: float, kind: str, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, payload))

    def log(self, text: str) -> None:
        self.trace.append(f"{self.now:8.3f} {text}")

    def violation(self, text: str) -> None:
        self.result.violations.append(f"t={self.now:.3f} {text}")
        self.log(f"VIOLATION {text}")

    # --- network -------------------------------------------------------------------------

    def connected(self, a: str, b: str) -> bool:
        if self.groups is not None and self.groups.get(a, -1) != self.groups.get(b, -1):
            return False
        link = frozenset((a, b))
        return link not in self.down and link not in self.bridged

    def transmit(self, sender: str, send: sm.Send) -> None:
        to = send.to
        if to not in self.states or not self.connected(sender, to):
            return
        if self.faults_on and self.drop_p and self.rng.random() < self.drop_p:
            return
        copies = 2 if self.faults_on and self.dup_p and self.rng.random() < self.dup_p else 1
        message = send.message
        if self.cfg.wire:
            message = decode(encode(message))
        if message.kind in PAXOS_KINDS:
            self.recent.append((sender, to, message))
        for copy in range(copies):
            delay = 0.0005 + self.rng.random() * 0.002
            if self.faults_on:
                delay += self.rng.random() * self.jitter + self.rng.random() * self.extra_delay
            if copy:  # a duplicate may come much later (after a restart of either end)
                delay += self.rng.random() * 0.5
            self.push(self.now + delay, "deliver", (sender, to, message))

    # --- running nodes --------------------------------------------------------------------

    def apply(self, node: str, event: sm.Event) -> None:
        state = self.states[node]
        started = time.perf_counter_ns()
        new, actions = sm.step(state, event, self.now)
        elapsed = time.perf_counter_ns() - started
        self.states[node] = new
        self.result.steps += 1
        if isinstance(event, sm.Tick):
            self.result.ticks += 1
            self.check_support(node, new)
            if not self.cfg.due_ticks:
                self.check_early_tick(node, state, new, actions)
        self.schedule_tick(node)
        crash = self.paxos_crash(node, actions)
        # a crash half the time cuts the step short: what the adapter had not yet executed
        # (writes, sends) never happens. What the machine decided stands (the checks record it)
        # unless nothing of the step got out, neither a write nor a message: then it never was
        done = self.rng.randint(0, len(actions)) if crash and self.rng.random() < 0.5 else len(actions)
        effects = [i for i, a in enumerate(actions) if isinstance(a, sm.Persist | sm.Send)]
        happened = not effects or effects[0] < done
        for index, action in enumerate(actions if happened else []):
            match action:
                case sm.Persist(saved):
                    if index < done:
                        self.saved[node] = saved
                case sm.Send():
                    self.result.messages += 1
                    if index < done:
                        self.check_vote(node, action.message)
                        self.transmit(node, action)
                case sm.Accepting(view, ballot):
                    self.check_accept(node, view, ballot)
                case sm.Installed(view, status):
                    if node in self.reborn and new.is_member:
                        self.reborn.discard(node)
                    self.check_install(node, view)
                    self.log(
                        f"{node} installs e{view.epoch} {list(view.members)} c={view.coordinator} ({status})"
                    )
                    if status == sm.LEFT:
                        self.left.add(node)
                case sm.LeftAlone(view):
                    self.log(f"{node} leaves e{view.epoch} alone")
                    self.left.add(node)
                case sm.Decided(view, changes):
                    self.result.decision_ns.append(elapsed)
                    self.log(f"{node} decides e{view.epoch}: {changes}")
        if crash:
            what = ", ".join(sorted(self.paxos_kinds(actions)))
            cut = f" ({done} of its {len(actions)} actions done)" if done < len(actions) else ""
            why = f"after its {what}{cut}"
            self.crash(node, self.rng.uniform(0.01, 1.0), why, brief=True)

    @staticmethod
    def paxos_kinds(actions: list) -> set[str]:
        kinds = {a.message.kind for a in actions if isinstance(a, sm.Send) and a.message.kind in PAXOS_KINDS}
        kinds.update(type(a).__name__.lower() for a in actions if isinstance(a, sm.Decided | sm.Installed))
        return kinds

    def paxos_crash(self, node: str, actions: list) -> bool:
        """Whether ``node`` crashes right after this step (which took part in an agreement)."""
        if not self.faults_on or "crash" not in self.cfg.faults or node in self.crashed or node in self.left:
            return False
        return bool(self.paxos_kinds(actions)) and self.rng.random() < self.cfg.paxos_crash_p

    def crash(self, node: str, down_s: float, why: str = "", *, brief: bool = False) -> None:
        """``brief``: it comes back even after the faults stop, so any number may be down at
        once; only a loss of its state (a new incarnation that needs a quorum to be
        re-admitted) must then keep a live majority (:meth:`may_lose`)."""
        self.crashed.add(node)
        self.result.crashes += 1
        self.result.agreement_crashes += brief
        self.log(f"FAULT crash {node}{' ' + why if why else ''}")
        amnesia = node not in self.leaving and self.rng.random() < self.cfg.amnesia_p
        if amnesia and brief:
            self.crashed.discard(node)  # may_lose counts the crashed as gone already
            amnesia = self.may_lose(node)
            self.crashed.add(node)
        self.push(self.now + down_s, "restart", (node, amnesia, brief))

    def restart(self, node: str, amnesia: bool) -> None:
        """Back with what it persisted, or (``amnesia``) as a new incarnation that asks to join."""
        self.crashed.discard(node)
        old = self.states[node]
        if amnesia:
            self.incarnations += 1
            top = self.committed[max(self.committed)]
            contacts = tuple((n, n) for n in top.members if n != node)
            settings = self.cfg.settings
            self.states[node] = sm.initial_joiner(node, old.address, contacts, settings, self.incarnations)
            self.saved[node] = sm.durable(self.states[node])
            self.reborn.add(node)
            self.result.lost_state += 1
            self.epochs[node] = 0  # a new incarnation: its epochs start again
            self.log(f"FAULT restart {node} without its state: incarnation {self.incarnations}")
        else:
            saved = self.saved[node]
            self.states[node] = sm.recover(saved, old.address, self.cfg.settings, self.now)
            # an install whose write the crash cut short never happened (nothing it sent left)
            self.epochs[node] = 0 if saved.view is None else saved.view.epoch
            self.log(f"FAULT restart {node}")
            if node in self.leaving and not saved.want_leave:
                self.leaving.discard(node)  # the request to leave died with it, unwritten
                self.log(f"{node} forgot its leave (the crash cut it before it was written)")
        self.schedule_tick(node)
        # messages from its previous life, to it and from it, arrive again after the restart,
        # and some of those sent to it while it was down arrive now (while it starts over)
        stale = [m for m in self.recent if node in (m[0], m[1])]
        for sender, to, message in self.rng.sample(stale, min(STALE_REPLAYS, len(stale))):
            self.push(self.now + self.rng.uniform(0.0, 0.05), "deliver", (sender, to, message))
        missed = self.missed.pop(node, [])
        for sender, to, message in self.rng.sample(missed, min(4 * STALE_REPLAYS, len(missed))):
            self.push(self.now + self.rng.uniform(0.001, 0.01), "deliver", (sender, to, message))

    def check_accept(self, node: str, view: View, ballot: Ballot) -> None:
        """One value per ballot; and once a majority of the predecessor's members accepted one
        value under one ballot, that value is chosen: no other may be chosen or committed."""
        self.accepts.setdefault(view, set()).add(node)
        key = (view.epoch, ballot)
        first = self.ballot_values.setdefault(key, view)
        if first != view:
            self.violation(f"ballot {ballot} of e{view.epoch} carries two values: {first} and {view}")
        accepted = self.ballot_accepts.setdefault(key, set())
        accepted.add(node)
        predecessor = self.committed.get(view.epoch - 1)
        if predecessor is not None and len(accepted & set(predecessor.members)) >= predecessor.majority:
            chosen = self.chosen.setdefault(view.epoch, view)
            if chosen != view:
                self.violation(f"two values chosen at e{view.epoch}: {chosen} and {view}")

    def check_early_tick(self, node: str, before: sm.NodeState, after: sm.NodeState, actions: list) -> None:
        """A tick before a quiet node's ``next_due`` must change nothing that matters (its
        clocks aside: when it last ticked, and the retry timer, idle while quiet)."""
        if not sm.is_quiet(before) or self.now >= sm.next_due(before):
            return
        clocks = {"now": before.now, "last_tick": before.last_tick, "next_retry": before.next_retry}
        if actions or replace(after, **clocks) != before:
            due = sm.next_due(before)
            self.violation(f"{node} ticked at {self.now:.4f} before its due {due:.4f}: {actions}")

    def check_support(self, node: str, state: sm.NodeState) -> None:
        """The machine's incremental support counts equal the count from scratch."""
        if state.view is None:
            return
        members = state.view.members
        counted = sm.support_counts(state, members, self.now)
        expected = support_from_scratch(sm.fresh_hears(state, self.now), members)
        if counted != expected:
            self.violation(f"{node} counts support {counted}, from scratch {expected}")

    def schedule_tick(self, node: str) -> None:
        """due_ticks: make sure the node ticks by its deadline (no-op with fixed ticks)."""
        if not self.cfg.due_ticks:
            return
        due = sm.next_due(self.states[node])
        if due < self.tick_at.get(node, math.inf):
            self.tick_at[node] = due = max(due, self.now)
            self.push(due, "node_tick", node)

    def check_install(self, node: str, view: View) -> None:
        chosen = self.chosen.get(view.epoch)
        if chosen is not None and chosen != view:
            self.violation(f"{node} installs e{view.epoch} {view}, but {chosen} was chosen")
        previous = self.committed.get(view.epoch)
        if previous is None:
            self.committed[view.epoch] = view
            self.result.max_epoch = max(self.result.max_epoch, view.epoch)
            if self.bridged:
                self.result.bridged_commits += 1
        elif previous != view:
            self.violation(f"two views committed at epoch {view.epoch}: {previous} vs {view}")
        if view.epoch <= self.epochs.get(node, 0):
            self.violation(f"{node} epoch went from {self.epochs[node]} to {view.epoch}")
        self.epochs[node] = view.epoch
        if view.epoch == self.initial.epoch:
            return
        predecessor = self.committed.get(view.epoch - 1)
        if predecessor is None:
            self.violation(f"epoch {view.epoch} committed without a committed predecessor")
            return
        acceptors = self.accepts.get(view, set()) & set(predecessor.members)
        if len(acceptors) < predecessor.majority:
            self.violation(
                f"e{view.epoch} committed with {len(acceptors)} acceptances of "
                f"{len(predecessor.members)} predecessor members"
            )
        elif view.epoch not in self.chosen:
            self.violation(f"e{view.epoch} committed without a majority of its predecessor under one ballot")

    def check_vote(self, node: str, message: Message) -> None:
        """What an acceptor says must keep its word across restarts: no promise or acceptance
        below a ballot it promised, a promise reports the highest ballot it accepted in that
        epoch, and a new incarnation never votes in an epoch where an earlier one did."""
        body = message.body
        if isinstance(body, Relay):
            body = body.inner.body if body.inner.sender == node else None
        if not isinstance(body, Promise | Accepted):
            return
        key, incarnation = (node, body.target), self.states[node].incarnation
        voter, promised, accepted = self.votes.get(key, (incarnation, None, None))
        if voter != incarnation:  # the new one knows nothing of the old one's votes
            self.violation(
                f"{node} (incarnation {incarnation}) votes in e{body.target}, as did its incarnation {voter}"
            )
        if promised is not None and body.ballot < promised:
            what = f"{node} sent {body.kind} {body.ballot} for e{body.target}"
            self.violation(f"{what} below its promise {promised}")
        if isinstance(body, Promise):
            if accepted is not None and (body.accepted_ballot is None or body.accepted_ballot < accepted):
                self.violation(
                    f"{node} promised {body.ballot} for e{body.target} reporting {body.accepted_ballot}, "
                    f"but it had accepted under {accepted}"
                )
        else:
            accepted = body.ballot if accepted is None else max(accepted, body.ballot)
        self.votes[key] = (
            incarnation,
            body.ballot if promised is None else max(promised, body.ballot),
            accepted,
        )

    # --- faults ----------------------------------------------------------------------------

    def live(self) -> set[str]:
        return set(self.states) - self.crashed - self.left

    def views_at_risk(self) -> list[View]:
        """Views whose quorums must stay alive: the newest committed one (and those after the
        newest any live voter holds), any newer value some node has accepted (it may yet be
        chosen), each also grown by every pending joiner (alive or not: any of them may yet
        be admitted)."""
        top = max(self.committed)
        # a view newer than every live voter's is known only to nodes that left or died: the
        # voters learn it through a quorum of the newest view they hold
        voters = self.live() - self.leaving - self.reborn
        known = max((self.states[n].epoch for n in voters if self.states[n].view is not None), default=top)
        views = [self.committed[e] for e in range(min(known, top), top + 1) if e in self.committed]
        for state in self.states.values():
            if state.accepted is not None and state.accepted[1].epoch > top:
                views.append(state.accepted[1])
        outsiders = [n for n, s in self.states.items() if s.status in (sm.JOINING, sm.REMOVED)]
        for view in list(views):
            grown = (*view.members, *(n for n in outsiders if n not in view.members))
            if len(grown) > len(view.members):
                views.append(View(view.epoch + 1, grown, grown[0], grown))
        return views

    def may_lose(self, node: str) -> bool:
        """Whether crashing or retiring ``node`` keeps a live majority in every view that
        matters (the precondition of the liveness check; leavers count as gone)."""
        alive = self.live() - self.leaving - self.reborn - {node}  # the reborn vote only once re-admitted
        for view in self.views_at_risk():
            size, live = len(view.members), len(alive & set(view.members))
            # the next view may drop up to a minority of this one's members, live ones too (a
            # proposer judges on reports that may be stale): say the live ones. Without this
            # a crash strands the group for good: n1 of [n0, n1], the successor of [n0, n1, n3]
            # that n0 proposed while a partition cut n3 off, or while n1 was dying
            for dropped in range(size - view.majority + 1):
                kept, kept_live = size - dropped, live - dropped
                if kept_live < kept // 2 + 1 or kept_live < 2:
                    return False
        return True

    def inject(self) -> None:
        kinds = sorted(self.cfg.faults)
        kind = self.rng.choice(kinds)
        rng = self.rng
        self.result.events += 1
        live = sorted(self.live())
        match kind:
            case "crash":
                candidates = [n for n in live if self.may_lose(n)]
                if candidates:
                    self.crash(rng.choice(candidates), rng.uniform(0.2, 1.2))
            case "partition":
                if len(live) >= 2 and self.groups is None:
                    shuffled = live[:]
                    rng.shuffle(shuffled)
                    cut = rng.randint(1, len(shuffled) - 1)
                    self.groups = {n: (0 if i < cut else 1) for i, n in enumerate(shuffled)}
                    self.log(f"FAULT partition {sorted(shuffled[:cut])} | {sorted(shuffled[cut:])}")
                    self.push(self.now + rng.uniform(0.3, 1.0), "heal", None)
            case "link":
                if len(live) >= 2:
                    a, b = rng.sample(live, 2)
                    self.down.add(frozenset((a, b)))
                    self.log(f"FAULT link down {a}-{b}")
                    self.push(self.now + rng.uniform(0.2, 1.0), "link_up", frozenset((a, b)))
            case "bridge":
                if len(live) >= 3 and not self.bridged:
                    shuffled = live[:]
                    rng.shuffle(shuffled)
                    hubs = rng.randint(1, len(shuffled) - 2)
                    self.bridge(shuffled[:hubs], shuffled[hubs:], rng.randint(1, len(shuffled) - hubs - 1))
                    self.push(self.now + rng.uniform(0.3, 1.5), "unbridge", None)
            case "drop":
                self.drop_p = rng.uniform(0.02, 0.3)
                self.log(f"FAULT drop p={self.drop_p:.2f}")
                self.push(self.now + rng.uniform(0.1, 0.6), "calm", "drop")
            case "duplicate":
                self.dup_p = rng.uniform(0.05, 0.5)
                self.log(f"FAULT duplicate p={self.dup_p:.2f}")
                self.push(self.now + rng.uniform(0.1, 0.6), "calm", "duplicate")
            case "reorder":
                self.jitter = rng.uniform(0.005, 0.05)
                self.log(f"FAULT reorder jitter={self.jitter:.3f}")
                self.push(self.now + rng.uniform(0.1, 0.6), "calm", "reorder")
            case "delay":
                self.extra_delay = rng.uniform(0.05, 0.8)
                self.log(f"FAULT delay up to {self.extra_delay:.2f}s")
                self.push(self.now + rng.uniform(0.1, 0.6), "calm", "delay")
            case "join":
                self.joined += 1
                node = f"j{self.joined}"
                contacts = tuple((n, n) for n in sorted(self.committed[max(self.committed)].members))
                self.states[node] = sm.initial_joiner(node, node, contacts, self.cfg.settings)
                self.saved[node] = sm.durable(self.states[node])
                self.epochs[node] = 0
                self.log(f"FAULT join {node}")
                self.schedule_tick(node)
            case "leave":
                members = [n for n in live if self.states[n].is_member and n not in self.leaving]
                top = self.committed[max(self.committed)]
                members = [n for n in members if self.may_lose(n)]
                if len(members) > self.cfg.min_group and len(top.members) > self.cfg.min_group:
                    node = rng.choice(members)
                    self.leaving.add(node)
                    self.log(f"FAULT leave {node}")
                    self.apply(node, sm.RequestLeave())

    def bridge(self, hubs: list[str], rest: list[str], cut: int) -> None:
        """Cut every link between ``rest[:cut]`` and ``rest[cut:]``; the hubs keep theirs."""
        side_a, side_b = sorted(rest[:cut]), sorted(rest[cut:])
        self.bridged = {frozenset((a, b)) for a in side_a for b in side_b}
        self.log(f"FAULT bridge {side_a} | {sorted(hubs)} | {side_b}")

    def final_bridge(self) -> None:
        """One hub, a live member of the newest view and of every newer value accepted (so no
        commit in flight removes it); nodes outside any of those (joiners, the removed: they
        have no relays) stay on the hub's side."""
        top = max(self.committed)
        pending = [s.accepted[1] for s in self.states.values() if s.accepted and s.accepted[1].epoch > top]
        live = sorted(self.live())
        steady = [n for n in live if all(n in v.members for v in [self.committed[top], *pending])]
        hubs = [n for n in steady if n not in self.leaving]
        if not hubs:
            return
        hub = self.rng.choice(hubs)
        rest = [n for n in steady if n != hub]
        if len(rest) >= 2:
            self.rng.shuffle(rest)
            outside = [n for n in live if n not in steady]
            self.bridge([hub, *outside], rest, self.rng.randint(1, len(rest) - 1))

    def calm(self, what: str) -> None:
        match what:
            case "drop":
                self.drop_p = 0.0
            case "duplicate":
                self.dup_p = 0.0
            case "reorder":
                self.jitter = 0.0
            case "delay":
                self.extra_delay = 0.0

    def stop_faults(self) -> None:
        self.faults_on = False
        self.groups = None
        self.down.clear()
        self.bridged.clear()
        self.drop_p = self.dup_p = self.jitter = self.extra_delay = 0.0
        self.log("faults stop: network healed")
        if self.cfg.final_bridge:
            self.final_bridge()

    # --- convergence -----------------------------------------------------------------------

    def converged(self) -> bool:
        expected = self.live()
        if self.leaving & expected:  # a leave still to commit
            return False
        views = set()
        for node in expected:
            state = self.states[node]
            if state.status != sm.MEMBER:
                return False
            views.add(state.view)
        if len(views) != 1:
            return False
        (view,) = views
        return set(view.members) == expected

    # --- main loop -------------------------------------------------------------------------

    def run(self) -> ScheduleResult:
        cfg = self.cfg
        tick = cfg.settings.retry_interval / 2
        self.push(0.0, "tick", None)
        for node in sorted(self.states):
            self.schedule_tick(node)
        if cfg.faults:
            at = 0.0
            while True:
                at += self.rng.expovariate(cfg.fault_rate)
                if at >= cfg.fault_s:
                    break
                self.push(at, "fault", None)
        self.push(cfg.fault_s, "stop_faults", None)
        deadline = cfg.fault_s + cfg.settle_s + cfg.hold_s
        stable: tuple[float, int] | None = None  # since when the group has kept which converged epoch
        while self.queue:
            at, _, kind, payload = heapq.heappop(self.queue)
            self.now = at
            if at > deadline:
                break
            match kind:
                case "deliver":
                    sender, to, message = payload  # type: ignore[misc]
                    assert isinstance(message, Message)
                    if to in self.crashed and message.kind in PAXOS_KINDS and self.faults_on:
                        self.missed.setdefault(to, []).append((sender, to, message))
                    if to in self.crashed or to in self.left or not self.connected(sender, to):
                        continue
                    self.apply(to, sm.Receive(message))
                case "node_tick":
                    node = payload  # type: ignore[assignment]
                    if self.tick_at.get(node) != at:
                        continue  # superseded by an earlier deadline
                    del self.tick_at[node]
                    if node not in self.crashed:
                        self.apply(node, sm.Tick())
                case "tick":  # the retry pace: every node ticks (unless due_ticks), convergence
                    if not cfg.due_ticks:
                        for node in sorted(self.states):
                            if node not in self.crashed and node not in self.left:
                                self.apply(node, sm.Tick())
                    if not self.faults_on and self.converged():
                        if stable is None or stable[1] != max(self.committed):
                            stable = (self.now, max(self.committed))
                        if self.now - stable[0] >= cfg.hold_s:
                            self.result.converged = True
                            self.result.converge_s = stable[0] - cfg.fault_s
                            break
                    else:
                        stable = None
                    self.push(at + tick, "tick", None)
                case "fault":
                    self.inject()
                case "restart":
                    node, amnesia, brief = payload  # type: ignore[misc]
                    if (self.faults_on or brief) and node in self.crashed:
                        self.restart(node, amnesia)
                case "heal":
                    self.groups = None
                    self.log("heal partition")
                case "unbridge":
                    if self.faults_on:
                        self.bridged.clear()
                        self.log("heal bridge")
                case "link_up":
                    self.down.discard(payload)  # type: ignore[arg-type]
                    self.log(f"link up {'-'.join(sorted(payload))}")  # type: ignore[call-overload]
                case "calm":
                    self.calm(payload)  # type: ignore[arg-type]
                case "stop_faults":
                    self.stop_faults()
            if self.result.violations:
                break
        if not self.result.violations and not self.result.converged:
            state_lines = [
                f"{n}: {s.status} e{s.epoch} {list(s.view.members) if s.view else None}"
                for n, s in sorted(self.states.items())
                if n not in self.crashed and n not in self.left
            ]
            self.violation(
                f"no convergence (kept {cfg.hold_s}s) within {cfg.settle_s}s after faults stopped; live="
                f"{sorted(self.live())}; " + "; ".join(state_lines)
            )
        self.result.trace = list(self.trace)
        return self.result


def run_schedule(seed: int, config: SimConfig) -> ScheduleResult:
    """Run one seeded schedule and return what it observed."""
    return _Sim(seed, config).run()
