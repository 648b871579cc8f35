"""The view-change state machine: ``step(state, event, now) -> (state, actions)``.

Pure: no clocks, no sockets, no randomness. The adapter (or the simulator) feeds events and
executes the returned actions. One Paxos instance per epoch decides view ``e+1``; its
acceptors are the members of view ``e``.

Rules (docs/membership.md explains them, with the guards found by the simulator):

* Fast path: the coordinator of view ``e`` owns ballot ``(0, coordinator)`` for ``e+1`` and
  sends ACCEPT directly; it spends that ballot at most once per epoch (``fast_used`` is
  durable), so a restarted coordinator never proposes two values under one ballot.
* Slow path: when the coordinator cannot reach a majority (as far as this member knows) the
  first reachable member in view order takes ballot ``(max_round + 1, self)``, PREPAREs, and
  re-proposes the highest-ballot value any promise carried before its own changes.
* A value is chosen once a majority of view ``e`` accepted it; COMMIT carries the whole
  view, so a member that missed commits installs the newest view directly (views are full
  states, not deltas), fetched with VIEW_REQUEST from any peer that reports a higher epoch.
* Membership rule: member ``x`` stays while ``x`` plus the members that hear it form a
  majority. A link down between two members that both still reach a majority only changes
  the topology table (gossiped with heartbeats, versioned by ``(epoch, counter)``).
* Relaying: a member that has not heard a peer directly for half the failure timeout also
  sends it each message through a member that hears both directly, or failing one a node
  asking to join (one hop, end to end authenticated by the adapters). Hearing counts relayed
  messages, so the membership rule and the quorums need a connected majority, not a fully
  connected one; the topology table keeps showing the direct links that are down.
* Pending joins and leaves seen while a proposal is in flight are batched into the next one.

Durable state (what survives a crash, see :class:`Durable`): the committed view, the acceptor
state for the next epoch, the highest round seen, ``fast_used``, the wish to leave and the
incarnation. :func:`step` says when it changed with a :class:`Persist` action, first in its
list: the adapter writes it before executing anything else (a message that depends on a
promise never leaves before the promise is on disk). A node that lost it comes back as a new
incarnation (:func:`initial_joiner` with another ``incarnation``): it votes only once a view
lists it with that incarnation, a view decided after it came back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from chaos_sidecar.membership.support import SupportIndex
from chaos_sidecar.protocol.messages import (
    Accept,
    Accepted,
    Ballot,
    Body,
    Commit,
    Heartbeat,
    Join,
    Leave,
    LinkDown,
    LinkUp,
    Message,
    Nack,
    Prepare,
    Promise,
    Relay,
    Suspect,
    View,
    ViewRequest,
)

MEMBER = "member"
JOINING = "joining"
STANDBY = "standby"  # a joiner waiting for its trainer before asking for admission
REMOVED = "removed"
LEFT = "left"

Change = tuple[str, ...]
MIN_TICK_GAP = 0.001  # seconds; next_due never asks for two ticks closer than this
MAX_CONTACTS = 64  # ("join", id) | ("leave", id) | ("remove", id)
RELAYS = 2  # relays per message: while one relay's news of a cut link lags, the other carries it


@dataclass(frozen=True, slots=True)
class Settings:
    """Timing of the protocol, in seconds of the caller's clock."""

    heartbeat_interval: float = 0.1
    """How often a member tells the others whom it hears."""
    suspect_timeout: float = 0.5
    """Silence after which a peer is no longer heard (failure detector)."""
    retry_interval: float = 0.1
    """Resend period for unanswered protocol messages and forwarded requests."""
    max_departed: int = 64
    """Graceful leavers remembered in the view (they are never re-admitted)."""


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; drives heartbeats, retries and the failure detector."""


@dataclass(frozen=True, slots=True)
class Receive:
    message: Message


@dataclass(frozen=True, slots=True)
class RequestLeave:
    """This node wants to leave the group gracefully."""


@dataclass(frozen=True, slots=True)
class RequestJoin:
    """A standby node starts asking for admission (its trainer is ready)."""


Event = Tick | Receive | RequestLeave | RequestJoin


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    address: str
    message: Message


@dataclass(slots=True)
class _SendTwin:
    """Send's fields in the same slots, mutable: see :func:`_sends`."""

    to: str
    address: str
    message: Message


def _sends(tos: Sequence[str], addresses: Sequence[str], message: Message, skip: str) -> list[Send]:
    """``Send(to, address, message)`` for each ``to`` but ``skip``, ``addresses`` aligned with
    ``tos``. A frozen dataclass sets each field through
    ``object.__setattr__``, about 1 µs a Send here, and a decision at 1,000 members makes
    2,000 of them: these are built as the mutable twin and then given Send's class (same slots,
    same layout), a third of the cost. What comes out is an ordinary Send: equal to, and
    hashed like, one built the usual way, and frozen."""
    sends = []
    append = sends.append
    for to, address in zip(tos, addresses, strict=True):
        if to != skip:
            send = _SendTwin(to, address, message)
            send.__class__ = Send  # type: ignore[assignment]
            append(send)
    return sends  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class LeftAlone:
    """This node, the last member of ``view``, left: the group ended with it (its status is
    now LEFT). No view is installed, so it is not an :class:`Installed`."""

    view: View


@dataclass(frozen=True, slots=True)
class Installed:
    """This node committed ``view`` (its status is now ``status``)."""

    view: View
    status: str


@dataclass(frozen=True, slots=True)
class Decided:
    """This node computed a new view from ``changes`` and proposed it."""

    view: View
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class Observed:
    """This node saw a change first-hand: ``("join", j)``, ``("leave", me)``, ``("lost", p)``,
    ``("regained", p)``, and of its direct links, relays aside: ``("link_down", p)``,
    ``("link_up", p)``."""

    change: Change


@dataclass(frozen=True, slots=True)
class TopologyChanged:
    version: tuple[int, int]
    down_links: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input was ignored; ``reason`` is a short label (metrics)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Accepting:
    """This node accepted ``view`` for its epoch under ``ballot`` (the simulator checks
    quorums, and that a ballot never carries two values, with it)."""

    view: View
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Persist:
    """Write ``state`` durably before executing the actions after this one (it is always the
    first): they may depend on it (a promise, an acceptance, a spent fast-path ballot)."""

    state: Durable


@dataclass(frozen=True, slots=True)
class MajorityChanged:
    """This member stopped (or started again) reaching a majority of its view, itself
    included: while it reaches none, nothing it takes part in can commit."""

    reachable: bool
    reaches: tuple[str, ...]
    needed: int


Action = (
    Persist
    | Send
    | Installed
    | LeftAlone
    | Decided
    | Observed
    | TopologyChanged
    | Rejected
    | Accepting
    | MajorityChanged
)


# --- state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proposal:
    target: int
    ballot: Ballot
    phase: str  # "prepare" | "accept"
    value: View | None
    replies: frozenset[str]
    best: tuple[Ballot, View] | None  # highest accepted value carried by promises
    own: bool  # value is this node's own changes (not a re-proposal)


@dataclass(frozen=True, slots=True)
class Durable:
    """What a node must not forget across a restart (Paxos' acceptor and proposer state for
    the next epoch, and its committed view). Everything else is rebuilt from the network."""

    node_id: str
    incarnation: int
    status: str
    view: View | None
    promised: Ballot | None
    accepted: tuple[Ballot, View] | None
    max_round: int
    fast_used: int
    want_leave: bool
    contacts: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class NodeState:
    node_id: str
    address: str
    settings: Settings
    status: str
    view: View | None
    contacts: tuple[tuple[str, str], ...] = ()  # (id, address) to ask for admission
    # durable acceptor/proposer state for epoch view.epoch + 1
    promised: Ballot | None = None
    accepted: tuple[Ballot, View] | None = None
    max_round: int = 0
    fast_used: int = 0
    incarnation: int = 0  # this node id's life: a node that lost its durable state takes another
    # volatile
    proposal: Proposal | None = None
    want_leave: bool = False
    joins: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (address, seen)
    join_incarnations: dict[str, int] = field(default_factory=dict)  # of the joiners in joins
    leaves: dict[str, float] = field(default_factory=dict)
    last_heard: dict[str, float] = field(default_factory=dict)  # directly or relayed
    last_direct: dict[str, float] = field(default_factory=dict)  # directly
    reports: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict)
    direct_reports: dict[str, frozenset[str]] = field(default_factory=dict)  # whom each hears directly
    my_hears: frozenset[str] = frozenset()
    my_direct: frozenset[str] = frozenset()  # of my_hears, the members heard directly
    majority_lost: bool = False  # a member that reaches no majority of its view (my_hears)
    topology: tuple[tuple[int, int], tuple[tuple[str, str], ...]] = ((0, 0), ())
    table_unsent: bool = False  # coordinator: a new link table no heartbeat has carried yet
    next_heartbeat: float = 0.0
    next_retry: float = 0.0
    next_attempt: float = 0.0
    last_tick: float = -1e18
    last_view_request: float = -1e18
    last_push: dict[str, float] = field(default_factory=dict)
    contact_cursor: int = 0
    now: float = 0.0  # time of the event being processed
    # derived from reports and last_heard, kept up to date incrementally (see membership.support)
    support: SupportIndex = field(default_factory=SupportIndex, compare=False, repr=False)
    # answers derived from the fields above, remembered within one step until one of those
    # fields changes (_forget_derived): ("relays", now, to) and ("support", now, members)
    memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def copy(self) -> NodeState:
        return replace(
            self,
            joins=dict(self.joins),
            join_incarnations=dict(self.join_incarnations),
            leaves=dict(self.leaves),
            last_heard=dict(self.last_heard),
            last_direct=dict(self.last_direct),
            reports=dict(self.reports),
            direct_reports=dict(self.direct_reports),
            last_push=dict(self.last_push),
            support=self.support.copy(),
            memo={},
        )

    @property
    def epoch(self) -> int:
        return 0 if self.view is None else self.view.epoch

    @property
    def is_member(self) -> bool:
        return self.view is not None and _listed(self, self.view) and self.status == MEMBER


def _listed(s: NodeState, view: View) -> bool:
    """Whether ``view`` lists this node, in this incarnation (another incarnation of the same
    id may have voted in its epochs: this one must not)."""
    return view.incarnation_of(s.node_id) == s.incarnation


def initial_member(node_id: str, view: View, settings: Settings, now: float) -> NodeState:
    """A founding member of ``view``."""
    incarnation = view.incarnation_of(node_id) or 0
    address = view.address_of(node_id) or node_id
    state = NodeState(node_id, address, settings, MEMBER, None, incarnation=incarnation)
    _install(state, view, now, [])
    return state


def initial_joiner(
    node_id: str,
    address: str,
    contacts: tuple[tuple[str, str], ...],
    settings: Settings,
    incarnation: int = 0,
    standby: bool = False,
) -> NodeState:
    """A node asking to be admitted; ``contacts`` are (id, address) of current members. A node
    that lost its durable state joins with an ``incarnation`` it never had before. A
    ``standby`` one asks only on a RequestJoin (its trainer is ready)."""
    status = STANDBY if standby else JOINING
    return NodeState(node_id, address, settings, status, None, contacts=contacts, incarnation=incarnation)


def durable(s: NodeState) -> Durable:
    """The part of ``s`` that survives a restart."""
    return Durable(
        s.node_id,
        s.incarnation,
        s.status,
        s.view,
        s.promised,
        s.accepted,
        s.max_round,
        s.fast_used,
        s.want_leave,
        s.contacts,
    )


def recover(saved: Durable, address: str, settings: Settings, now: float) -> NodeState:
    """The state after a restart that kept ``saved``: everything volatile starts afresh."""
    fresh = NodeState(
        saved.node_id,
        address,
        settings,
        saved.status,
        saved.view,
        contacts=saved.contacts,
        promised=saved.promised,
        accepted=saved.accepted,
        max_round=saved.max_round,
        fast_used=saved.fast_used,
        incarnation=saved.incarnation,
        want_leave=saved.want_leave,
    )
    if saved.view is not None:
        _grace(fresh, saved.view, now)
        if saved.want_leave and fresh.is_member:
            # the wish to leave is durable: a coordinator proposes its own leave from here
            # (the others forward it), or it would stay forever
            fresh.leaves[saved.node_id] = now
    if saved.status in (JOINING, REMOVED):
        fresh.next_retry = now
    return fresh


def restart(state: NodeState, now: float) -> NodeState:
    """The state after a crash: only :func:`durable` kept, everything volatile reset."""
    return recover(durable(state), state.address, state.settings, now)


def quorum(view: View) -> int:
    """Acceptances of view ``e`` members needed to choose view ``e + 1``."""
    return view.majority


# --- the transition function ---------------------------------------------------------------


def step(state: NodeState, event: Event, now: float) -> tuple[NodeState, list[Action]]:
    """Apply one event at time ``now``; returns the new state and the actions to execute."""
    if state.status == LEFT:
        return state, [Rejected("left")] if isinstance(event, Receive) else []
    s = state.copy()
    s.now = now
    out: list[Action] = []
    news = True  # whether the event can change what the group should look like
    match event:
        case Tick():
            s.last_tick = now
            _on_tick(s, now, out)
        case Receive(message):
            news = _on_receive(s, message, now, out)
        case RequestJoin():
            if s.status == STANDBY:
                s.status = JOINING
                s.next_retry = now
                _on_tick(s, now, out)
        case RequestLeave():
            if not s.want_leave:
                s.want_leave = True
                out.append(Observed(("leave", s.node_id)))
                if s.is_member:
                    s.leaves[s.node_id] = now
                    _forward(s, Leave(s.node_id), out)
    if s.status != LEFT and news:
        _maybe_propose(s, now, out)
    after = durable(s)
    if after != durable(state):
        out.insert(0, Persist(after))
    return s, out


def next_due(s: NodeState) -> float:
    """When this node next needs a :class:`Tick`. A quiet member (see :func:`is_quiet`) is
    due only for its next heartbeat and the first failure-detector expiry: a Tick before then
    changes nothing. Anything else keeps the retry pace (two ticks per retry interval), as
    does a joiner asking for admission. Messages never wait for this: they are applied when
    they arrive, and one that ends the quiet brings the deadline forward."""
    if s.status in (STANDBY, LEFT):
        return math.inf
    if s.status in (JOINING, REMOVED):
        return s.next_retry
    if s.table_unsent:  # a new link table goes out on the tick right after the step that made it
        return s.now
    if not is_quiet(s):
        return s.last_tick + s.settings.retry_interval / 2
    assert s.view is not None
    timeout = s.settings.suspect_timeout
    due = s.next_heartbeat
    for m in s.view.members:
        if m != s.node_id:  # direct hearing counts for half the timeout (relays may go on)
            heard = s.last_direct.get(m, s.last_heard[m])
            due = min(due, heard + timeout / 2, s.last_heard[m] + timeout, s.reports[m][0] + timeout)
    # an expiry is strict (silent for *more* than the timeout): tick just after it, not at it
    return max(due, s.last_tick + MIN_TICK_GAP)


def is_quiet(s: NodeState) -> bool:
    """A member with nothing in flight: no proposal, no pending join or leave, it hears
    every member directly and every member's report says it hears everyone directly."""
    view = s.view
    if (
        view is None
        or not s.is_member
        or s.proposal is not None
        or s.leaves
        or s.want_leave
        or s.topology[1]
        or any(_join_is_fresh(s, seen, s.now) for _, seen in s.joins.values())
    ):
        return False
    everyone = frozenset(view.members)
    if s.my_hears != everyone or not _direct_heard_by(s, s.node_id, s.now) >= everyone:
        return False
    return all(
        m in s.last_heard
        and m in s.reports
        and not s.support.missing(view.members, ("report", m), s.reports[m][1])
        and (
            m not in s.direct_reports
            or not s.support.missing(view.members, ("direct", m), s.direct_reports[m])
        )
        for m in view.members
        if m != s.node_id
    )


# --- helpers: sending ----------------------------------------------------------------------


def _address(s: NodeState, node: str) -> str:
    if s.view is not None:
        address = s.view.address_of(node)
        if address is not None:
            return address
    if node in s.joins:
        return s.joins[node][0]
    for cid, caddr in s.contacts:
        if cid == node:
            return caddr
    return node


def _send(s: NodeState, to: str, body: Body, out: list[Action]) -> None:
    """Send directly, and through relays as well when ``to`` has not been heard directly for
    a while (the direct copy still goes: the link may come back)."""
    _broadcast(s, (to,), body, out)


def _broadcast(s: NodeState, targets: Iterable[str], body: Body, out: list[Action]) -> None:
    """``_send`` to each of ``targets``, one message object for all: a coordinator of 1,000
    members sends about 2,000 messages when it decides."""
    message = Message(s.node_id, s.epoch, body)
    fresh = s.now - s.settings.suspect_timeout / 2
    view, me, last_direct = s.view, s.node_id, s.last_direct
    tos: Sequence[str]
    if view is not None and targets is view.members:  # the usual broadcast: addresses aligned
        tos, addresses = view.members, view.addresses
        stale = [to for to in _stale_direct(s, view, fresh) if to != me]
    else:
        tos = list(targets)
        addresses = [_address(s, to) for to in tos]
        stale = [to for to in tos if to != me and last_direct.get(to, -1e18) < fresh]
    sends = _sends(tos, addresses, message, me)
    if stale:  # some not heard directly of late (rare): relays too, each after its direct copy
        at_me = tos.index(me) if me in tos else len(tos)  # targets are distinct
        for to in reversed(stale):
            i = tos.index(to)
            i -= i > at_me  # its place among the sends (none goes to this node)
            sends[i + 1 : i + 1] = [
                Send(relay, _address(s, relay), Message(s.node_id, s.epoch, Relay(to, message)))
                for relay in _relays_for(s, to)
            ]
    out.extend(sends)


def _stale_direct(s: NodeState, view: View, fresh: float) -> list[str]:
    """The view's members not heard directly since ``fresh`` (relays carry their copies too),
    worked out once per step: a coordinator of 1,000 broadcasts up to three times a step."""
    key = ("stale", s.now, fresh)
    stale = s.memo.get(key)
    if stale is None:
        last_direct, members = s.last_direct, s.support.view_set(view.members)
        stale = [m for m, t in last_direct.items() if t < fresh and m in members]
        stale += members - last_direct.keys()
        if len(stale) <= RELAYS * 4:  # the usual few (or none): put them in view order
            stale.sort(key=view.members.index)
        else:
            stale = [m for m in view.members if last_direct.get(m, -1e18) < fresh]
        s.memo[key] = stale
    return stale


def _relays_for(s: NodeState, to: str) -> list[str]:
    """Whom to relay through while this node has not heard ``to`` directly for half the
    failure timeout (relayed copies then keep ``to`` heard before the failure detector would
    give up on it): up to RELAYS members that both hear directly, by their fresh reports;
    failing any, a node asking to join that this node hears (it sends no reports, so it may
    not reach ``to``: the choice rotates with time)."""
    view, now = s.view, s.now
    fresh = now - s.settings.suspect_timeout / 2
    if s.last_direct.get(to, -1e18) >= fresh:
        return []
    if view is None or not s.is_member or not view.has(to):
        return []
    relays = s.memo.get(("relays", now, to))
    if relays is None:
        relays = s.memo["relays", now, to] = _member_relays(s, view, to, fresh)
    if relays:
        return relays
    joiners = sorted(fresh_joins(s, now) - {to})
    return [joiners[int(now / s.settings.retry_interval) % len(joiners)]] if joiners else []


def _member_relays(s: NodeState, view: View, to: str, fresh: float) -> list[str]:
    """Up to RELAYS members heard directly since ``fresh`` whose fresh reports say they hear
    ``to`` directly. A scan of the view: an unreachable ``to`` is asked about by several
    broadcasts of one step, so ``_relays_for`` remembers the answer for the step."""
    relays: list[str] = []
    me, last_direct, reports, direct_reports = s.node_id, s.last_direct, s.reports, s.direct_reports
    for relay in view.members:  # the first RELAYS that qualify: a coordinator of 1,000 asks per send
        if (
            relay not in (me, to)
            and last_direct.get(relay, -1e18) >= fresh
            and (report := reports.get(relay, (-1e18,)))[0] >= fresh  # it says who it hears directly now
            # _direct_heard_by(s, relay, s.now), inlined: the report is fresh (fresh <= s.now)
            and to in direct_reports.get(relay, report[1])
        ):
            relays.append(relay)
            if len(relays) == RELAYS:
                break
    return relays


def _direct_heard_by(s: NodeState, a: str, now: float) -> frozenset[str] | set[str]:
    """Everyone ``a`` heard directly within half the failure timeout, as far as this node
    knows (empty: no fresh report). Half: a link looks down, and relays take over, while the
    failure detector still hears the peer."""
    if a == s.node_id:  # asked several times a step: remembered for it
        direct = s.memo.get(("direct", now))
        if direct is None:
            fresh = now - s.settings.suspect_timeout / 2
            heard = [b for b, t in s.last_direct.items() if t >= fresh]
            direct = s.memo["direct", now] = frozenset([*heard, a])
        return direct
    report = s.reports.get(a)
    if report is None or now - report[0] > s.settings.suspect_timeout:
        return frozenset()
    return s.direct_reports.get(a, report[1])


def _heartbeat(s: NodeState, hears: frozenset[str] | None = None) -> Heartbeat:
    """Whom this node hears (directly or relayed, and directly), with its topology table."""
    assert s.view is not None
    direct = _direct_heard_by(s, s.node_id, s.now) & s.support.view_set(s.view.members)
    heard = s.my_hears if hears is None else hears
    return Heartbeat(s.support.ordered(heard), s.topology[0], s.topology[1], s.support.ordered(direct))


def _forward(s: NodeState, body: Body, out: list[Action]) -> None:
    """Send to the coordinator, or to the slow-path candidate when the coordinator is unreachable."""
    assert s.view is not None
    target = s.view.coordinator
    if target == s.node_id:  # its tick counts every member's support anyway: one count a step
        support = _support_counts(s, s.view.members, s.now)[target]
    else:
        support = _support(s, target, s.view, s.now)
    if _reborn(s, target, s.now) or support < s.view.majority:
        target = _candidate(s) or target
    _send(s, target, body, out)


def _reborn(s: NodeState, member: str, now: float) -> bool:
    """Whether ``member`` of this node's view asks, right now, to be admitted as another
    incarnation (it lost its durable state): it no longer votes, and must be re-admitted."""
    assert s.view is not None
    if member not in s.join_incarnations or not _join_is_fresh(s, s.joins[member][1], now):
        return False
    return s.join_incarnations[member] > (s.view.incarnation_of(member) or 0)


# --- helpers: reachability -----------------------------------------------------------------


def _hears(s: NodeState, a: str, b: str, now: float) -> bool:
    """Whether member ``a`` recently heard member ``b``, as far as this node knows."""
    timeout = s.settings.suspect_timeout
    if a == s.node_id:
        return b == a or now - s.last_heard.get(b, -1e18) <= timeout
    report = s.reports.get(a)
    if report is None or now - report[0] > timeout:
        return False
    return b in report[1]


def _heard_by(s: NodeState, a: str, now: float) -> frozenset[str] | set[str] | None:
    """Everyone ``a`` recently heard, as far as this node knows (None: no fresh report)."""
    timeout = s.settings.suspect_timeout
    if a == s.node_id:
        return {b for b, t in s.last_heard.items() if now - t <= timeout} | {a}
    report = s.reports.get(a)
    if report is None or now - report[0] > timeout:
        return None
    return report[1]


def _support_counts(s: NodeState, members: list[str] | tuple[str, ...], now: float) -> dict[str, int]:
    """``_support`` for every member at once, judged among ``members`` only. A coordinator of
    1,000 runs this on every tick (twice): the support index recounts only the reports that
    changed, and the answer is remembered for the step."""
    key = ("support", now, tuple(members))
    counts = s.memo.get(key)
    if counts is None:
        if ("synced", now) not in s.memo:  # nothing the index counts changed since
            s.support.sync(fresh_hears(s, now))
            s.memo["synced", now] = True
        counts = s.memo[key] = s.support.support(members)
    return counts


def _forget_derived(s: NodeState) -> None:
    """Whom this node hears, or whom the others report hearing, changed: answers remembered
    within this step (``NodeState.memo``) no longer hold."""
    s.memo.clear()


def fresh_hears(s: NodeState, now: float) -> dict[str, frozenset[str]]:
    """Whom each member hears, by its fresh report (this node: by its own failure detector)."""
    timeout, me = s.settings.suspect_timeout, s.node_id
    heard = {a: r[1] for a, r in s.reports.items() if a != me and now - r[0] <= timeout}
    mine = frozenset([b for b, t in s.last_heard.items() if now - t <= timeout] + [me])
    counted = s.support.counted.get(me)  # the set counted last, when it is the same: no recount
    heard[me] = counted if counted == mine else mine
    return heard


def support_counts(s: NodeState, members: list[str] | tuple[str, ...], now: float) -> dict[str, int]:
    """``_support_counts`` for checks from outside (the simulator). It brings ``s``'s support
    index up to date, a cache: ``s`` still means the same state."""
    return _support_counts(s, members, now)


def _support(s: NodeState, x: str, view: View, now: float) -> int:
    """Size of {x} plus the members that hear x: x is kept while this reaches a majority.
    The same count as ``_support_counts`` gives for a member of ``view``: its answer when the
    step already worked it out (asking for it here would bring the support index up to date
    where the step otherwise leaves it alone)."""
    counts = s.memo.get(("support", now, view.members))
    if counts is not None and x in counts:
        return counts[x]
    # _hears(s, m, x, now) for every member m but x, inlined: this node by its own failure
    # detector, the others by their fresh reports (a coordinator of 1,000 asks it on a loss)
    me, timeout = s.node_id, s.settings.suspect_timeout
    mine = x != me and view.has(me) and _hears(s, me, x, now)
    others = sum(
        1
        for a, (seen, hears) in s.reports.items()
        if a != x and a != me and now - seen <= timeout and x in hears and view.has(a)
    )
    return 1 + mine + others


def _candidate(s: NodeState) -> str | None:
    """First member in view order, other than an unreachable coordinator, that reaches a majority."""
    assert s.view is not None
    now = s.now
    for m in s.view.members:
        if m == s.view.coordinator or (m != s.node_id and _reborn(s, m, now)):
            continue
        if _support(s, m, s.view, now) >= s.view.majority:
            return m
    return None


def _grace(s: NodeState, view: View, now: float, newcomers: frozenset[str] | None = None) -> None:
    """Newcomers to this node's view count as heard, by it and by everyone (they were
    reachable when the view formed); known members keep their failure-detector clocks."""
    everyone = frozenset(view.members)
    fresh = everyone if newcomers is None else newcomers
    for m in fresh:
        s.last_heard[m] = max(s.last_heard.get(m, now), now)
        s.last_direct[m] = max(s.last_direct.get(m, now), now)
    for m in view.members:
        if m == s.node_id:
            continue
        if m in fresh or m not in s.reports:
            s.reports[m] = (now, everyone)
            s.direct_reports.pop(m, None)  # taken as the report's hears until it says otherwise
        else:
            seen, hears = s.reports[m]
            s.reports[m] = (seen, s.support.canonical((hears | fresh) & everyone))
            if m in s.direct_reports:
                s.direct_reports[m] = s.support.canonical((s.direct_reports[m] | fresh) & everyone)
    _forget_derived(s)
    s.my_hears = frozenset(m for m in view.members if _hears(s, s.node_id, m, now))
    direct = _direct_heard_by(s, s.node_id, now)
    s.my_direct = frozenset(m for m in view.members if m in direct)


def _check_majority(s: NodeState, out: list[Action]) -> None:
    """Report when this member stops or starts again reaching a majority of its view."""
    lost = s.is_member and s.view is not None and len(s.my_hears) < s.view.majority
    if lost != s.majority_lost:
        s.majority_lost = lost
        needed = s.view.majority if s.view is not None else 0
        out.append(MajorityChanged(not lost, tuple(sorted(s.my_hears)), needed))


# --- event handlers ------------------------------------------------------------------------


def _on_tick(s: NodeState, now: float, out: list[Action]) -> None:
    if s.status == STANDBY:
        return
    s.now = now
    if s.status in (JOINING, REMOVED):
        if now >= s.next_retry:
            s.next_retry = now + s.settings.retry_interval
            _ask_admission(s, out)
        return
    assert s.view is not None
    view = s.view
    _refresh_hears(s, now, out)
    if s.node_id == view.coordinator:  # before the heartbeat, which then carries a new table
        _update_topology(s, now, out)
    if now >= s.next_heartbeat:
        _heartbeat_now(s, now, out)
    if s.table_unsent:  # a table no heartbeat carried: pushed now, the heartbeats keep their pace
        s.table_unsent = False
        _broadcast(s, view.members, _heartbeat(s), out)
    if now >= s.next_retry:
        s.next_retry = now + s.settings.retry_interval
        _retry(s, now, out)


def _refresh_hears(s: NodeState, now: float, out: list[Action]) -> bool:
    """Failure detector: whom do I hear now? Changes go to the coordinator at once, and a
    regained peer gets a heartbeat back at once, so it regains us without waiting. A loss
    also brings the next heartbeat forward: when the lost one is the coordinator, the
    Suspect goes nowhere useful, and the slow-path candidate learns it from heartbeats.

    A link that went down or came back (the peer still heard, or heard again) goes out in a
    heartbeat at once: the coordinator's topology rests on those reports, and the peer at
    the other end of a healed link learns it without waiting for its own next probe.
    Returns whether this node's own links changed (a coordinator's table then needs a look)."""
    assert s.view is not None
    direct = _direct_heard_by(s, s.node_id, now) & s.support.view_set(s.view.members)
    link_changed = direct != s.my_direct
    if link_changed:  # a link, not a peer: relays may still carry it
        previous_direct, s.my_direct = s.my_direct, direct
        out.extend(Observed(("link_down", m)) for m in sorted(previous_direct - direct))
        out.extend(Observed(("link_up", m)) for m in sorted(direct - previous_direct))
    me, last_heard, timeout = s.node_id, s.last_heard, s.settings.suspect_timeout
    # _hears(s, me, m, now) for every member, inlined (a coordinator of 1,000 asks it each tick)
    hears = frozenset([m for m in s.view.members if m == me or now - last_heard.get(m, -1e18) <= timeout])
    if hears == s.my_hears:
        if link_changed:
            _heartbeat_now(s, now, out)
        return link_changed
    previous, s.my_hears = s.my_hears, hears
    _check_majority(s, out)
    for lost in sorted(previous - hears):
        out.append(Observed(("lost", lost)))
        _forward(s, Suspect(lost), out)
        s.next_heartbeat = now
    for peer in sorted(hears - previous):
        out.append(Observed(("regained", peer)))
        _forward(s, LinkUp(peer), out)
        _send(s, peer, _heartbeat(s, hears), out)
    return link_changed


def _heartbeat_now(s: NodeState, now: float, out: list[Action]) -> None:
    """Tell every member whom this node hears; the next heartbeat is due an interval later."""
    assert s.view is not None
    s.next_heartbeat = now + s.settings.heartbeat_interval
    s.table_unsent = False
    _broadcast(s, s.view.members, _heartbeat(s), out)


def _ask_admission(s: NodeState, out: list[Action]) -> None:
    contacts = [c for c in s.contacts if c[0] != s.node_id]
    if not contacts:
        return
    ask = Message(s.node_id, s.epoch, Join(s.node_id, s.address, s.incarnation))
    if s.view is not None and s.node_id in s.view.members:
        # its view lists another incarnation of it: every member must learn that it no
        # longer votes (a slow-path candidate must not wait for it)
        for m, address in zip(s.view.members, s.view.addresses, strict=True):
            if m != s.node_id:
                out.append(Send(m, address, ask))
    cid, caddr = contacts[s.contact_cursor % len(contacts)]
    # the first ask goes to every contact: the coordinator admits only joiners it hears
    # itself, and a joiner that knows no view cannot tell which contact it is (asking one at
    # a time, it waited a retry interval per contact listed before the coordinator)
    asked = contacts if s.contact_cursor == 0 else [(cid, caddr)]
    s.contact_cursor += 1
    out.extend(Send(c, address, ask) for c, address in asked)
    coordinator = s.view.coordinator if s.view is not None else cid  # a first join knows none
    if coordinator not in (cid, s.node_id):
        # a removed node may be cut off from the coordinator, which admits only joiners it
        # hears itself: the contact relays the request, and the coordinator hears us through it
        out.append(Send(cid, caddr, Message(s.node_id, s.epoch, Relay(coordinator, ask))))


def _retry(s: NodeState, now: float, out: list[Action]) -> None:
    assert s.view is not None
    p = s.proposal
    if p is not None:
        body: Body = (
            Prepare(p.target, p.ballot) if p.phase == "prepare" else Accept(p.target, p.ballot, p.value)  # type: ignore[arg-type]
        )
        _broadcast(s, [m for m in s.view.members if m not in p.replies], body, out)
    # probe members we lost, or hear only through relays, more often than heartbeats go: a
    # healed link shows up sooner
    silent = [m for m in s.view.members if m not in s.my_direct and m != s.node_id]
    if silent:
        _broadcast(s, silent, _heartbeat(s), out)
    if s.node_id != s.view.coordinator:
        for joiner, (address, seen) in sorted(s.joins.items()):
            if _join_is_fresh(s, seen, now):
                _forward(s, Join(joiner, address, s.join_incarnations.get(joiner, 0)), out)
        if s.want_leave:
            _forward(s, Leave(s.node_id), out)


def _on_receive(s: NodeState, msg: Message, now: float, out: list[Action], *, relayed: bool = False) -> bool:
    """Handle one message; False when it only confirmed what this node already knew (a
    heartbeat repeating a fresh report), so there is nothing to re-decide until the next tick.
    ``relayed``: ``msg`` came through a relay (its sender is heard, not directly)."""
    s.now = now
    _forget_derived(s)  # what this message says changes whom this node hears, and when
    sender = msg.sender
    if sender == s.node_id:
        out.append(Rejected("self"))
        return True
    s.last_heard[sender] = now
    if not relayed:
        s.last_direct[sender] = now
    body = msg.body
    news = True
    lost_link = not relayed and sender not in s.my_direct
    if (
        s.is_member
        and (sender not in s.my_hears or lost_link)
        and s.view is not None
        and sender in s.view.members
    ):
        if _refresh_hears(s, now, out) and s.node_id == s.view.coordinator:
            _update_topology(s, now, out)  # its own link moved (a tick looks at the table anyway)
    elif isinstance(body, Heartbeat) and msg.epoch == s.epoch:
        previous = s.reports.get(sender)
        news = not (
            previous is not None
            and now - previous[0] <= s.settings.suspect_timeout
            and previous[1] == frozenset(body.hears)
            and body.topology_version <= s.topology[0]
        )
    # catch-up: a peer that is ahead has views we lack; a peer that is behind gets ours
    if msg.epoch > s.epoch and not isinstance(body, Commit):
        if now - s.last_view_request >= s.settings.retry_interval:
            s.last_view_request = now
            _send(s, sender, ViewRequest(), out)
    elif msg.epoch < s.epoch and s.view is not None and not isinstance(body, Commit):
        if now - s.last_push.get(sender, -1e18) >= s.settings.retry_interval:
            s.last_push[sender] = now
            _send(s, sender, Commit(s.view), out)
    match body:
        case Commit(view):
            if view.epoch > s.epoch:
                _install(s, view, now, out)
            else:
                out.append(Rejected("stale_epoch"))
        case ViewRequest():
            if s.view is not None:
                _send(s, sender, Commit(s.view), out)
        case Heartbeat():
            # heard directly just now: a relayed copy left earlier, by the longer way, and one
            # sent while the link was down would put back a report its sender has replaced
            if not relayed or now - s.last_direct.get(sender, -1e18) >= s.settings.retry_interval:
                _on_heartbeat(s, msg, body, now, out)
        case Join(node, address, incarnation):
            _on_join(s, node, address, incarnation, now, direct=(sender == node), out=out)
        case Leave(node):
            if s.view is not None and node in s.view.members and msg.epoch == s.epoch:
                s.leaves.setdefault(node, now)
                if s.node_id != s.view.coordinator:
                    _forward(s, body, out)
            else:
                out.append(Rejected("stale_epoch"))
        case Suspect(node) | LinkDown(node):
            _adjust_report(s, sender, node, present=False, now=now)
            if s.view is not None and s.node_id == s.view.coordinator:
                _update_topology(s, now, out)
        case LinkUp(node):
            _adjust_report(s, sender, node, present=True, now=now)
            if s.view is not None and s.node_id == s.view.coordinator:
                _update_topology(s, now, out)
        case Prepare() | Accept():
            _on_acceptor_message(s, msg, now, out)
        case Promise() | Accepted() | Nack():
            _on_proposer_message(s, msg, now, out)
        case Relay():
            news = _on_relay(s, msg, body, now, out)
    return news


def _on_relay(s: NodeState, msg: Message, body: Relay, now: float, out: list[Action]) -> bool:
    """For this node: handle the origin's message (the adapter checked its seal). For another
    node: pass it on, once (from its origin only), to a member of this node's view or a
    contact (a node asking to join relays too)."""
    inner = body.inner
    if isinstance(inner.body, Relay) or inner.sender in (s.node_id, body.to):
        out.append(Rejected("bad_relay"))
        return False
    if body.to == s.node_id:
        return _on_receive(s, inner, now, out, relayed=True)
    known = (s.view is not None and body.to in s.view.members) or any(c == body.to for c, _ in s.contacts)
    if msg.sender != inner.sender or s.status == STANDBY or not known:
        out.append(Rejected("bad_relay"))
        return False
    out.append(Send(body.to, _address(s, body.to), Message(s.node_id, s.epoch, body)))
    return False


def _on_heartbeat(s: NodeState, msg: Message, body: Heartbeat, now: float, out: list[Action]) -> None:
    if s.view is None or msg.sender not in s.view.members:
        out.append(Rejected("unknown_sender"))
        return
    if msg.epoch < s.epoch:  # a report about an older membership, possibly long delayed
        out.append(Rejected("stale_epoch"))
        return
    # a report that repeats the last one keeps its set object: the support index compares by
    # identity. Counted now, as it arrives, so a decision has only stale reports to take back.
    hears = frozenset(body.hears)
    previous = s.reports.get(msg.sender)
    if previous is not None and previous[1] == hears:
        hears = previous[1]
    else:  # most members report the same set: one object for all (less for the collector)
        hears = s.support.canonical(hears)
    s.reports[msg.sender] = (now, hears)
    s.support.count(msg.sender, hears)
    links_before = s.direct_reports.get(msg.sender, previous[1] if previous is not None else None)
    if body.direct is None:
        s.direct_reports.pop(msg.sender, None)
    else:
        direct = frozenset(body.direct)
        if s.direct_reports.get(msg.sender) != direct:
            s.direct_reports[msg.sender] = s.support.canonical(direct)
    s.support.missing(s.view.members, ("direct", msg.sender), s.direct_reports.get(msg.sender, hears))
    _forget_derived(s)
    if body.topology_version > s.topology[0]:
        s.topology = (body.topology_version, body.down_links)
        out.append(TopologyChanged(body.topology_version, body.down_links))
    if s.node_id == s.view.coordinator and _links_moved(
        s, msg.sender, links_before, s.direct_reports.get(msg.sender, hears)
    ):
        _update_topology(s, now, out)  # a link went down or came back: say so now, not next tick


def _links_moved(s: NodeState, a: str, before: frozenset[str] | None, after: frozenset[str]) -> bool:
    """Whether member ``a``'s new direct set contradicts the coordinator's link table about a
    peer the coordinator itself hears directly: one ``a`` lost whose link the table has up,
    or one it regained whose link is down. Cheap on purpose: after a join every member
    reports the newcomer, and none of that moves a link; a peer the coordinator does not
    hear either is more likely dead than cut off, and every member's report of it would
    otherwise cost a scan of the whole table (the next tick judges it)."""
    if before is None or before is after or before == after:
        return False
    down, fresh = s.topology[1], s.now - s.settings.suspect_timeout / 2
    for b in before ^ after:
        link = (a, b) if a < b else (b, a)
        heard = b == s.node_id or s.last_direct.get(b, -1e18) >= fresh
        if heard and (b in after) == (link in down):
            return True
    return False


def _adjust_report(s: NodeState, sender: str, node: str, *, present: bool, now: float) -> None:
    if s.view is None or sender not in s.view.members:
        return
    timeout = s.settings.suspect_timeout
    seen, hears = s.reports.get(sender, (now, frozenset(s.view.members)))
    if now - seen > timeout:
        hears = frozenset(s.view.members)
    s.reports[sender] = (now, s.support.canonical(hears | {node} if present else hears - {node}))
    _forget_derived(s)


def _on_join(
    s: NodeState, node: str, address: str, incarnation: int, now: float, *, direct: bool, out: list[Action]
) -> None:
    if s.view is None or s.status != MEMBER:
        out.append(Rejected("not_member"))
        return
    if node == s.node_id:
        out.append(Rejected("self"))
        return
    listed = s.view.incarnation_of(node)
    if (listed is not None and incarnation < listed) or incarnation < s.join_incarnations.get(node, 0):
        out.append(Rejected("stale_incarnation"))  # from an earlier life, delayed or duplicated
        return
    if listed == incarnation:
        if direct:  # the joiner missed its commit
            s.last_push[node] = now
            out.append(Send(node, address, Message(s.node_id, s.epoch, Commit(s.view))))
        return
    if node in s.view.departed:
        out.append(Rejected("departed"))
        return
    if direct and node not in s.joins:
        out.append(Observed(("join", node) if listed is None else ("rejoin", node)))
        if listed is not None:  # it needs the view that still lists its old self
            s.last_push[node] = now
            out.append(Send(node, address, Message(s.node_id, s.epoch, Commit(s.view))))
    s.joins[node] = (address, now)
    s.join_incarnations[node] = incarnation
    if s.node_id != s.view.coordinator:
        _forward(s, Join(node, address, incarnation), out)


# --- acceptor ------------------------------------------------------------------------------


def _on_acceptor_message(s: NodeState, msg: Message, now: float, out: list[Action]) -> None:
    body = msg.body
    assert isinstance(body, Prepare | Accept)
    view = s.view
    if view is None or not s.is_member:  # a new incarnation not yet listed as such never votes
        out.append(Rejected("not_acceptor"))
        return
    if body.target != view.epoch + 1:
        out.append(Rejected("stale_epoch"))
        return
    if body.ballot[0] == 0 and body.ballot[1] != view.coordinator:
        out.append(Rejected("bad_ballot"))
        return
    if isinstance(body, Accept) and body.view.epoch != body.target:
        out.append(Rejected("bad_view"))
        return
    # only a valid request raises the round this node will outbid (a rejected one changes nothing)
    s.max_round = max(s.max_round, body.ballot[0])
    if isinstance(body, Prepare):
        # >=: a proposer re-asking with the same ballot (its promise got lost) is answered again
        if s.promised is None or body.ballot >= s.promised:
            s.promised = body.ballot
            acc_ballot, acc_view = s.accepted if s.accepted else (None, None)
            _send(s, msg.sender, Promise(body.target, body.ballot, acc_ballot, acc_view), out)
        else:
            _send(s, msg.sender, Nack(body.target, s.promised), out)
        return
    if s.promised is None or body.ballot >= s.promised:
        s.promised = body.ballot
        if s.accepted is None or s.accepted != (body.ballot, body.view):
            s.accepted = (body.ballot, body.view)
            out.append(Accepting(body.view, body.ballot))
        _send(s, msg.sender, Accepted(body.target, body.ballot), out)
    else:
        _send(s, msg.sender, Nack(body.target, s.promised), out)


# --- proposer ------------------------------------------------------------------------------


def _on_proposer_message(s: NodeState, msg: Message, now: float, out: list[Action]) -> None:
    body = msg.body
    assert isinstance(body, Promise | Accepted | Nack)
    p = s.proposal
    if isinstance(body, Nack):
        s.max_round = max(s.max_round, body.promised[0])
        if p is not None and p.target == body.target and body.promised > p.ballot:
            s.proposal = None
            s.next_attempt = now + _backoff(s)
        return
    if p is None or s.view is None or body.target != p.target or body.ballot != p.ballot:
        out.append(Rejected("stale_ballot"))
        return
    if msg.sender not in s.view.members:
        out.append(Rejected("unknown_sender"))
        return
    if isinstance(body, Promise) and p.phase == "prepare":
        best = p.best
        if body.accepted_ballot is not None and body.accepted_view is not None:
            if best is None or body.accepted_ballot > best[0]:
                best = (body.accepted_ballot, body.accepted_view)
        p = replace(p, replies=p.replies | {msg.sender}, best=best)
        s.proposal = p
        if len(p.replies) >= quorum(s.view):
            _enter_accept_phase(s, now, out)
    elif isinstance(body, Accepted) and p.phase == "accept":
        p = replace(p, replies=p.replies | {msg.sender})
        s.proposal = p
        if len(p.replies) >= quorum(s.view):
            _commit(s, now, out)


def _backoff(s: NodeState) -> float:
    assert s.view is not None
    rank = s.view.members.index(s.node_id) if s.node_id in s.view.members else len(s.view.members)
    return s.settings.retry_interval * (1 + rank)


def _desired(s: NodeState, now: float) -> tuple[View | None, tuple[Change, ...]]:
    """The view this node would propose next, and the changes that lead to it.

    When removals would shrink the group by a majority at once, the joins and leaves go
    first without them (the removals follow next epoch, judged on fresher news).
    """
    view = s.view
    assert view is not None
    if _support_counts(s, view.members, now)[s.node_id] < view.majority:
        return None, ()  # our picture of the group is too stale to judge anyone
    new, changes = _compose(s, view, now, removals=True)
    if new is None:
        new, changes = _compose(s, view, now, removals=False)
    return new, changes


def _alive(s: NodeState, x: str, now: float) -> bool:
    """First-hand sign of life: this node hears ``x``, or ``x``'s own report is fresh."""
    report = s.reports.get(x)
    fresh = report is not None and now - report[0] <= s.settings.suspect_timeout
    return x == s.node_id or _hears(s, s.node_id, x, now) or fresh


def _unreachable(s: NodeState, candidates: list[str], now: float) -> set[str]:
    """Members to remove: repeatedly drop one that, with those hearing it among the remaining
    candidates, is no majority *of the remaining candidates*.

    Judging everyone against the old view alone can strand a group: with one member dead and
    one link down in a group of four, the link's two ends reach only two of four, yet the three
    live members form a perfectly good view of three.
    """
    remaining = list(candidates)
    removed: set[str] = set()
    support = _support_counts(s, remaining, now)
    while remaining:
        majority = len(remaining) // 2 + 1
        short = [x for x in remaining if support[x] < majority]
        if not short:
            break
        # first those with no first-hand sign of life (we do not hear them and their own
        # reports went stale: others' reports about a dead member lag behind), then the weakest
        weakest = min(short, key=lambda x: (_alive(s, x, now), support[x], remaining.index(x)))
        remaining.remove(weakest)
        removed.add(weakest)
        # _support_counts(s, remaining, now) from the last count: the weakest's report, if
        # counted, no longer counts for those it hears (the index was synced this step)
        support = {m: n for m, n in support.items() if m != weakest}
        for m in s.support.counted.get(weakest, frozenset()) & support.keys():
            if m != weakest:
                support[m] -= 1
    return removed


def _join_is_fresh(s: NodeState, seen: float, now: float) -> bool:
    """A joiner asks again every retry interval: one silent for two is likely gone."""
    return now - seen <= 2 * s.settings.retry_interval


def fresh_joins(s: NodeState, now: float) -> frozenset[str]:
    """The joiners still asking (a party's admission counts them, not ones likely gone)."""
    return frozenset(j for j, (_, seen) in s.joins.items() if _join_is_fresh(s, seen, now))


def _compose(
    s: NodeState, view: View, now: float, *, removals: bool
) -> tuple[View | None, tuple[Change, ...]]:
    changes: list[Change] = []
    staying = [m for m in view.members if m not in s.leaves]
    removed = _unreachable(s, staying, now) if removals else set()
    if not removed and not s.joins and len(staying) == len(view.members):
        return None, ()  # no leave, removal, join or rejoin: the usual tick
    members: list[str] = []
    addresses: list[str] = []
    incarnations: list[int] = []
    listed_incarnations = view.incarnations or (0,) * len(view.members)
    rejoining = s.join_incarnations  # _reborn is False for anyone else: skip the call
    for m, address, listed in zip(view.members, view.addresses, listed_incarnations, strict=True):
        if m in s.leaves:
            changes.append(("leave", m))
        elif m in removed:
            changes.append(("remove", m))
        else:
            members.append(m)
            if m in rejoining and m != s.node_id and _reborn(s, m, now) and _hears(s, s.node_id, m, now):
                # it came back without its durable state: the same place, its new incarnation
                changes.append(("rejoin", m))
                address, listed = s.joins[m][0], s.join_incarnations[m]
            addresses.append(address)
            incarnations.append(listed)
    for joiner, (address, seen) in sorted(s.joins.items()):
        # admit only joiners the proposer hears itself: a node cut off from it (say, removed
        # for reaching only a minority) would otherwise be re-admitted through a neighbour's
        # forward and removed again, over and over
        if (
            _join_is_fresh(s, seen, now)
            and _hears(s, s.node_id, joiner, now)
            and joiner not in view.members
            and joiner not in view.departed
        ):
            changes.append(("join", joiner))
            members.append(joiner)
            addresses.append(address)
            incarnations.append(s.join_incarnations.get(joiner, 0))
    if ("leave", s.node_id) in changes and not any(view.has(m) for m in members):
        # every member leaves at once: this one stays (with the joiners, if any) to hand over
        # or to leave alone next (_maybe_propose); a view of none of the old members could
        # neither be proposed to anyone nor pass the minority check below
        changes.remove(("leave", s.node_id))
        members.insert(0, s.node_id)
        addresses.insert(0, view.address_of(s.node_id) or s.address)
        incarnations.insert(0, view.incarnation_of(s.node_id) or 0)
    if not changes or not members:
        return None, ()
    # the new view must be able to reach its own quorum: count members heard within half
    # the failure timeout (one that went quiet just now may be dead, not yet suspected)
    recent = now - s.settings.suspect_timeout / 2
    heard = sum(
        1
        for m in members
        if m == s.node_id
        or s.last_heard.get(m, -1e18) >= recent
        or (m in s.joins and _join_is_fresh(s, s.joins[m][1], now))
    )
    if heard < len(members) // 2 + 1:
        return None, ()  # wait for better news
    leavers = sum(1 for c in changes if c[0] == "leave")
    if len(set(members) & set(view.members)) < (len(view.members) - leavers) // 2 + 1:
        # suspicion removes at most a minority per epoch: a bigger cut rests on stale news
        # more often than on real failures, and larger failures still go in successive epochs
        return None, ()
    departed = (*view.departed, *(c[1] for c in changes if c[0] == "leave"))
    coordinator = s.node_id if s.node_id in members else members[0]
    new = View(
        view.epoch + 1,
        tuple(members),
        coordinator,
        tuple(addresses),
        departed[-s.settings.max_departed :],
        tuple(incarnations) if any(incarnations) else (),
    )
    return new, tuple(changes)


def _maybe_propose(s: NodeState, now: float, out: list[Action]) -> None:
    if not s.is_member or s.proposal is not None or now < s.next_attempt:
        return
    view = s.view
    assert view is not None
    target = view.epoch + 1
    me = s.node_id
    if me == view.coordinator:
        if (
            s.want_leave
            and view.members == (me,)
            and not fresh_joins(s, now)
            and s.accepted is None
            and s.promised is None
        ):
            # the last member leaves: nobody is left to agree with, and nobody to hand over to
            s.status = LEFT
            out.append(LeftAlone(view))
            return
        if s.fast_used != target and (s.promised is None or s.promised <= (0, me)):
            new, changes = _desired(s, now)
            if new is not None:
                s.fast_used = target
                s.proposal = Proposal(target, (0, me), "accept", new, frozenset(), None, True)
                out.append(Decided(new, changes))
                _self_accept_and_send(s, now, out)
            return
    elif (
        not _reborn(s, view.coordinator, now) and _support(s, view.coordinator, view, now) >= view.majority
    ) or _candidate(s) != me:
        return
    # slow path: the coordinator is unreachable, or it already spent its fast ballot
    if _support(s, me, view, now) < view.majority:
        return
    if s.accepted is None and _desired(s, now)[0] is None:
        return
    ballot = (s.max_round + 1, me)
    s.max_round = ballot[0]
    replies: frozenset[str] = frozenset()
    if s.promised is None or ballot > s.promised:  # this node is an acceptor too
        s.promised = ballot
        replies = frozenset({me})
    s.proposal = Proposal(target, ballot, "prepare", None, replies, s.accepted, False)
    _broadcast(s, view.members, Prepare(target, ballot), out)
    if len(replies) >= quorum(view):
        _enter_accept_phase(s, now, out)


def _enter_accept_phase(s: NodeState, now: float, out: list[Action]) -> None:
    p = s.proposal
    assert p is not None
    if p.best is not None:
        value, own = p.best[1], False
    else:
        value, changes = _desired(s, now)
        if value is None:  # nothing to decide after all; our promise round stays raised
            s.proposal = None
            return
        own = True
        out.append(Decided(value, changes))
    s.proposal = replace(p, phase="accept", value=value, replies=frozenset(), own=own)
    _self_accept_and_send(s, now, out)


def _self_accept_and_send(s: NodeState, now: float, out: list[Action]) -> None:
    p = s.proposal
    assert p is not None and p.value is not None and s.view is not None
    me = s.node_id
    if s.promised is None or p.ballot >= s.promised:
        s.promised = p.ballot
        if s.accepted != (p.ballot, p.value):
            s.accepted = (p.ballot, p.value)
            out.append(Accepting(p.value, p.ballot))
        s.proposal = p = replace(p, replies=p.replies | {me})
    _broadcast(s, s.view.members, Accept(p.target, p.ballot, p.value), out)
    if len(p.replies) >= quorum(s.view):
        _commit(s, now, out)


def _commit(s: NodeState, now: float, out: list[Action]) -> None:
    p = s.proposal
    assert p is not None and p.value is not None and s.view is not None
    value = p.value
    for m in sorted(set(s.view.members) | set(value.members)):
        if s.view.has(m) and value.address_of(m) in (None, s.view.address_of(m)):
            _send(s, m, Commit(value), out)
        elif m != s.node_id:  # a joiner: its address is in the new view
            out.append(
                Send(m, value.address_of(m) or _address(s, m), Message(s.node_id, s.epoch, Commit(value)))
            )
    _install(s, value, now, out)


def _install(s: NodeState, view: View, now: float, out: list[Action]) -> None:
    previous = s.view
    s.view = view
    _forget_derived(s)
    s.promised = None
    s.accepted = None
    s.proposal = None
    s.next_attempt = now
    if _listed(s, view):
        s.status = MEMBER
    elif s.want_leave or s.node_id in view.departed:
        s.status = LEFT
    else:
        s.status = REMOVED
    known = dict(s.contacts)
    known.update(zip(view.members, view.addresses, strict=True))
    for gone in view.departed:
        known.pop(gone, None)
    # newest members last, bounded: whom to ask for admission if this node is ever removed
    s.contacts = tuple(known.items())[-MAX_CONTACTS:]
    s.joins = {
        j: v
        for j, v in s.joins.items()
        if j not in view.departed and view.incarnation_of(j) != s.join_incarnations.get(j, 0)
    }
    s.join_incarnations = {j: i for j, i in s.join_incarnations.items() if j in s.joins}
    s.leaves = {m: t for m, t in s.leaves.items() if view.has(m)}
    s.reports = {m: r for m, r in s.reports.items() if view.has(m)}
    s.direct_reports = {m: r for m, r in s.direct_reports.items() if view.has(m)}
    if previous is None or not _listed(s, previous):
        _grace(s, view, now)
    else:  # newcomers, and members back as a new incarnation
        renewed = (m for m in view.members if previous.incarnation_of(m) != view.incarnation_of(m))
        _grace(s, view, now, frozenset(renewed))
    out.append(Installed(view, s.status))
    _check_majority(s, out)


def _update_topology(s: NodeState, now: float, out: list[Action]) -> None:
    """Coordinator only: links between two kept members that do not hear each other. A new
    table goes to every member on the tick right after this step (``next_due`` asks for it at
    once), or in the heartbeat of a tick that finds it: a step sends at most one 1,000-member
    broadcast of its own (a decision's proposal does not wait behind the table), and a tick
    that changes the table sends one heartbeat, not two."""
    view = s.view
    assert view is not None
    support = _support_counts(s, view.members, now)
    majority = view.majority
    kept = [m for m in view.members if support[m] >= majority]
    kept_set = set(kept)
    down: set[tuple[str, str]] = set()
    timeout = s.settings.suspect_timeout
    me, reports, direct_reports = s.node_id, s.reports, s.direct_reports
    # a fresh report that lacks b: a says it does not hear b directly. _direct_heard_by
    # inlined (a coordinator of 1,000 asks this of everyone each tick), and the view's
    # members missing from each set remembered while the set stays the same object
    fresh = [
        (a, direct_reports.get(a, report[1]))
        for a in kept
        if a != me and (report := reports.get(a)) is not None and now - report[0] <= timeout
    ]
    lacking = s.support.lacking(view.members, "direct", fresh)
    if me in kept_set:
        lacking.append((me, s.support.view_set(view.members) - _direct_heard_by(s, me, now)))
    for a, missing in lacking:  # each link in canonical order
        linked = kept_set.intersection(missing)  # often none: a member gone silent is not kept
        if linked:
            down.update((a, b) if a < b else (b, a) for b in linked if b != a)
    links = tuple(sorted(down))
    if links != s.topology[1]:
        version = (view.epoch, s.topology[0][1] + 1 if s.topology[0][0] == view.epoch else 1)
        s.topology = (version, links)
        out.append(TopologyChanged(version, links))
        s.table_unsent = True
