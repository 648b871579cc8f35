"""Churn scenarios for ``chaos-train local``: parsing, validation and random generation (pure)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chaos_sidecar.errors import InputError

KINDS = ("join", "leave", "crash", "link_down", "link_up", "crash_trainer", "crash_sidecar", "slow_link")
REMOVALS = ("leave", "crash", "crash_trainer", "crash_sidecar")  # the node is gone afterwards
KILLS = ("crash", "crash_trainer", "crash_sidecar")  # kill -9 of the node, its trainer, its sidecar
DEMO_KINDS = ("join", "leave", "crash", "link_down", "link_up")
CHAOS_KINDS = KINDS


HEALING = ("link_up",)  # events that can only help a stalled group make progress again
# a kill may wait for a moment the harness observes in the trainers' logs (chaos_lab.kills):
# "pull": the node's own state transfer, "serve": a transfer the node is a source of,
# "regroup": a regroup of a group the node trained in, "checkpoint": the node's checkpoint write
TRIGGERS = ("pull", "serve", "regroup", "checkpoint")


@dataclass(frozen=True)
class ChurnEvent:
    """One scripted fault, due at a training step (``at_step``), at a time (``at_s``: seconds
    since the group first agreed), or at whichever comes first when both are given. A kill
    with ``on`` (one of TRIGGERS) fires earlier, once its turn has come and the harness observes
    that moment for its node: its step or time is then the deadline."""

    at_step: int | None
    event: str
    node: str
    peer: str | None = None
    rate_mbps: float | None = None  # slow_link: the node's new upload limit (None: unlimited)
    at_s: float | None = None
    on: str | None = None

    def due(self, step: int, elapsed_s: float) -> bool:
        return (self.at_step is not None and step >= self.at_step) or (
            self.at_s is not None and elapsed_s >= self.at_s
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event, "node": self.node}
        if self.at_step is not None:
            out["at_step"] = self.at_step
        if self.at_s is not None:
            out["at_s"] = self.at_s
        if self.peer is not None:
            out["peer"] = self.peer
        if self.event == "slow_link":
            out["rate_mbps"] = self.rate_mbps
        if self.on is not None:
            out["on"] = self.on
        return out

    def label(self) -> str:
        """``at step 40: crash n1``, ``at 12.5 s: link_up n0-n3``."""
        when = [f"step {self.at_step}"] if self.at_step is not None else []
        when += [f"{self.at_s:g} s"] if self.at_s is not None else []
        on = f"on {self.on}, " if self.on else ""
        peer = f"-{self.peer}" if self.peer else ""
        return f"{on}at {' or '.join(when)}: {self.event} {self.node}{peer}"


def parse_churn(data: Any, initial: list[str], steps: int, min_size: int = 3) -> list[ChurnEvent]:
    """Validate a churn list against the group it will run on; errors name the entry."""
    if not isinstance(data, list):
        raise InputError("churn", "expected a list of events")
    members = list(initial)
    events = []
    last_step, last_s = 0, 0.0
    for i, raw in enumerate(data):
        where = f"churn[{i}]"
        if not isinstance(raw, dict):
            raise InputError(where, "expected an object")
        unknown = set(raw) - {"at_step", "at_s", "event", "node", "peer", "rate_mbps", "on"}
        if unknown:
            raise InputError(f"{where}.{sorted(unknown)[0]}", "unknown field")
        at, at_s = raw.get("at_step"), raw.get("at_s")
        if at is None and at_s is None:
            raise InputError(f"{where}.at_step", "expected at_step (a training step), at_s (seconds) or both")
        if at is not None:
            if isinstance(at, bool) or not isinstance(at, int) or not 0 < at < steps:
                raise InputError(f"{where}.at_step", f"expected an integer in 1..{steps - 1}, got {at!r}")
            if at < last_step:
                raise InputError(f"{where}.at_step", "events must be in step order")
            last_step = at
        if at_s is not None:
            if isinstance(at_s, bool) or not isinstance(at_s, int | float) or not 0 < at_s < 1e6:
                raise InputError(f"{where}.at_s", f"expected a positive number of seconds, got {at_s!r}")
            if at_s < last_s:
                raise InputError(f"{where}.at_s", "events must be in time order")
            last_s = float(at_s)
        kind = raw.get("event")
        if kind not in KINDS:
            raise InputError(f"{where}.event", f"expected one of {', '.join(KINDS)}, got {kind!r}")
        node = raw.get("node")
        if not isinstance(node, str) or not node:
            raise InputError(f"{where}.node", "expected a node name")
        peer = raw.get("peer")
        if kind in ("link_down", "link_up"):
            if not isinstance(peer, str) or peer not in members or node not in members or peer == node:
                raise InputError(f"{where}.peer", "link events need two different current members")
        elif peer is not None:
            raise InputError(f"{where}.peer", f"{kind} takes no peer")
        rate = raw.get("rate_mbps")
        if kind == "slow_link":
            if node not in members:
                raise InputError(f"{where}.node", f"{node} is not a member at that point")
            if rate is not None and (
                isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0
            ):
                raise InputError(f"{where}.rate_mbps", f"expected a positive number or null, got {rate!r}")
        elif "rate_mbps" in raw:
            raise InputError(f"{where}.rate_mbps", f"{kind} takes no rate_mbps")
        on = raw.get("on")
        if on is not None and on not in TRIGGERS:
            raise InputError(f"{where}.on", f"expected one of {', '.join(TRIGGERS)}, got {on!r}")
        if on is not None and kind not in KILLS:
            raise InputError(f"{where}.on", f"only kills ({', '.join(KILLS)}) wait for a moment, not {kind}")
        if kind == "join":
            if node in members:
                raise InputError(f"{where}.node", f"{node} is already a member")
            members.append(node)
        elif kind in REMOVALS:
            if node not in members:
                raise InputError(f"{where}.node", f"{node} is not a member at that point")
            if len(members) - 1 < min_size:
                raise InputError(where, f"would leave fewer than {min_size} members")
            members.remove(node)
        rate = None if rate is None else float(rate)
        events.append(ChurnEvent(at, kind, node, peer, rate, None if at_s is None else float(at_s), on))
    return events


def load_churn(spec: str, initial: list[str], steps: int) -> list[ChurnEvent]:
    """``FILE`` (JSON or YAML) or ``random:SEED``."""
    if spec.startswith("random:"):
        try:
            seed = int(spec.split(":", 1)[1])
        except ValueError:
            raise InputError("--churn", f"expected random:SEED with an integer seed, got {spec!r}") from None
        return random_churn(seed, initial, steps)
    try:
        text = Path(spec).read_text()
    except OSError as exc:
        raise InputError("--churn", f"cannot read {spec}: {exc.strerror}") from None
    try:
        data = json.loads(text) if spec.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InputError("--churn", f"{spec} is not valid JSON/YAML: {exc}") from None
    return parse_churn(data, initial, steps)


def heal_cuts(events: list[ChurnEvent], after_steps: int) -> list[ChurnEvent]:
    """``events`` with a ``link_up`` ``after_steps`` steps after every ``link_down`` (keyed to
    a step) that the script never restores. On separate hosts (``--hosts netns``) a cut stops
    the trainers of both ends until it heals: gloo connects every pair of them."""
    healed = list(events)
    for i, event in enumerate(events):
        if event.event != "link_down" or event.at_step is None:
            continue
        pair = {event.node, event.peer}
        later = events[i + 1 :]
        if not any(e.event == "link_up" and {e.node, e.peer} == pair for e in later):
            healed.append(ChurnEvent(event.at_step + after_steps, "link_up", event.node, event.peer))
    return sorted(healed, key=lambda e: (e.at_step is None, e.at_step or 0))


def default_churn(initial: list[str], steps: int) -> list[ChurnEvent]:
    """The demo: a join, a graceful leave, a crash, and a link down then up."""
    n = len(initial)
    joiner = f"n{n}"
    a = initial[1]
    plan = [
        {"at_step": steps * 2 // 10, "event": "join", "node": joiner},
        {"at_step": steps * 4 // 10, "event": "leave", "node": initial[-1]},
        {"at_step": steps * 6 // 10, "event": "crash", "node": initial[-2]},
        {"at_step": steps * 7 // 10, "event": "link_down", "node": a, "peer": joiner},
        {"at_step": steps * 8 // 10, "event": "link_up", "node": a, "peer": joiner},
    ]
    return parse_churn(plan, initial, steps)


# A node removed by the script may linger in the view for a while: the trainers' collectives
# wait for it until the view drops it (one failure timeout), so the group moves on only a few
# steps meanwhile. Past this many steps the generator counts the removal as done.
LINGER_STEPS = 30
# Whether members relay membership messages between peers that cannot reach each other
# directly (one hop through a member that reaches both): then a group needs a connected
# majority, not a fully connected one.
RELAY = True


SETTLE_STEPS = 300  # with max_size: a joiner is admitted by then (its process starts in 10-20 s)


@dataclass
class GroupModel:
    """The group a churn script leaves behind, with what a script cannot know: whether a
    joiner is admitted yet (the group trains on without it, so possibly never within the
    script) and whether a node removed lately has left the view. Every view the group may
    hold is checked (:meth:`keeps_majority`)."""

    members: list[str]  # as the script sees it: every join done, every removal done
    joiners: list[str] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)  # (node, step of its removal)
    down: list[tuple[str, str]] = field(default_factory=list)
    relay: bool = RELAY
    # a joiner counts as admitted this many steps after its join (None: never, as the script
    # cannot know; a long run settles them, or its joiners pile up and block every removal)
    settle_steps: int | None = None
    joined_at: dict[str, int] = field(default_factory=dict)

    def apply(self, event: ChurnEvent) -> None:
        if event.event == "join":
            self.members.append(event.node)
            self.joiners.append(event.node)
            self.joined_at[event.node] = event.at_step or 0
        elif event.event in REMOVALS:
            assert event.at_step is not None, "the model follows step-keyed scripts"
            self.members.remove(event.node)
            self.removed.append((event.node, event.at_step))
        elif event.event == "link_down":
            self.down.append((event.node, event.peer))  # type: ignore[arg-type]
        elif event.event == "link_up":
            self.down = [link for link in self.down if set(link) != {event.node, event.peer}]

    def pending(self, step: int) -> list[str]:
        """The joiners that may not be admitted yet at ``step``."""
        settle = self.settle_steps
        return [j for j in self.joiners if settle is None or step - self.joined_at.get(j, step) < settle]

    def possible_views(self, step: int) -> list[frozenset[str]]:
        """Every member set the group's view may have at ``step``."""
        pending = self.pending(step)
        settled = frozenset(self.members) - frozenset(pending)
        lingering = [node for node, at in self.removed if step - at < LINGER_STEPS]
        maybe = [*pending, *lingering]
        views = []
        for mask in range(1 << len(maybe)):
            views.append(settled | {node for i, node in enumerate(maybe) if mask >> i & 1})
        return views

    def reach(self, view: frozenset[str]) -> dict[str, set[str]]:
        """Whom each live member of ``view`` reaches among them (itself included)."""
        live = view & set(self.members)
        cut = {frozenset(link) for link in self.down}
        direct = {a: {b for b in live if frozenset((a, b)) not in cut} for a in live}
        if not self.relay:
            return direct
        return {a: set().union(*(direct[r] for r in direct[a])) for a in live}

    def keeps_majority(self, step: int) -> bool:
        """In every view the group may hold, every live member reaches a majority of it: the
        membership rule then keeps everyone and some member can always get a quorum."""
        for view in self.possible_views(step):
            majority = len(view) // 2 + 1
            if any(len(reached) < majority for reached in self.reach(view).values()):
                return False
            if len(view & set(self.members)) < majority:
                return False
        return True

    def allows(self, event: ChurnEvent) -> bool:
        trial = GroupModel(list(self.members), list(self.joiners), list(self.removed), list(self.down),
                           self.relay, self.settle_steps, dict(self.joined_at))  # fmt: skip
        trial.apply(event)
        return trial.keeps_majority(event.at_step or 0)


def random_churn(
    seed: int,
    initial: list[str],
    steps: int,
    events: int = 5,
    min_size: int = 3,
    kinds: tuple[str, ...] = DEMO_KINDS,
    max_size: int | None = None,
) -> list[ChurnEvent]:
    """Seeded churn of ``kinds`` that never takes the group below ``min_size`` and after
    every event leaves a majority of every view the group may hold connected
    (:class:`GroupModel`); a kind with no such event falls back to a join, which never
    breaks that. ``CHAOS_KINDS`` adds trainer-only and sidecar-only crashes and slow links."""
    rng = random.Random(seed)
    group = GroupModel(list(initial), settle_steps=None if max_size is None else SETTLE_STEPS)
    counter = len(initial)
    out: list[ChurnEvent] = []
    at_steps = sorted(rng.sample(range(max(2, steps // 10), max(3, steps * 9 // 10)), events))
    for at in at_steps:
        members = group.members
        # at ``max_size`` no joins: a long run keeps a steady size instead of growing
        # and one cut at a time (a node at a cut link cannot be removed: cuts pile up otherwise)
        choices = ["join", "slow_link", "link_down"]
        if max_size is not None and len(members) >= max_size:
            choices.remove("join")
        if max_size is not None and group.down:
            choices.remove("link_down")
        if len(members) > min_size:
            choices += list(REMOVALS)
        if group.down:
            choices.append("link_up")
        # with max_size, a kind with no allowed event is drawn again (a long run keeps its mix
        # of kinds); without, it falls back as it always did (seeded scripts stay the same)
        for _ in range(1 if max_size is None else 12):
            kind = rng.choice([k for k in choices if k in kinds])
            candidates: list[ChurnEvent] = []
            if kind in REMOVALS:
                # keep the founder, and nodes at a cut link (its link_up must find both); with
                # max_size, a joiner gets its settle time first (its trainer takes seconds to
                # start): a long run's joins then bring state in rather than being cut short
                spared = set(group.pending(at)) if max_size is not None else set()
                candidates = [ChurnEvent(at, kind, m) for m in members[1:]
                              if all(m not in link for link in group.down) and m not in spared]  # fmt: skip
            elif kind == "link_down":
                cut = {frozenset(link) for link in group.down}
                candidates = [ChurnEvent(at, kind, a, b) for i, a in enumerate(members)
                              for b in members[i + 1 :] if frozenset((a, b)) not in cut]  # fmt: skip
            elif kind == "link_up":
                candidates = [ChurnEvent(at, kind, *group.down[0])]
            elif kind == "slow_link":
                rate = rng.choice([2.0, 5.0, 20.0, None])
                candidates = [ChurnEvent(at, kind, rng.choice(members), rate_mbps=rate)]
            candidates = [c for c in candidates if group.allows(c)]
            if candidates or kind == "join":
                break
        if candidates:
            event = rng.choice(candidates)
        elif max_size is not None and len(members) >= max_size:
            event = ChurnEvent(at, "slow_link", members[0], rate_mbps=None)  # harmless: lifts a limit
        else:
            event = ChurnEvent(at, "join", f"n{counter}")
        if event.event == "join":
            counter += 1
        group.apply(event)
        out.append(event)
    return parse_churn([e.to_json() for e in out], initial, steps, min_size=min_size)
