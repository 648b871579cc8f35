"""Wire messages: round trips, and every defect rejected with a reason (never a crash)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos_sidecar.errors import InputError, ProtocolError
from chaos_sidecar.protocol import (
    MAX_MESSAGE_BYTES,
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
from chaos_sidecar.protocol.local_api import NodeView

VIEW = View(3, ("a", "b", "c"), "a", ("http://a", "http://b", "http://c"), ("z",))

SAMPLES = [
    Heartbeat(("a", "b"), (3, 2), (("a", "c"),)),
    Join("d", "http://d:1"),
    Leave("b"),
    Suspect("c"),
    LinkDown("c"),
    LinkUp("c"),
    Prepare(4, (2, "b")),
    Promise(4, (2, "b"), (0, "a"), VIEW),
    Promise(4, (2, "b"), None, None),
    Accept(4, (0, "a"), VIEW),
    Accepted(4, (0, "a")),
    Nack(4, (3, "c")),
    Commit(VIEW),
    ViewRequest(),
    Heartbeat(("a", "b", "c"), (3, 2), (("a", "c"),), ("a", "b")),
    Relay("c", Message("b", 3, Accept(4, (0, "a"), VIEW)), "1700000000000000000.abcdef"),
]


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: b.kind)
def test_round_trip(body) -> None:
    message = Message("a", 3, body)
    assert decode(encode(message)) == message
    # canonical: a relayed message's seal is checked over its re-encoding at the destination
    assert encode(decode(encode(message))) == encode(message)


def test_a_relayed_message_is_not_relayed_again() -> None:
    inner = Message("b", 3, Relay("c", Message("b", 3, ViewRequest())))
    with pytest.raises(ProtocolError) as info:
        decode(encode(Message("a", 3, Relay("c", inner))))
    assert info.value.reason == "bad_field" and "body.inner" in str(info.value)


def _raw(**overrides) -> bytes:
    payload = {"v": 1, "kind": "leave", "from": "a", "epoch": 1, "body": {"node": "a"}}
    payload.update(overrides)
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"x" * (MAX_MESSAGE_BYTES + 1), "oversize"),
        (b"{not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b"\xff\xfe", "malformed"),
        (_raw(v=2), "version"),
        (_raw(v=None), "version"),
        (_raw(kind="gossip"), "unknown_kind"),
        (_raw(kind=7), "malformed"),
        (_raw(epoch=-1), "bad_field"),
        (_raw(epoch="1"), "bad_field"),
        (_raw(epoch=True), "bad_field"),
        (_raw(**{"from": "../etc"}), "bad_field"),
        (_raw(body=[]), "bad_field"),
        (_raw(body={"node": 5}), "bad_field"),
        (_raw(kind="prepare", body={"target": 0, "ballot": [1, "a"]}), "bad_field"),
        (_raw(kind="prepare", body={"target": 2, "ballot": [-1, "a"]}), "bad_field"),
        (
            _raw(
                kind="commit",
                body={"view": {"epoch": 2, "members": [], "coordinator": "a", "addresses": []}},
            ),
            "bad_field",
        ),
        (
            _raw(
                kind="commit",
                body={
                    "view": {
                        "epoch": 2,
                        "members": ["a", "a"],
                        "coordinator": "a",
                        "addresses": ["x", "x"],
                    }
                },
            ),
            "bad_field",
        ),
        (
            _raw(
                kind="commit",
                body={"view": {"epoch": 2, "members": ["a"], "coordinator": "b", "addresses": ["x"]}},
            ),
            "bad_field",
        ),
        (
            _raw(
                kind="commit",
                body={"view": {"epoch": 2, "members": ["a"], "coordinator": "a", "addresses": []}},
            ),
            "bad_field",
        ),
        (_raw(kind="heartbeat", body={"hears": ["a"], "down_links": [["a"]]}), "bad_field"),
    ],
)
def test_defects_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert info.value.reason == reason


def test_field_is_named_in_the_error() -> None:
    with pytest.raises(ProtocolError, match=r"body\.view\.coordinator"):
        decode(
            _raw(
                kind="commit",
                body={"view": {"epoch": 2, "members": ["a"], "coordinator": "b", "addresses": ["x"]}},
            )
        )


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=2000, deadline=None)
@given(
    st.sampled_from([s.kind for s in SAMPLES] + ["bogus"]),
    st.dictionaries(
        st.sampled_from(
            [
                "node",
                "address",
                "target",
                "ballot",
                "view",
                "hears",
                "accepted_view",
                "accepted_ballot",
                "promised",
                "down_links",
                "topology_version",
            ]
        ),
        json_values,
    ),
)
def test_random_structured_bodies_never_crash(kind: str, body: dict) -> None:
    raw = json.dumps({"v": 1, "kind": kind, "from": "a", "epoch": 1, "body": body}).encode()
    with contextlib.suppress(ProtocolError):
        decode(raw)


def test_the_trainer_reads_its_sidecars_view_answer_typed() -> None:
    view = View(3, ("a", "b"), "a", ("http://10.0.0.1:7000", "http://10.0.0.2:7000"))
    answer = {"node": "a", "address": "http://10.0.0.1:7000", "status": "member", "view": view.to_json(),
              "topology": {"version": [0, 0], "down": []}}  # fmt: skip
    parsed = NodeView.from_json(json.loads(json.dumps(answer)))
    assert parsed == NodeView("a", "http://10.0.0.1:7000", "member", view) and parsed.epoch == 3
    assert NodeView.from_json(answer | {"view": None, "status": "standby"}).epoch == 0
    with pytest.raises(InputError, match=r"view\.status"):
        NodeView.from_json(answer | {"status": None})
    with pytest.raises(InputError, match="coordinator"):
        NodeView.from_json(answer | {"view": view.to_json() | {"coordinator": "z"}})
