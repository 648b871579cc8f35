"""The leaders' encrypted channel (chaos_train.sealed) on real socket pairs: a round trip, and
frames altered, replayed, reordered, under another key or over the size limit refused."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from chaos_train.sealed import LENGTH, MAX_FRAME, TAG_BYTES, ChannelError, SealedChannel, handshake

TIMEOUT_S = 10.0
CONTEXT = b"chaos-train epoch 3 meeting 0a1b2c"


def connected_pair(
    keys_a: list[bytes], keys_b: list[bytes], context_b: bytes = CONTEXT
) -> tuple[SealedChannel | Exception, SealedChannel | Exception]:
    """Both ends' handshakes, run at once (a dials, b listens): each a channel or its error."""
    left, right = socket.socketpair()
    out: dict[str, SealedChannel | Exception] = {}

    def side(
        name: str, sock: socket.socket, keys: list[bytes], context: bytes, me: int, dialer: bool
    ) -> None:
        try:
            out[name] = handshake(sock, keys, context, me, dialer, TIMEOUT_S)[0]
        except ChannelError as exc:
            out[name] = exc
            sock.close()  # as the builder does: the other side fails at once

    threads = [
        threading.Thread(target=side, args=("a", left, keys_a, CONTEXT, 1, True)),
        threading.Thread(target=side, args=("b", right, keys_b, context_b, 0, False)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S * 2)
    return out["a"], out["b"]


def test_a_round_trip_both_ways_carries_the_bytes() -> None:
    key = os.urandom(32)
    a, b = connected_pair([key], [os.urandom(32), key])  # b holds two keys (a rotation)
    assert isinstance(a, SealedChannel) and isinstance(b, SealedChannel)
    payloads = [b"", b"x" * 100, os.urandom(MAX_FRAME)]
    sender = threading.Thread(target=lambda: [a.send(p) for p in payloads])
    sender.start()
    assert [b.recv() for _ in payloads] == payloads
    sender.join(TIMEOUT_S)
    b.send(b"answer")
    assert a.recv() == b"answer"


def raw_pair(
    key_ab: bytes, key_ba: bytes
) -> tuple[SealedChannel, socket.socket, SealedChannel, socket.socket]:
    """A sending channel whose bytes the test reads raw, and a receiving channel the test feeds:
    what a man in the middle sees and writes."""
    a_sock, tap = socket.socketpair()
    feed, b_sock = socket.socketpair()
    a = SealedChannel(a_sock, key_ab, key_ba, TIMEOUT_S)
    b = SealedChannel(b_sock, key_ba, key_ab, TIMEOUT_S)
    tap.settimeout(TIMEOUT_S)
    return a, tap, b, feed


def frames(a: SealedChannel, tap: socket.socket, payloads: list[bytes]) -> list[bytes]:
    """The raw frames ``a`` puts on the wire for ``payloads``."""
    out = []
    for p in payloads:
        a.send(p)
        head = tap.recv(LENGTH.size, socket.MSG_WAITALL)
        (n,) = LENGTH.unpack(head)
        out.append(head + tap.recv(n, socket.MSG_WAITALL))
    return out


def test_a_tampered_frame_is_refused() -> None:
    a, tap, b, feed = raw_pair(os.urandom(32), os.urandom(32))
    (frame,) = frames(a, tap, [b"gradient bytes " * 10])
    assert b"gradient bytes" not in frame
    tampered = bytearray(frame)
    tampered[20] ^= 0x01
    feed.sendall(bytes(tampered))
    with pytest.raises(ChannelError, match="failed authentication"):
        b.recv()
    with pytest.raises(ChannelError, match="unusable"):  # and the channel is done
        b.recv()


def test_a_replayed_frame_is_refused() -> None:
    a, tap, b, feed = raw_pair(os.urandom(32), os.urandom(32))
    (frame,) = frames(a, tap, [b"step 7"])
    feed.sendall(frame)
    assert b.recv() == b"step 7"
    feed.sendall(frame)
    with pytest.raises(ChannelError, match="failed authentication"):
        b.recv()


def test_frames_out_of_order_are_refused() -> None:
    a, tap, b, feed = raw_pair(os.urandom(32), os.urandom(32))
    _, second = frames(a, tap, [b"first", b"second"])
    feed.sendall(second)
    with pytest.raises(ChannelError, match="failed authentication"):
        b.recv()


def test_a_frame_under_another_key_is_refused() -> None:
    a, tap, _, _ = raw_pair(os.urandom(32), os.urandom(32))
    _, _, b, feed = raw_pair(os.urandom(32), os.urandom(32))
    (frame,) = frames(a, tap, [b"hello"])
    feed.sendall(frame)
    with pytest.raises(ChannelError, match="failed authentication"):
        b.recv()


def test_an_oversize_frame_is_refused_unread_and_not_sent() -> None:
    a, _, b, feed = raw_pair(os.urandom(32), os.urandom(32))
    feed.sendall(LENGTH.pack(MAX_FRAME + TAG_BYTES + 1))  # only the length: the rest never comes
    with pytest.raises(ChannelError, match="over the limit"):
        b.recv()
    with pytest.raises(ChannelError, match="over the limit"):
        a.send(bytes(MAX_FRAME + 1))


def test_a_peer_with_another_key_fails_the_handshake_on_both_sides() -> None:
    a, b = connected_pair([os.urandom(32)], [os.urandom(32)])
    assert isinstance(a, ChannelError) and isinstance(b, ChannelError)
    assert "does not hold" in str(b)


def test_a_peer_in_another_context_fails_the_key_confirmation() -> None:
    key = os.urandom(32)
    a, b = connected_pair([key], [key], context_b=b"chaos-train epoch 4 meeting 0a1b2c")
    assert isinstance(a, ChannelError) and isinstance(b, ChannelError)
    assert "keys differ" in str(a) and "keys differ" in str(b)
