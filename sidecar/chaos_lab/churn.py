"""Churn scenarios for ``chaos-train local``: parsing, validation and random generation (pure)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chaos_sidecar.errors import InputError

KINDS = ("join", "leave", "crash", "link_down", "link_up", "crash_trainer", "crash_sidecar", "slow_link")
REMOVALS = ("leave", "crash", "crash_trainer", "crash_sidecar")  # the node is gone afterwards
DEMO_KINDS = ("join", "leave", "crash", "link_down", "link_up")
CHAOS_KINDS = KINDS


@dataclass(frozen=True)
class ChurnEvent:
    at_step: int
    event: str
    node: str
    peer: str | None = None
    rate_mbps: float | None = None  # slow_link: the node's new upload limit (None: unlimited)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at_step": self.at_step, "event": self.event, "node": self.node}
        if self.peer is not None:
            out["peer"] = self.peer
        if self.event == "slow_link":
            out["rate_mbps"] = self.rate_mbps
        return out


def parse_churn(data: Any, initial: list[str], steps: int, min_size: int = 3) -> list[ChurnEvent]:
    """Validate a churn list against the group it will run on; errors name the entry."""
    if not isinstance(data, list):
        raise InputError("churn", "expected a list of events")
    members = list(initial)
    events = []
    last_step = 0
    for i, raw in enumerate(data):
        where = f"churn[{i}]"
        if not isinstance(raw, dict):
            raise InputError(where, "expected an object")
        unknown = set(raw) - {"at_step", "event", "node", "peer", "rate_mbps"}
        if unknown:
            raise InputError(f"{where}.{sorted(unknown)[0]}", "unknown field")
        at = raw.get("at_step")
        if isinstance(at, bool) or not isinstance(at, int) or not 0 < at < steps:
            raise InputError(f"{where}.at_step", f"expected an integer in 1..{steps - 1}, got {at!r}")
        if at < last_step:
            raise InputError(f"{where}.at_step", "events must be in step order")
        last_step = at
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
        events.append(ChurnEvent(at, kind, node, peer, None if rate is None else float(rate)))
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


def connected_enough(members: list[str], down: list[tuple[str, str]]) -> bool:
    """Every member still has working links to a majority of the group (itself included): the
    membership rule then keeps everyone, and a group can always agree. A churn that cuts more
    (say, every link between the three survivors of a crash) leaves no majority anywhere:
    nothing can, or should, make progress then."""
    cut = {frozenset(link) for link in down}
    majority = len(members) // 2 + 1
    return all(
        1 + sum(1 for b in members if b != a and frozenset((a, b)) not in cut) >= majority for a in members
    )


def random_churn(
    seed: int,
    initial: list[str],
    steps: int,
    events: int = 5,
    min_size: int = 3,
    kinds: tuple[str, ...] = DEMO_KINDS,
) -> list[ChurnEvent]:
    """Seeded churn of ``kinds`` that never takes the group below ``min_size`` (crashes need a
    majority). ``CHAOS_KINDS`` adds trainer-only and sidecar-only crashes and slow links."""
    rng = random.Random(seed)
    members = list(initial)
    counter = len(initial)
    down: list[tuple[str, str]] = []
    out = []
    at_steps = sorted(rng.sample(range(max(2, steps // 10), max(3, steps * 9 // 10)), events))
    for at in at_steps:
        up = [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]
              if (a, b) not in down and (b, a) not in down
              and connected_enough(members, [*down, (a, b)])]  # fmt: skip
        choices = ["join", "link_down", "slow_link"] if up else ["join", "slow_link"]
        if len(members) > min_size:
            choices += list(REMOVALS)
        if down:
            choices.append("link_up")
        kind = rng.choice([k for k in choices if k in kinds])
        removable = [
            m  # keep the founder, and a group where everyone reaches a majority
            for m in members[1:]
            if all(m not in link for link in down) and connected_enough([x for x in members if x != m], down)
        ]
        if kind in REMOVALS and not removable:
            kind = "join"
        if kind == "join":
            node = f"n{counter}"
            counter += 1
            members.append(node)
            out.append({"at_step": at, "event": "join", "node": node})
        elif kind == "slow_link":
            rate = rng.choice([2.0, 5.0, 20.0, None])
            out.append({"at_step": at, "event": kind, "node": rng.choice(members), "rate_mbps": rate})
        elif kind in REMOVALS:
            node = rng.choice(removable)
            members.remove(node)
            out.append({"at_step": at, "event": kind, "node": node})
        elif kind == "link_down":
            a, b = rng.choice(up)
            down.append((a, b))
            out.append({"at_step": at, "event": "link_down", "node": a, "peer": b})
        else:
            a, b = down.pop(0)
            out.append({"at_step": at, "event": "link_up", "node": a, "peer": b})
    return parse_churn(out, initial, steps, min_size=min_size)
