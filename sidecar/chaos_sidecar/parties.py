"""Parties of a multi-party job: who may speak for which node ids, and who may join.

A *party* is a set of nodes under one identity: an Ed25519 key pair the party makes itself
(``chaos-train party keygen``). The job's *admission policy* lists the parties: each one's
public keys with their validity windows (a key rotates by listing the new one beside the old
one for an overlap), the node ids it owns (a prefix or a list) and how many of its nodes the
group may hold. Every member enforces the policy on what it receives: a request signed by an
unknown party, with a key outside its window, or for a node id another party owns is refused
(:meth:`Policy.check_signature`); a join past a party's limit, or a leave of another party's
node, too (:func:`screen`). Pure: no I/O; times and bytes are passed in.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from chaos_sidecar.errors import InputError
from chaos_sidecar.protocol.messages import Join, Leave, Message, Relay
from chaos_sidecar.protocol.messages import node_id as check_node_id

POLICY_VERSION = 1
KEY_FILE_VERSION = 1
MAX_POLICY_BYTES = 256 * 1024
PARTY_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")
KEY_BYTES = 32  # an Ed25519 public key, or a private key's seed
SIGNATURE_BYTES = 64

# reasons a party check refuses, as counted in chaostrain_rejected_messages_total
UNAUTHENTICATED = "party_unauthenticated"  # no party or signature where the policy needs one
UNKNOWN = "party_unknown"  # the party, or the owner of a node id, is not in the policy
FOREIGN_NODE = "party_foreign_node"  # the party signs for a node id it does not own
KEY_NOT_YET_VALID = "party_key_not_yet_valid"
KEY_EXPIRED = "party_key_expired"
BAD_SIGNATURE = "party_bad_signature"
FULL = "party_full"  # a join past the party's node limit
FOREIGN_LEAVE = "party_foreign_leave"  # a leave of a node another party owns
REASONS = (
    UNAUTHENTICATED,
    UNKNOWN,
    FOREIGN_NODE,
    KEY_NOT_YET_VALID,
    KEY_EXPIRED,
    BAD_SIGNATURE,
    FULL,
    FOREIGN_LEAVE,
)


def encode_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_key(text: object, field: str, size: int) -> bytes:
    if not isinstance(text, str):
        raise InputError(field, f"expected a base64 string of {size} bytes")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InputError(field, "not base64 (URL-safe alphabet)") from None
    if len(raw) != size:
        raise InputError(field, f"expected {size} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class PartyKey:
    """One public key of a party, valid from ``not_before`` to ``not_after`` (Unix seconds)."""

    public: bytes
    not_before: float = -math.inf
    not_after: float = math.inf

    def verifies(self, data: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    @functools.cached_property
    def _key(self) -> Ed25519PublicKey:  # loaded once: every signed request is checked with it
        return Ed25519PublicKey.from_public_bytes(self.public)


@dataclass(frozen=True)
class Party:
    name: str
    keys: tuple[PartyKey, ...]
    max_nodes: int
    prefix: str | None = None
    ids: frozenset[str] = frozenset()

    def owns(self, node: str) -> bool:
        return node in self.ids if self.prefix is None else node.startswith(self.prefix)


@dataclass(frozen=True)
class Policy:
    """The admission policy: the parties of the job, their keys, nodes and limits."""

    parties: tuple[Party, ...]

    def party(self, name: str) -> Party | None:
        return next((p for p in self.parties if p.name == name), None)

    def owner(self, node: str) -> Party | None:
        return next((p for p in self.parties if p.owns(node)), None)

    def check_signature(
        self, party_name: str | None, node: str, data: bytes, signature: str | None, now_s: float
    ) -> str | None:
        """None when ``signature`` is ``party_name``'s over ``data`` under a key valid at
        ``now_s`` and that party owns ``node``; else the reason."""
        if not party_name or not signature:
            return UNAUTHENTICATED
        party = self.party(party_name)
        if party is None:
            return UNKNOWN
        if not party.owns(node):
            return FOREIGN_NODE
        try:
            raw = decode_key(signature, "signature", SIGNATURE_BYTES)
        except InputError:
            return BAD_SIGNATURE
        valid = [k for k in party.keys if k.not_before <= now_s <= k.not_after]
        if any(k.verifies(data, raw) for k in valid):
            return None
        if not valid:
            return KEY_EXPIRED if all(now_s > k.not_after for k in party.keys) else KEY_NOT_YET_VALID
        return BAD_SIGNATURE


def check_own_key(signer: PartySigner, policy: Policy, node_id: str) -> None:
    """That ``policy`` lists ``signer``'s party and its public key, and the party owns
    ``node_id``; else :class:`InputError` naming the option to fix."""
    party = policy.party(signer.party)
    if party is None:
        raise InputError("--party-key", f"party {signer.party!r} is not in the admission policy")
    if key_window(policy, signer.party, signer.public_key) is None:
        raise InputError(
            "--party-key", f"its public key {signer.public_key} is not listed for {signer.party!r}"
        )
    if not party.owns(node_id):
        raise InputError("--node-id", f"{node_id!r} is not a node id that party {signer.party!r} owns")


def check_reload(
    current: PartySigner, signer: PartySigner, policy: Policy, node_id: str, now_s: float
) -> None:
    """That a changed key file and policy may replace the pair in force (``current`` signs now),
    without a restart: they match (:func:`check_own_key`), the party is the same, and the key
    is valid now on this node's clock (peers would refuse it otherwise); else
    :class:`InputError`, and the pair in force stays."""
    check_own_key(signer, policy, node_id)
    if signer.party != current.party:
        raise InputError(
            "--party-key",
            f"its party is {signer.party!r}, this node's {current.party!r}: changing party needs a restart",
        )
    check_key_window(signer, policy, now_s)


def check_key_window(signer: PartySigner, policy: Policy, now_s: float) -> None:
    """That ``signer``'s key (listed in ``policy``) is valid at ``now_s``, this node's clock:
    peers refuse it outside its window (on their clocks); else :class:`InputError`."""
    not_before, not_after = key_window(policy, signer.party, signer.public_key)  # type: ignore[misc]
    if now_s < not_before:
        raise KeyNotYetValid("--party-key", f"its key {signer.public_key} is not valid before "
                             f"{utc_text(not_before)} on this node's clock")  # fmt: skip
    if now_s > not_after:
        raise InputError("--party-key", f"its key {signer.public_key} expired at {utc_text(not_after)} "
                         "on this node's clock")  # fmt: skip


class KeyNotYetValid(InputError):
    """A key whose window has not begun: time lifts this refusal."""


def utc_text(unix_s: float) -> str:
    """A time as RFC 3339 in UTC (``2027-01-31T00:00:00Z``), as the policy writes it; ``none``
    for a window without that edge."""
    if math.isinf(unix_s):
        return "none"
    return dt.datetime.fromtimestamp(round(unix_s), dt.UTC).isoformat().replace("+00:00", "Z")


def key_window(policy: Policy, party_name: str, public_key: str) -> tuple[float, float] | None:
    """(not_before, not_after) of ``party_name``'s key ``public_key`` in ``policy``, if listed."""
    party = policy.party(party_name)
    keys = party.keys if party is not None else ()
    return next(((k.not_before, k.not_after) for k in keys if encode_key(k.public) == public_key), None)


class PartySigner:
    """A party's private key, as one of its nodes holds it."""

    def __init__(self, party: str, seed: bytes) -> None:
        self.party = party
        self._key = Ed25519PrivateKey.from_private_bytes(seed)

    @property
    def public_key(self) -> str:
        return encode_key(self._key.public_key().public_bytes_raw())

    def sign(self, data: bytes) -> str:
        return encode_key(self._key.sign(data))


def new_key_file(party: str, seed: bytes) -> tuple[PartySigner, bytes]:
    """A party key file's contents for ``seed`` (32 random bytes), and its signer."""
    _party_name(party, "--party")
    signer = PartySigner(party, seed)
    text = {"version": KEY_FILE_VERSION, "party": party, "private_key": encode_key(seed),
            "public_key": signer.public_key}  # fmt: skip
    return signer, (json.dumps(text, indent=2) + "\n").encode()


def parse_key_file(raw: bytes, field: str) -> PartySigner:
    """A party key file (``chaos-train party keygen``): ``{"version", "party", "private_key"}``."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(field, f"not a party key file (JSON): {exc}") from None
    if not isinstance(data, dict) or data.get("version") != KEY_FILE_VERSION:
        raise InputError(f"{field}.version", f"expected {KEY_FILE_VERSION}")
    party = _party_name(data.get("party"), f"{field}.party")
    seed = decode_key(data.get("private_key"), f"{field}.private_key", KEY_BYTES)
    return PartySigner(party, seed)


# --- the policy file --------------------------------------------------------------------------


def parse_policy(raw: bytes, field: str = "policy") -> Policy:
    """The admission policy in ``raw`` (YAML or JSON), every field checked; a defect raises
    :class:`InputError` naming it, e.g. ``policy.parties[1].keys[0].not_after``."""
    if len(raw) > MAX_POLICY_BYTES:
        raise InputError(field, f"{len(raw)} bytes, more than {MAX_POLICY_BYTES}")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InputError(field, f"does not parse as YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(field, "expected a mapping with version and parties")
    _no_unknown(data, {"version", "parties"}, field)
    if data.get("version") != POLICY_VERSION:
        raise InputError(f"{field}.version", f"expected {POLICY_VERSION}")
    items = data.get("parties")
    if not isinstance(items, list) or not items:
        raise InputError(f"{field}.parties", "expected a non-empty list")
    parties: list[Party] = []
    for i, item in enumerate(items):
        party = _parse_party(item, f"{field}.parties[{i}]")
        for other in parties:
            if other.name == party.name:
                raise InputError(f"{field}.parties[{i}].name", f"{party.name!r} is listed twice")
            clash = _overlap(other, party)
            if clash:
                raise InputError(f"{field}.parties[{i}].nodes", f"{clash} is owned by {other.name!r} as well")
        parties.append(party)
    return Policy(tuple(parties))


def _parse_party(item: object, field: str) -> Party:
    if not isinstance(item, dict):
        raise InputError(field, "expected a mapping")
    _no_unknown(item, {"name", "keys", "nodes", "max_nodes"}, field)
    name = _party_name(item.get("name"), f"{field}.name")
    max_nodes = item.get("max_nodes")
    if not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or not 1 <= max_nodes <= 10_000:
        raise InputError(f"{field}.max_nodes", "expected an integer from 1 to 10000")
    keys = item.get("keys")
    if not isinstance(keys, list) or not keys:
        raise InputError(f"{field}.keys", "expected a non-empty list")
    parsed = tuple(_parse_key(k, f"{field}.keys[{j}]") for j, k in enumerate(keys))
    nodes = item.get("nodes")
    if not isinstance(nodes, dict) or len(nodes) != 1 or not {"prefix", "ids"} & nodes.keys():
        raise InputError(f"{field}.nodes", "expected exactly one of {prefix: ...} or {ids: [...]}")
    if "prefix" in nodes:
        prefix = nodes["prefix"]
        if not isinstance(prefix, str) or not prefix:
            raise InputError(f"{field}.nodes.prefix", "expected a non-empty string")
        _node(prefix, f"{field}.nodes.prefix")
        return Party(name, parsed, max_nodes, prefix=prefix)
    ids = nodes["ids"]
    if not isinstance(ids, list) or not ids:
        raise InputError(f"{field}.nodes.ids", "expected a non-empty list of node ids")
    checked = [_node(n, f"{field}.nodes.ids[{j}]") for j, n in enumerate(ids)]
    return Party(name, parsed, max_nodes, ids=frozenset(checked))


def _parse_key(item: object, field: str) -> PartyKey:
    if not isinstance(item, dict):
        raise InputError(field, "expected a mapping with public_key")
    _no_unknown(item, {"public_key", "not_before", "not_after"}, field)
    public = decode_key(item.get("public_key"), f"{field}.public_key", KEY_BYTES)
    try:
        Ed25519PublicKey.from_public_bytes(public)
    except ValueError as exc:
        raise InputError(f"{field}.public_key", f"not an Ed25519 public key: {exc}") from None
    not_before = _time(item.get("not_before"), f"{field}.not_before", -math.inf)
    not_after = _time(item.get("not_after"), f"{field}.not_after", math.inf)
    if not_before >= not_after:
        raise InputError(f"{field}.not_after", "must be later than not_before")
    return PartyKey(public, not_before, not_after)


def _time(value: object, field: str, default: float) -> float:
    """An RFC 3339 time with its offset (YAML reads an unquoted one as a datetime) -> Unix s."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise InputError(field, f"not an RFC 3339 time: {value!r}") from None
    if not isinstance(value, dt.datetime):
        raise InputError(field, "expected a time such as 2027-01-31T00:00:00Z")
    if value.tzinfo is None:
        raise InputError(field, "give the time's offset (Z for UTC): clocks of two sites differ in zone")
    return value.timestamp()


def _party_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not PARTY_NAME.fullmatch(value):
        raise InputError(field, "expected 1-32 characters a-z, 0-9 and '-', not starting or ending with '-'")
    return value


def _node(value: object, field: str) -> str:
    try:
        return check_node_id(value, field)
    except Exception as exc:  # ProtocolError: the id rules of the wire format
        raise InputError(field, getattr(exc, "detail", str(exc))) from None


def _no_unknown(data: dict[str, Any], known: set[str], field: str) -> None:
    unknown = sorted(str(k) for k in data.keys() - known)
    if unknown:
        raise InputError(f"{field}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")


def _overlap(a: Party, b: Party) -> str | None:
    """A node id (or prefix) both parties would own."""
    if a.prefix is not None and b.prefix is not None:
        if a.prefix.startswith(b.prefix) or b.prefix.startswith(a.prefix):
            return f"prefix {min(a.prefix, b.prefix, key=len)!r}"
        return None
    for node in sorted(a.ids | b.ids):
        if a.owns(node) and b.owns(node):
            return f"node {node!r}"
    return None


# --- admission ------------------------------------------------------------------------------


def admit_join(policy: Policy, node: str, members: frozenset[str], pending: frozenset[str]) -> str | None:
    """None when ``node`` may join a group of ``members`` while ``pending`` joins are under
    way: its owner is in the policy and holds fewer than ``max_nodes`` of the others."""
    party = policy.owner(node)
    if party is None:
        return UNKNOWN
    if node in members:
        return None  # a member coming back as a new incarnation takes no new place
    held = sum(1 for n in members | pending if n != node and party.owns(n))
    return FULL if held >= party.max_nodes else None


def may_remove(policy: Policy, sender: str, node: str) -> str | None:
    """None when ``sender`` may ask for ``node`` to leave: both are of the same party."""
    party = policy.owner(sender)
    return None if party is not None and party.owns(node) else FOREIGN_LEAVE


def screen(policy: Policy, message: Message, members: frozenset[str], pending: frozenset[str]) -> str | None:
    """What the policy says about a membership message before the state machine sees it:
    None to let it through, else the reason to refuse it. A relayed message is screened as
    its origin's."""
    body = message.body
    if isinstance(body, Relay):
        return screen(policy, body.inner, members, pending)
    if isinstance(body, Join):
        return admit_join(policy, body.node, members, pending)
    if isinstance(body, Leave):
        return may_remove(policy, message.sender, body.node)
    return None
