"""10,000 random and malformed peer messages against the wire decoder and the state machine.

Every input either fails to decode (a ProtocolError with a reason) or reaches the state machine;
whatever the machine rejects must leave its protocol state exactly as the same instant without
the message would have (compared against a no-op event at the same time), and nothing may
raise. The one thing a rejected message may still do is count as a sign of life of its
sender (authenticated by the stream) and prompt a view exchange with it: the contact
bookkeeping below.
"""

from __future__ import annotations

import json
import random
from collections import Counter

from chaos_sidecar.errors import ProtocolError
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.protocol import (
    Accept,
    Accepted,
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
    decode,
    encode,
)

MESSAGES = 10_000
SETTINGS = sm.Settings(0.1, 0.5, 0.05)
NODES = ("a", "b", "c", "d", "x")  # d and x are not members


CONTACT_BOOKKEEPING = (
    "last_heard",
    "last_direct",
    "last_view_request",
    "last_push",
    "my_hears",
    "my_direct",
    "next_heartbeat",
    "now",
)


def protocol_state(state: sm.NodeState) -> dict:
    return {f: getattr(state, f) for f in sm.NodeState.__slots__ if f not in CONTACT_BOOKKEEPING}


def member_state(node: str = "b") -> sm.NodeState:
    view = View(3, ("a", "b", "c"), "a", ("http://a", "http://b", "http://c"))
    state = sm.initial_member(node, view, SETTINGS, 100.0)
    # a little history: heartbeats from the others
    for sender in ("a", "c"):
        state, _ = sm.step(
            state, sm.Receive(Message(sender, 3, Heartbeat(("a", "b", "c"), (3, 0), ()))), 100.05
        )
    return state


def random_view(rng: random.Random) -> View:
    members = tuple(rng.sample(NODES, rng.randint(1, 4)))
    return View(rng.randint(0, 6), members, rng.choice(members), tuple(f"http://{m}" for m in members))


def random_body(rng: random.Random):
    ballot = (rng.randint(-1, 5), rng.choice(NODES))
    epoch = rng.randint(0, 6)
    return rng.choice(
        [
            lambda: Heartbeat(
                tuple(rng.sample(NODES, rng.randint(0, 5))), (rng.randint(0, 6), rng.randint(0, 9)), ()
            ),
            lambda: Join(rng.choice(NODES), f"http://{rng.choice(NODES)}:1"),
            lambda: Leave(rng.choice(NODES)),
            lambda: Suspect(rng.choice(NODES)),
            lambda: LinkDown(rng.choice(NODES)),
            lambda: LinkUp(rng.choice(NODES)),
            lambda: Prepare(epoch, ballot),
            lambda: Promise(epoch, ballot, None, None),
            lambda: Promise(epoch, ballot, (rng.randint(0, 3), rng.choice(NODES)), random_view(rng)),
            lambda: Accept(epoch, ballot, random_view(rng)),
            lambda: Accepted(epoch, ballot),
            lambda: Nack(epoch, ballot),
            lambda: Commit(random_view(rng)),
            lambda: ViewRequest(),
            # relayed: to this node (b), to be passed on, or to itself (refused)
            lambda: Relay(rng.choice(NODES), Message(rng.choice(NODES), epoch, ViewRequest())),
        ]
    )()


def mangle(rng: random.Random, raw: bytes) -> bytes:
    """Structural damage to an encoded message: wrong types, missing or extra fields, bytes."""
    choice = rng.randrange(6)
    if choice == 0:
        return rng.randbytes(rng.randint(0, 300))
    if choice == 1:
        cut = rng.randint(0, len(raw))
        return raw[:cut]
    data = json.loads(raw)
    if choice == 2:
        data[rng.choice(["v", "kind", "from", "epoch", "body"])] = rng.choice(
            [None, -1, "x", [], {}, 2**70, True]
        )
    elif choice == 3 and isinstance(data.get("body"), dict) and data["body"]:
        key = rng.choice(sorted(data["body"]))
        data["body"][key] = rng.choice([None, -5, "", ["a", 1], {"epoch": "x"}, 1.5, "z" * 300])
    elif choice == 4:
        data.pop(rng.choice(sorted(data)))
    else:
        data["body"] = {"x" * rng.randint(1, 40): rng.randint(0, 9)} | (data.get("body") or {})
    return json.dumps(data).encode()


def test_ten_thousand_random_messages() -> None:
    rng = random.Random(20261123)
    base = member_state()
    outcomes: Counter[str] = Counter()
    for _ in range(MESSAGES):
        message = Message(rng.choice(NODES), rng.randint(0, 6), random_body(rng))
        raw = encode(message)
        if rng.random() < 0.5:
            raw = mangle(rng, raw)
        try:
            decoded = decode(raw)
        except ProtocolError as exc:
            assert exc.reason, "a rejection names its reason"
            outcomes[f"decode:{exc.reason}"] += 1
            continue
        now = 100.1 + rng.random() * 0.3
        after, actions = sm.step(base, sm.Receive(decoded), now)
        rejected = [a.reason for a in actions if isinstance(a, sm.Rejected)]
        if rejected:
            unchanged, _ = sm.step(base, sm.RequestJoin(), now)  # the same instant, no message
            assert protocol_state(after) == protocol_state(unchanged), (decoded, rejected)
            outcomes[f"machine:{rejected[0]}"] += 1
        else:
            outcomes["accepted"] += 1
        # the machine's own invariants hold for whatever it accepted
        if after.view is not None:
            assert after.view.epoch >= base.view.epoch
            assert after.node_id in after.view.members or after.status != sm.MEMBER
    assert sum(outcomes.values()) == MESSAGES
    decode_rejections = sum(n for k, n in outcomes.items() if k.startswith("decode:"))
    machine_rejections = sum(n for k, n in outcomes.items() if k.startswith("machine:"))
    print(
        f"\nfuzzed {MESSAGES}: {decode_rejections} rejected by the decoder, "
        f"{machine_rejections} by the state machine, {outcomes['accepted']} accepted; {dict(outcomes)}"
    )
    # every path was exercised
    assert decode_rejections > 1000 and machine_rejections > 1000 and outcomes["accepted"] > 500
