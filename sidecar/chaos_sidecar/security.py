"""Request signing for the peer API: HMAC-SHA256 with the job's join secret.

The signature covers method, path, a SHA-256 digest of the body and a nanosecond
timestamp; a verifier accepts a timestamp within ``window_s`` of its clock and each
signature once (replay cache). Pure functions plus a small cache: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass

TIMESTAMP_HEADER = "X-Chaos-Timestamp"
SIGNATURE_HEADER = "X-Chaos-Signature"
NODE_HEADER = "X-Chaos-Node"
MIN_SECRET_BYTES = 16


def _canonical(method: str, path: str, body: bytes, timestamp_ns: int, node: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{digest}\n{timestamp_ns}\n{node}".encode()


def sign(secret: bytes, method: str, path: str, body: bytes, timestamp_ns: int, node: str) -> str:
    return hmac.new(secret, _canonical(method, path, body, timestamp_ns, node), hashlib.sha256).hexdigest()


def signed_headers(
    secret: bytes, method: str, path: str, body: bytes, now_ns: int, node: str
) -> dict[str, str]:
    return {
        TIMESTAMP_HEADER: str(now_ns),
        SIGNATURE_HEADER: sign(secret, method, path, body, now_ns, node),
        NODE_HEADER: node,
    }


@dataclass
class Verifier:
    """Checks signed requests; ``check`` returns None when valid, else a reason label."""

    secret: bytes
    window_s: float = 30.0
    max_remembered: int = 100_000

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"join secret must be at least {MIN_SECRET_BYTES} bytes")
        self._seen: OrderedDict[str, int] = OrderedDict()

    def check(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | object, now_ns: int
    ) -> str | None:
        get = headers.get  # type: ignore[attr-defined]
        stamp, signature, node = get(TIMESTAMP_HEADER), get(SIGNATURE_HEADER), get(NODE_HEADER)
        if not stamp or not signature or not node:
            return "unauthenticated"
        try:
            timestamp_ns = int(stamp)
        except ValueError:
            return "unauthenticated"
        if abs(now_ns - timestamp_ns) > self.window_s * 1e9:
            return "expired"
        expected = sign(self.secret, method, path, body, timestamp_ns, node)
        if not hmac.compare_digest(expected, signature):
            return "bad_signature"
        if signature in self._seen:
            return "replayed"
        self._seen[signature] = timestamp_ns
        horizon = now_ns - int(self.window_s * 1e9)
        while self._seen and (
            len(self._seen) > self.max_remembered or next(iter(self._seen.values())) < horizon
        ):
            self._seen.popitem(last=False)
        return None


FRAME_MAC_BYTES = 32


def frame_mac(secret: bytes, node: str, nonce: str, seq: int, body: bytes) -> bytes:
    """MAC of one frame on an authenticated peer stream.

    ``nonce`` is the stream's handshake timestamp (unique per connection) and ``seq`` the
    frame's position in it, so a frame cannot be replayed, reordered or moved to another
    stream.
    """
    prefix = f"{node}\n{nonce}\n{seq}\n".encode()
    return hmac.new(secret, prefix + body, hashlib.sha256).digest()


RELAY_METHOD = "RELAY"  # signs relayed membership messages with the request signature scheme


def relay_seal(secret: bytes, origin: str, to: str, inner: bytes, now_ns: int) -> str:
    """End-to-end authentication of a message ``origin`` sends to ``to`` through a relay
    (``<timestamp>.<signature>``): the relay can neither forge, alter nor redirect it."""
    return f"{now_ns}.{sign(secret, RELAY_METHOD, f'/relay/{to}', inner, now_ns, origin)}"


def check_relay_seal(
    verifier: Verifier, seal: str, origin: str, to: str, inner: bytes, now_ns: int
) -> str | None:
    """None when ``seal`` is ``origin``'s for ``inner`` to ``to``, fresh and not seen before;
    else the reason (as :meth:`Verifier.check`)."""
    stamp, _, signature = seal.partition(".")
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature, NODE_HEADER: origin}
    return verifier.check(RELAY_METHOD, f"/relay/{to}", inner, headers, now_ns)
