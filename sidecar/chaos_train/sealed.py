"""An authenticated, encrypted channel over one TCP connection: how the leaders of a job's
parties exchange their parties' partial gradient sums (see chaos_train.crossparty).

Keys. Each sidecar gives its trainer the job's *collective keys* (HKDF of each join secret it
accepts now, see chaos_sidecar.security.collective_keys; the secret itself never leaves the
sidecar, and neither is ever sent on the wire). A connection derives two keys of its own
from one of them: each side sends a hello in clear (a magic, 16 random bytes, the id of the
collective key it uses and its party's index); both then compute, with HKDF-SHA256 salted
with both randoms, one AES-256-GCM key per direction, bound to ``context`` (the view epoch and
the meeting's random name) and to both indices. Fresh randoms make every connection's keys
new, so a recorded session cannot be replayed into another one.

Frames. ``u32 length || AES-GCM(counter nonce, payload, aad = length)``: the nonce is the
frame's number in its direction (96 bits, from 0), never repeated under one key (a key lives
for one connection and one direction, and the counter only grows); the receiver decrypts with
the number it expects next, so a dropped, replayed, reordered or altered frame, or one sealed
under another key, fails its tag. The first frame each way confirms the keys (it carries the
context). A frame longer than ``max_frame`` is refused before it is read. Any failure raises
ChannelError and the channel is unusable from then on.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"CTC1"
HELLO = struct.Struct("!4s16s8sH")  # magic, random, key id, party index
LENGTH = struct.Struct("!I")
TAG_BYTES = 16
MAX_FRAME = 4 << 20  # payload bytes of one frame: a tensor travels as several
MAX_COUNTER = 1 << 64  # frames per direction and connection (far beyond any job)
CONFIRM = b"chaos-train collective channel: "


class ChannelError(RuntimeError):
    """The channel failed: refused, broken, timed out, or a frame failed authentication."""


def _hkdf(key: bytes, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def key_id(key: bytes) -> bytes:
    """8 bytes naming a collective key on the wire (the key cannot be computed from them)."""
    return _hkdf(key, None, b"chaos-train collective key id", 8)


class SealedChannel:
    """Frames both ways on ``sock`` under one key per direction (see the module's docstring).
    ``timeout_s`` bounds every send and receive."""

    def __init__(
        self,
        sock: socket.socket,
        send_key: bytes,
        recv_key: bytes,
        timeout_s: float,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.sock = sock
        self.sock.settimeout(timeout_s)
        self._seal = AESGCM(send_key)
        self._open = AESGCM(recv_key)
        self._sent = 0
        self._received = 0
        self.max_frame = max_frame
        self.broken: str | None = None

    def _fail(self, message: str) -> ChannelError:
        self.broken = message
        return ChannelError(message)

    def send(self, payload: bytes | bytearray | memoryview) -> None:
        if self.broken is not None:
            raise ChannelError(f"channel unusable: {self.broken}")
        if len(payload) > self.max_frame:
            raise self._fail(f"a frame of {len(payload)} bytes is over the limit ({self.max_frame})")
        if self._sent >= MAX_COUNTER:
            raise self._fail("frame counter exhausted")
        head = LENGTH.pack(len(payload) + TAG_BYTES)
        sealed = self._seal.encrypt(self._sent.to_bytes(12, "big"), payload, head)
        self._sent += 1
        try:  # no copy of a frame of megabytes to join them
            self.sock.sendall(head)
            self.sock.sendall(sealed)
        except OSError as exc:
            raise self._fail(f"sending: {exc!r}") from None

    def recv(self) -> bytes | bytearray:
        if self.broken is not None:
            raise ChannelError(f"channel unusable: {self.broken}")
        head = self._read(LENGTH.size)
        (length,) = LENGTH.unpack(head)
        if not TAG_BYTES <= length <= self.max_frame + TAG_BYTES:
            raise self._fail(
                f"a frame of {length} bytes is over the limit ({self.max_frame}); refused unread"
            )
        sealed = self._read(length)
        try:
            payload = self._open.decrypt(self._received.to_bytes(12, "big"), sealed, head)
        except InvalidTag:
            raise self._fail(
                f"frame {self._received} failed authentication (altered, replayed, out of order, "
                "or sealed under another key)"
            ) from None
        self._received += 1
        return payload

    def _read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except OSError as exc:  # a timeout too
                raise self._fail(f"receiving: {exc!r}") from None
            if k == 0:
                raise self._fail("the peer closed the connection")
            got += k
        return buf

    def close(self) -> None:
        self.broken = self.broken or "closed"
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def handshake(
    sock: socket.socket, keys: list[bytes], context: bytes, me: int, dialer: bool, timeout_s: float
) -> tuple[SealedChannel, int]:
    """A channel on the connected ``sock`` and the peer's party index. The dialer uses its
    first key (the one its sidecar signs with now); the listener any of ``keys`` with that id
    (both during a rotation of the join secret). Raises ChannelError when the peer does not
    speak this protocol, holds no common key, or is in another context (epoch, meeting)."""
    if not keys:
        raise ChannelError("no collective key")
    deadline = time.monotonic() + timeout_s
    sock.settimeout(timeout_s)
    mine = os.urandom(16)
    try:
        sock.sendall(HELLO.pack(MAGIC, mine, key_id(keys[0]), me))
        raw = bytearray()
        while len(raw) < HELLO.size:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(HELLO.size - len(raw))
            if not chunk:
                raise ChannelError("the peer closed the connection during the handshake")
            raw += chunk
    except OSError as exc:
        raise ChannelError(f"handshake: {exc!r}") from None
    magic, theirs, their_id, peer = HELLO.unpack(bytes(raw))
    if magic != MAGIC:
        raise ChannelError("the peer does not speak the collective channel protocol")
    if dialer:
        base = keys[0]
    else:
        held = [k for k in keys if key_id(k) == their_id]
        if not held:
            raise ChannelError(
                "the peer uses a collective key this node does not hold (another join secret?)"
            )
        base = held[0]
    d_rand, l_rand = (mine, theirs) if dialer else (theirs, mine)
    d_idx, l_idx = (me, peer) if dialer else (peer, me)
    bound = context + f"|{d_idx}>{l_idx}".encode()
    to_listener = _hkdf(base, d_rand + l_rand, b"dialer to listener|" + bound)
    to_dialer = _hkdf(base, d_rand + l_rand, b"listener to dialer|" + bound)
    send, recv = (to_listener, to_dialer) if dialer else (to_dialer, to_listener)
    channel = SealedChannel(sock, send, recv, max(0.001, deadline - time.monotonic()))
    channel.send(CONFIRM + context)
    try:
        confirmed = channel.recv()
    except ChannelError as exc:
        raise ChannelError(f"the peer's keys differ (another join secret, epoch or meeting): {exc}") from None
    if confirmed != CONFIRM + context:
        raise ChannelError("the peer confirmed another context")
    channel.sock.settimeout(timeout_s)
    return channel, peer
