"""End-to-end authentication of relayed membership messages in the sidecar's runtime (in
process, no sockets): the relay is authenticated by its stream, the origin by its seal."""

from __future__ import annotations

import time

from chaos_sidecar.adapters.runtime import EventLog, MembershipRuntime
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.protocol import Message, Relay, View, ViewRequest, decode, encode
from chaos_sidecar.security import Verifier, check_relay_seal, relay_seal

SECRET = b"relay-test-secret-0123456789"
VIEW = View(1, ("a", "b", "c"), "a", ("a", "b", "c"))


def runtime(node: str, rejected: list[str] | None = None) -> MembershipRuntime:
    state = sm.initial_member(node, VIEW, sm.Settings(), time.monotonic())
    on_reject = rejected.append if rejected is not None else None
    return MembershipRuntime(state, SECRET, EventLog(None, node), SidecarMetrics(), on_reject=on_reject)


def relayed(inner: Message, seal: str) -> bytes:
    """What relay b passes on to c."""
    return encode(Message("b", 1, Relay("c", inner, seal)))


async def test_a_sealed_message_is_accepted_once_and_heard_as_relayed() -> None:
    c = runtime("c")
    inner = Message("a", 1, ViewRequest())
    raw = relayed(inner, relay_seal(SECRET, "a", "c", encode(inner), time.time_ns()))
    before = c.state.last_direct["a"]
    assert await c.receive(raw, authenticated_as="b") is None
    assert c.state.last_heard["a"] > before == c.state.last_direct["a"]  # heard, not directly
    assert await c.receive(raw, authenticated_as="b") == "relay_replayed"


async def test_a_forged_or_altered_relay_is_rejected() -> None:
    rejected: list[str] = []
    c = runtime("c", rejected)
    inner = Message("a", 1, ViewRequest())
    now = time.time_ns()
    other = Message("a", 2, ViewRequest())  # the relay swapped the message under a's seal
    cases = {
        "relay_bad_signature": [
            relayed(other, relay_seal(SECRET, "a", "c", encode(inner), now)),
            relayed(inner, relay_seal(b"another-secret-0123456789", "a", "c", encode(inner), now)),
            relayed(inner, relay_seal(SECRET, "a", "b", encode(inner), now)),  # sealed for b
        ],
        "relay_unauthenticated": [relayed(inner, "")],
        "relay_expired": [relayed(inner, relay_seal(SECRET, "a", "c", encode(inner), now - 10**12))],
    }
    for reason, raws in cases.items():
        for raw in raws:
            assert await c.receive(raw, authenticated_as="b") == reason
    assert rejected == [reason for reason, raws in cases.items() for _ in raws]  # counted as rejections


async def test_the_origin_seals_its_relayed_messages_and_a_relay_leaves_them_as_they_are() -> None:
    a = runtime("a")
    inner = Message("a", 1, ViewRequest())
    sealed = a._sealed(Message("a", 1, Relay("c", inner)))
    seal = sealed.body.seal  # type: ignore[union-attr]
    assert check_relay_seal(Verifier(SECRET), seal, "a", "c", encode(inner), time.time_ns()) is None
    b = runtime("b")
    passed_on = Message("b", 1, sealed.body)
    assert b._sealed(passed_on) == passed_on
    assert decode(encode(passed_on)) == passed_on
