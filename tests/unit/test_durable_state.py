"""The durable membership state: its file format, the atomic store, the runtime writing it
before the messages that depend on it, and new incarnations for nodes that lost it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from chaos_sidecar.adapters.runtime import EventLog, MembershipRuntime
from chaos_sidecar.adapters.state_store import SLOT_BYTES, SLOT_HEADER, StateStore, initial_state
from chaos_sidecar.config import SidecarConfig
from chaos_sidecar.errors import InputError
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.membership.durable import decode_state, encode_state
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.protocol import Accept, Commit, Join, Message, Prepare, View, encode

SETTINGS = sm.Settings(0.1, 0.5, 0.05)
VIEW = View(3, ("a", "b", "c"), "a", ("http://a", "http://b", "http://c"), incarnations=(7, 8, 9))
NEXT = View(4, ("a", "b"), "a", ("http://a", "http://b"), ("c",), (7, 8))


def saved_member() -> sm.Durable:
    state = sm.initial_member("b", VIEW, SETTINGS, 0.0)
    state, actions = sm.step(state, sm.Receive(Message("a", 3, Accept(4, (2, "a"), NEXT))), 0.1)
    assert isinstance(actions[0], sm.Persist)  # first, before the ACCEPTED it enables
    return actions[0].state


def test_the_file_round_trips_and_names_what_is_wrong() -> None:
    saved = saved_member()
    assert saved.promised == (2, "a") and saved.accepted == ((2, "a"), NEXT) and saved.incarnation == 8
    raw = encode_state(saved)
    assert decode_state(raw, "b") == saved
    damaged = raw.replace(b'"max_round":2', b'"max_round":3')
    cases = {
        "sha256": damaged,
        "state": raw[: len(raw) // 2],
        "format": b'{"format": "other"}',
        "state.node": raw,  # someone else's file
    }
    for field, data in cases.items():
        with pytest.raises(InputError) as error:
            decode_state(data, "c" if field == "state.node" else "b")
        assert error.value.field == field, (field, error.value)
    # a well-formed file with a bad field (checksum recomputed, as a buggy writer would)
    body = json.loads(raw)["state"]
    body["accepted"]["view"]["epoch"] = 9
    with pytest.raises(InputError, match="accepted"):
        decode_state(encode_state_body(body), "b")


def encode_state_body(body: dict) -> bytes:
    import hashlib

    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    outer = {
        "format": "chaos-sidecar-state",
        "v": 1,
        "sha256": hashlib.sha256(canonical).hexdigest(),
        "state": body,
    }
    return json.dumps(outer).encode()


def test_the_store_keeps_the_newest_sound_slot_and_sets_a_damaged_file_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state", "b")
    assert store.load() == (None, None)
    saved = saved_member()
    store.save(saved)
    store.save(replace(saved, max_round=5))
    assert StateStore(tmp_path / "state", "b").load() == (replace(saved, max_round=5), None)
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["b.state"]  # one file, written in place

    # a crash while writing the third state tears its slot: the second state is what holds
    store.save(replace(saved, max_round=6))
    raw = bytearray(store.path.read_bytes())
    newest = (store.sequence % 2) * SLOT_BYTES
    raw[newest + SLOT_HEADER.size + 40 : newest + SLOT_HEADER.size + 60] = b"\0" * 20
    store.path.write_bytes(bytes(raw))
    reader = StateStore(tmp_path / "state", "b")
    assert reader.load() == (replace(saved, max_round=5), None)
    reader.save(replace(saved, max_round=7))  # overwrites the torn slot, not the sound one
    assert StateStore(tmp_path / "state", "b").load() == (replace(saved, max_round=7), None)

    # a store that never read the file does not overwrite its newest slot either
    StateStore(tmp_path / "state", "b").save(replace(saved, max_round=8))
    assert StateStore(tmp_path / "state", "b").load() == (replace(saved, max_round=8), None)

    store.path.write_bytes(store.path.read_bytes()[:100])  # both slots gone: a damaged file
    state, problem = store.load()
    assert state is None and "b.state" in problem and "corrupt" in problem
    assert (tmp_path / "state" / "b.state.corrupt").exists() and not store.path.exists()


def test_the_store_reads_a_file_of_the_earlier_format_and_replaces_it(tmp_path: Path) -> None:
    saved = saved_member()
    store = StateStore(tmp_path, "b")
    store.legacy_path.write_bytes(encode_state(saved))
    assert store.load() == (saved, None)
    store.save(replace(saved, max_round=5))
    assert [p.name for p in tmp_path.iterdir()] == ["b.state"]
    assert StateStore(tmp_path, "b").load() == (replace(saved, max_round=5), None)


def config(tmp_path: Path, **kw) -> SidecarConfig:
    return SidecarConfig(node_id="b", secret=b"s" * 32, contacts=(("a", "http://a"),), membership=SETTINGS,
                         state_dir=tmp_path, **kw)  # fmt: skip


def test_a_restart_recovers_what_was_saved_or_comes_back_as_a_new_incarnation(tmp_path: Path) -> None:
    store, records = StateStore(tmp_path, "b"), []
    store.save(saved_member())
    state = initial_state(config(tmp_path), "http://b", store, lambda kind, **f: records.append(kind))
    assert state.is_member and state.promised == (2, "a") and state.incarnation == 8
    assert records == ["recovered"]
    # back at another address: the others cannot reach the old one, so start afresh
    state = initial_state(config(tmp_path), "http://b2", store, lambda kind, **f: records.append(kind))
    assert state.status == sm.JOINING and state.incarnation > 8 and records[-1] == "state_lost"
    assert store.load()[0].incarnation == state.incarnation  # the new life is saved at once
    # a damaged file: a new incarnation too
    store.path.write_text("{not json")
    fresh = initial_state(config(tmp_path), "http://b", store, lambda kind, **f: records.append(kind))
    assert (
        fresh.status == sm.JOINING and fresh.incarnation >= state.incarnation and records[-1] == "state_lost"
    )


class Links:
    """Stands in for the peer streams: records what the state file held at each send."""

    def __init__(self, store: StateStore) -> None:
        self.store, self.sent = store, []

    def send(self, address: str, raw: bytes) -> None:
        self.sent.append((json.loads(raw)["kind"], self.store.load()[0]))


async def test_the_runtime_writes_before_it_sends_and_drops_a_step_it_cannot_write(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "b")
    state = sm.initial_member("b", VIEW, SETTINGS, 0.0)
    runtime = MembershipRuntime(state, b"s" * 32, EventLog(None, "b"), SidecarMetrics(), clock=lambda: 0.1,
                                store=store)  # fmt: skip
    runtime.links = links = Links(store)
    await runtime.receive(encode(Message("a", 3, Prepare(4, (2, "a")))), authenticated_as="a")
    promises = [saved for kind, saved in links.sent if kind == "promise"]
    assert promises and all(saved.promised == (2, "a") for saved in promises)
    assert store.writes == 1

    def full_disk(_state: sm.Durable) -> None:
        raise OSError(28, "No space left on device")

    store.save = full_disk  # type: ignore[method-assign]
    before, sent = runtime.state, len(links.sent)
    await runtime.receive(encode(Message("c", 3, Prepare(4, (3, "c")))), authenticated_as="c")
    assert runtime.state is before and len(links.sent) == sent  # no promise to c without its write


def test_a_new_incarnation_does_not_vote_until_a_view_lists_it() -> None:
    # b lost its state: it asks to join as incarnation 20 while the view still lists 8
    reborn = sm.initial_joiner("b", "http://b", (("a", "http://a"),), SETTINGS, incarnation=20)
    reborn, _ = sm.step(reborn, sm.Receive(Message("a", 3, Commit(VIEW))), 0.1)
    assert reborn.status == sm.REMOVED and not reborn.is_member
    _, actions = sm.step(reborn, sm.Receive(Message("a", 3, Prepare(4, (2, "a")))), 0.2)
    assert sm.Rejected("not_acceptor") in actions
    assert not [a for a in actions if isinstance(a, sm.Send) and a.message.kind == "promise"]
    # it tells every member of that view, and the coordinator re-admits it in its place
    _, actions = sm.step(reborn, sm.Tick(), 0.3)
    asks = {a.to for a in actions if isinstance(a, sm.Send) and a.message.kind == "join"}
    assert asks == {"a", "c"}
    coordinator = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    coordinator, actions = sm.step(coordinator, sm.Receive(Message("b", 0, Join("b", "http://b", 20))), 0.3)
    decided = [a for a in actions if isinstance(a, sm.Decided)]
    assert decided and decided[0].changes == (("rejoin", "b"),)
    assert decided[0].view.incarnation_of("b") == 20 and decided[0].view.members == VIEW.members
    # a stale join of the old life changes nothing
    _, actions = sm.step(coordinator, sm.Receive(Message("b", 0, Join("b", "http://b", 5))), 0.31)
    assert sm.Rejected("stale_incarnation") in actions
    # once the new view lists incarnation 20, b votes again (in the epochs after it)
    reborn, _ = sm.step(reborn, sm.Receive(Message("a", 4, Commit(decided[0].view))), 0.4)
    assert reborn.is_member
    _, actions = sm.step(reborn, sm.Receive(Message("a", 4, Prepare(5, (1, "a")))), 0.5)
    assert [a for a in actions if isinstance(a, sm.Send) and a.message.kind == "promise"]


def test_incarnations_on_the_wire() -> None:
    from chaos_sidecar.errors import ProtocolError
    from chaos_sidecar.protocol import decode

    for message in (Message("a", 3, Commit(VIEW)), Message("b", 0, Join("b", "http://b", 20))):
        assert decode(encode(message)) == message
    plain = Message("a", 1, Commit(View(1, ("a",), "a", ("http://a",))))
    assert b"incarnation" not in encode(plain)  # all 0: omitted, as before incarnations existed
    assert b"incarnation" not in encode(Message("b", 0, Join("b", "x")))
    raw = json.loads(encode(Message("a", 3, Commit(VIEW))))
    for bad in ([1, 2], [1, 2, -3], [1, 2, "x"], [1, 2, 2**60]):
        raw["body"]["view"]["incarnations"] = bad
        with pytest.raises(ProtocolError, match="incarnations"):
            decode(json.dumps(raw).encode())
