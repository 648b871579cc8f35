"""Request signing for the peer API: HMAC-SHA256 with the job's join secret.

The signature covers method, path, a SHA-256 digest of the body and a nanosecond
timestamp; a verifier accepts a timestamp within ``window_s`` of its clock and each
signature once (replay cache). During a rotation (:class:`RotatingSecret`) every key still
valid is accepted and the newest promoted one signs. Pure functions plus a small cache: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

TIMESTAMP_HEADER = "X-Chaos-Timestamp"
SIGNATURE_HEADER = "X-Chaos-Signature"
NODE_HEADER = "X-Chaos-Node"
PARTY_HEADER = "X-Chaos-Party"
PARTY_SIGNATURE_HEADER = "X-Chaos-Party-Signature"
MIN_SECRET_BYTES = 16


class PartySigning(Protocol):
    """A party's private key (:class:`chaos_sidecar.parties.PartySigner`)."""

    party: str

    def sign(self, data: bytes) -> str: ...


class PartyChecking(Protocol):
    """An admission policy (:class:`chaos_sidecar.parties.Policy`)."""

    def check_signature(
        self, party_name: str | None, node: str, data: bytes, signature: str | None, now_s: float
    ) -> str | None: ...

    def owner(self, node: str) -> Any: ...  # the Party owning ``node``, or None


def _canonical(method: str, path: str, body: bytes, timestamp_ns: int, node: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{digest}\n{timestamp_ns}\n{node}".encode()


def sign(secret: bytes, method: str, path: str, body: bytes, timestamp_ns: int, node: str) -> str:
    return hmac.new(secret, _canonical(method, path, body, timestamp_ns, node), hashlib.sha256).hexdigest()


def party_signed_data(method: str, path: str, body: bytes, timestamp_ns: int, node: str, party: str) -> bytes:
    """What a party's key signs: the request's canonical fields and the party's name."""
    return _canonical(method, path, body, timestamp_ns, node) + f"\n{party}".encode()


def signed_headers(
    secret: bytes, method: str, path: str, body: bytes, now_ns: int, node: str
) -> dict[str, str]:
    headers = {
        TIMESTAMP_HEADER: str(now_ns),
        SIGNATURE_HEADER: sign(secret, method, path, body, now_ns, node),
        NODE_HEADER: node,
    }
    signer = party_signer(secret)
    if signer is not None:
        headers[PARTY_HEADER] = signer.party
        headers[PARTY_SIGNATURE_HEADER] = signer.sign(
            party_signed_data(method, path, body, now_ns, node, signer.party)
        )
    return headers


def party_signer(secret: bytes) -> PartySigning | None:
    """The party key this node signs with besides the join secret (a multi-party job)."""
    return getattr(secret, "party", None)


def party_policy(secret: bytes) -> PartyChecking | None:
    """The admission policy this node checks peers against (a multi-party job)."""
    return getattr(secret, "policy", None)


class RotatingSecret(bytearray):
    """The join secret of a job whose Secret may rotate: the bytes are the key this sidecar
    signs with now (every holder of the object signs with a promoted key at once, with no change
    at the call sites), and :meth:`accepted` lists every key a verifier takes now.

    A rotation (:meth:`offer`) is accepted for verification at once and used for signing only
    ``sign_delay_s`` later (:meth:`tick`), so that every member has seen the new key before
    anyone signs with it (Kubernetes updates each pod's mounted Secret at its own moment); the
    key it replaces stays accepted for ``grace_s`` after that. A key shorter than
    ``MIN_SECRET_BYTES`` is refused and the old one stays in force. Pure: times are passed in.

    In a multi-party job the object also carries this node's party key (``party``) and the
    admission policy (``policy``), so every holder signs and checks party identities too.
    """

    def __init__(self, secret: bytes, *, grace_s: float = 600.0, sign_delay_s: float = 0.0) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"join secret must be at least {MIN_SECRET_BYTES} bytes")
        if grace_s < 0 or sign_delay_s < 0:
            raise ValueError("grace_s and sign_delay_s must not be negative")
        super().__init__(secret)
        self.grace_ns = int(grace_s * 1e9)
        self.sign_delay_ns = int(sign_delay_s * 1e9)
        self.pending: tuple[bytes, int] | None = None  # (key, seen at): accepted, not yet signing
        self.retired: list[tuple[bytes, int]] = []  # (key, accepted until)
        self.party: PartySigning | None = None
        self.policy: PartyChecking | None = None

    def known(self, key: bytes) -> bool:
        return key == bytes(self) or (self.pending is not None and key == self.pending[0])

    def offer(self, key: bytes, now_ns: int) -> str:
        """A key read from the Secret: ``unchanged``, ``refused_short`` or ``accepted``."""
        if self.known(key):
            return "unchanged"
        if len(key) < MIN_SECRET_BYTES:
            return "refused_short"
        if self.pending is not None:  # rotated again before the last one signed: keep it a while
            self.retired.append((self.pending[0], now_ns + self.grace_ns))
        self.pending = (key, now_ns)
        return "accepted"

    def tick(self, now_ns: int) -> list[str]:
        """Promote a pending key whose delay has passed, forget retired keys past their grace:
        what happened (``promoted``, ``retired``)."""
        happened = []
        if self.pending is not None and now_ns >= self.pending[1] + self.sign_delay_ns:
            self.retired.append((bytes(self), now_ns + self.grace_ns))
            self[:] = self.pending[0]
            self.pending = None
            happened.append("promoted")
        kept = [(k, until) for k, until in self.retired if now_ns <= until and k != bytes(self)]
        happened += ["retired"] * (len(self.retired) - len(kept))
        self.retired = kept
        return happened

    def accepted(self, now_ns: int) -> list[bytes]:
        keys = [bytes(self)]
        if self.pending is not None:
            keys.append(self.pending[0])
        return keys + [k for k, until in self.retired if now_ns <= until]


def accepted_keys(secret: bytes, now_ns: int) -> list[bytes]:
    """Every key valid now: one for a plain secret, several during a rotation."""
    if isinstance(secret, RotatingSecret):
        return secret.accepted(now_ns)
    return [bytes(secret)]


def collective_keys(secret: bytes, now_ns: int) -> list[bytes]:
    """The job's collective keys, the one this node signs with first: what a trainer's
    cross-party channels derive their keys from (chaos_train.sealed). One-way: the join
    secret cannot be computed from them, and they only travel on loopback to the trainer."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return [
        HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"chaos-train collectives v1").derive(k)
        for k in accepted_keys(secret, now_ns)
    ]


@dataclass
class Verifier:
    """Checks signed requests; ``check`` returns None when valid, else a reason label. With a
    ``policy`` (by default the one ``secret`` carries at each check: it may be reloaded) the
    sender's party signature too."""

    secret: bytes
    window_s: float = 30.0
    max_remembered: int = 100_000
    policy: PartyChecking | None = None

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
        if not self._authentic(method, path, body, timestamp_ns, node, signature, now_ns):
            return "bad_signature"
        policy = self.policy if self.policy is not None else party_policy(self.secret)  # reloadable
        if policy is not None:
            party = get(PARTY_HEADER)
            data = party_signed_data(method, path, body, timestamp_ns, node, party or "")
            reason = policy.check_signature(party, node, data, get(PARTY_SIGNATURE_HEADER), now_ns / 1e9)
            if reason is not None:
                return reason
        if signature in self._seen:
            return "replayed"
        self._seen[signature] = timestamp_ns
        horizon = now_ns - int(self.window_s * 1e9)
        while self._seen and (
            len(self._seen) > self.max_remembered or next(iter(self._seen.values())) < horizon
        ):
            self._seen.popitem(last=False)
        return None

    def sender_clock_offset_ns(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | object, now_ns: int
    ) -> int | None:
        """The sender's clock minus ours, as the timestamp of its request says, when the request
        is signed with a key valid now (so a stranger cannot make us report skews of its
        choosing); None for a request that is not. A replayed old request reads as a skew."""
        get = headers.get  # type: ignore[attr-defined]
        stamp, signature, node = get(TIMESTAMP_HEADER), get(SIGNATURE_HEADER), get(NODE_HEADER)
        if not stamp or not signature or not node or not stamp.isdigit():
            return None
        if not self._authentic(method, path, body, int(stamp), node, signature, now_ns):
            return None
        return int(stamp) - now_ns

    def _authentic(
        self, method: str, path: str, body: bytes, timestamp_ns: int, node: str, signature: str, now_ns: int
    ) -> bool:
        return any(
            hmac.compare_digest(sign(key, method, path, body, timestamp_ns, node), signature)
            for key in accepted_keys(self.secret, now_ns)
        )


# --- refusals that tell the sender why, with the refuser's clock -----------------------------

REFUSED_HEADER = "X-Chaos-Refused"  # the reason
REFUSED_BY_HEADER = "X-Chaos-Refused-By"  # the refusing node
CLOCK_HEADER = "X-Chaos-Clock"  # the refusing node's clock (Unix ns) when it refused
REFUSAL_SIGNATURE_HEADER = "X-Chaos-Refusal-Signature"


def _refusal_key(secret: bytes) -> bytes:
    """A key of its own for refusals: a refusal is signed over whatever request came in, so
    its MACs must not be usable as a request's, a frame's or a seal's."""
    return hmac.new(secret, b"chaos-train refusal v1", hashlib.sha256).digest()


def _refusal_data(reason: str, refuser: str, clock_ns: int, request_signature: str) -> bytes:
    return f"{reason}\n{refuser}\n{clock_ns}\n{request_signature}".encode()


def refusal_headers(
    secret: bytes, reason: str, refuser: str, now_ns: int, request_signature: str
) -> dict[str, str]:
    """Headers of a 401 answer: why, who refused and its clock (not secret), signed with the
    join secret over the refused request's signature, so the sender can trust and match it."""
    mac = hmac.new(_refusal_key(secret), _refusal_data(reason, refuser, now_ns, request_signature), "sha256")
    return {REFUSED_HEADER: reason, REFUSED_BY_HEADER: refuser, CLOCK_HEADER: str(now_ns),
            REFUSAL_SIGNATURE_HEADER: mac.hexdigest()}  # fmt: skip


@dataclass(frozen=True)
class Refusal:
    """A peer's signed answer refusing one of our requests."""

    reason: str
    refuser: str
    clock_ns: int


def read_refusal(
    secret: bytes, headers: dict[str, str] | object, request_signature: str, now_ns: int
) -> Refusal | None:
    """The refusal in a 401 answer's ``headers`` to our request signed ``request_signature``,
    when its signature checks under a key we accept now; None when absent or not authentic."""
    get = headers.get  # type: ignore[attr-defined]
    reason, refuser, clock, mac = (get(REFUSED_HEADER), get(REFUSED_BY_HEADER), get(CLOCK_HEADER),
                                   get(REFUSAL_SIGNATURE_HEADER))  # fmt: skip
    if not reason or not refuser or not clock or not mac or not clock.isdigit():
        return None
    data = _refusal_data(reason, refuser, int(clock), request_signature)
    for key in accepted_keys(secret, now_ns):
        if hmac.compare_digest(hmac.new(_refusal_key(key), data, "sha256").hexdigest(), mac):
            return Refusal(reason, refuser, int(clock))
    return None


FRAME_MAC_BYTES = 32


def frame_mac_valid(
    secret: bytes, mac: bytes, node: str, nonce: str, seq: int, body: bytes, now_ns: int
) -> bool:
    """Whether ``mac`` is the frame's MAC under any key valid now."""
    return any(
        hmac.compare_digest(mac, frame_mac(key, node, nonce, seq, body))
        for key in accepted_keys(secret, now_ns)
    )


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
    (``<timestamp>.<signature>``, and ``.<party>.<party signature>`` in a multi-party job):
    the relay can neither forge, alter nor redirect it."""
    headers = signed_headers(secret, RELAY_METHOD, f"/relay/{to}", inner, now_ns, origin)
    seal = f"{now_ns}.{headers[SIGNATURE_HEADER]}"
    if PARTY_HEADER in headers:
        seal += f".{headers[PARTY_HEADER]}.{headers[PARTY_SIGNATURE_HEADER]}"
    return seal


def check_relay_seal(
    verifier: Verifier, seal: str, origin: str, to: str, inner: bytes, now_ns: int
) -> str | None:
    """None when ``seal`` is ``origin``'s for ``inner`` to ``to``, fresh and not seen before;
    else the reason (as :meth:`Verifier.check`)."""
    stamp, _, rest = seal.partition(".")
    signature, _, rest = rest.partition(".")
    party, _, party_signature = rest.partition(".")
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature, NODE_HEADER: origin,
               PARTY_HEADER: party, PARTY_SIGNATURE_HEADER: party_signature}  # fmt: skip
    return verifier.check(RELAY_METHOD, f"/relay/{to}", inner, headers, now_ns)
