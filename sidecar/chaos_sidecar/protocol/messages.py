"""Membership messages and their JSON encoding.

Envelope: ``{"v": 1, "kind": str, "from": str, "epoch": int, "body": {...}}`` where ``epoch``
is the sender's committed view epoch (used for fencing and catch-up). Bodies are small
frozen dataclasses; :func:`decode` validates every field and raises
:class:`ProtocolError` with a stable ``reason`` (``oversize``, ``malformed``, ``version``,
``unknown_kind``, ``bad_field``) instead of crashing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from chaos_sidecar.errors import ProtocolError, load_json

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_MEMBERS = 1024
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$")
_ADDRESS_MAX = 256
MAX_INCARNATION = 2**53  # the sidecar takes microseconds of the wall clock: later lives are larger

Ballot = tuple[int, str]  # (round, node id); round 0 belongs to the view's coordinator


@dataclass(frozen=True, slots=True)
class View:
    """A committed group membership: epoch, ordered members (rank order) and coordinator."""

    epoch: int
    members: tuple[str, ...]
    coordinator: str
    addresses: tuple[str, ...]  # aligned with members
    departed: tuple[str, ...] = ()  # recent graceful leavers, never re-admitted
    incarnations: tuple[int, ...] = ()
    """Aligned with members (empty: every member's is 0). A sidecar that comes back without
    its durable state is a new incarnation of its node id: it votes only once a view lists
    it with its own incarnation (see docs/membership.md)."""
    # member -> rank: lookups per member stay O(1) in a group of 1,000
    _rank: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rank", {m: i for i, m in enumerate(self.members)})

    @property
    def majority(self) -> int:
        return len(self.members) // 2 + 1

    def has(self, node: str) -> bool:
        return node in self._rank

    def address_of(self, node: str) -> str | None:
        index = self._rank.get(node)
        return None if index is None else self.addresses[index]

    def incarnation_of(self, node: str) -> int | None:
        """``node``'s incarnation in this view (None: not a member)."""
        index = self._rank.get(node)
        if index is None:
            return None
        return self.incarnations[index] if self.incarnations else 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epoch": self.epoch,
            "members": list(self.members),
            "coordinator": self.coordinator,
            "addresses": list(self.addresses),
            "departed": list(self.departed),
        }
        if any(self.incarnations):
            out["incarnations"] = list(self.incarnations)
        return out


# --- bodies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    kind: ClassVar[str] = "heartbeat"
    hears: tuple[str, ...]  # members the sender heard from recently, directly or relayed
    topology_version: tuple[int, int] = (0, 0)
    down_links: tuple[tuple[str, str], ...] = ()
    direct: tuple[str, ...] | None = None  # of those, the ones heard directly (None: all of them)


@dataclass(frozen=True, slots=True)
class Join:
    kind: ClassVar[str] = "join"
    node: str  # the joiner (a member may forward a joiner's request)
    address: str
    incarnation: int = 0  # the joiner's; another than its view's makes a member rejoin


@dataclass(frozen=True, slots=True)
class Leave:
    kind: ClassVar[str] = "leave"
    node: str


@dataclass(frozen=True, slots=True)
class Suspect:
    """The sender lost contact with ``node`` (its failure detector fired)."""

    kind: ClassVar[str] = "suspect"
    node: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The sender's monitor saw its link to ``node`` fail (node itself may be fine)."""

    kind: ClassVar[str] = "link_down"
    node: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The sender hears ``node`` again."""

    kind: ClassVar[str] = "link_up"
    node: str


@dataclass(frozen=True, slots=True)
class Prepare:
    kind: ClassVar[str] = "prepare"
    target: int  # the epoch being decided
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Promise:
    kind: ClassVar[str] = "promise"
    target: int
    ballot: Ballot
    accepted_ballot: Ballot | None
    accepted_view: View | None


@dataclass(frozen=True, slots=True)
class Accept:
    kind: ClassVar[str] = "accept"
    target: int
    ballot: Ballot
    view: View


@dataclass(frozen=True, slots=True)
class Accepted:
    kind: ClassVar[str] = "accepted"
    target: int
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Nack:
    kind: ClassVar[str] = "nack"
    target: int
    promised: Ballot


@dataclass(frozen=True, slots=True)
class Commit:
    kind: ClassVar[str] = "commit"
    view: View


@dataclass(frozen=True, slots=True)
class ViewRequest:
    kind: ClassVar[str] = "view_request"


@dataclass(frozen=True, slots=True)
class Relay:
    """``inner`` (from its origin, ``inner.sender``) for member ``to``, passed on by a member
    that reaches both when they cannot reach each other directly. ``seal`` authenticates the
    origin end to end (the origin's adapter fills it in, ``to``'s adapter checks it; see
    :func:`chaos_sidecar.security.relay_seal`); the relay cannot forge or alter ``inner``."""

    kind: ClassVar[str] = "relay"
    to: str
    inner: Message
    seal: str = ""


Body = (
    Heartbeat
    | Join
    | Leave
    | Suspect
    | LinkDown
    | LinkUp
    | Prepare
    | Promise
    | Accept
    | Accepted
    | Nack
    | Commit
    | ViewRequest
    | Relay
)


@dataclass(frozen=True, slots=True)
class Message:
    sender: str
    epoch: int
    body: Body

    @property
    def kind(self) -> str:
        return self.body.kind


# --- encoding -------------------------------------------------------------------------------


def _ballot_json(ballot: Ballot | None) -> list[Any] | None:
    return None if ballot is None else [ballot[0], ballot[1]]


def _body_json(body: Body) -> dict[str, Any]:
    match body:
        case Heartbeat():
            out: dict[str, Any] = {
                "hears": list(body.hears),
                "topology_version": list(body.topology_version),
                "down_links": [list(link) for link in body.down_links],
            }
            if body.direct is not None:
                out["direct"] = list(body.direct)
            return out
        case Join():
            join: dict[str, Any] = {"node": body.node, "address": body.address}
            if body.incarnation:
                join["incarnation"] = body.incarnation
            return join
        case Leave() | Suspect() | LinkDown() | LinkUp():
            return {"node": body.node}
        case Prepare() | Accepted():
            return {"target": body.target, "ballot": _ballot_json(body.ballot)}
        case Promise():
            return {
                "target": body.target,
                "ballot": _ballot_json(body.ballot),
                "accepted_ballot": _ballot_json(body.accepted_ballot),
                "accepted_view": None if body.accepted_view is None else body.accepted_view.to_json(),
            }
        case Accept():
            return {
                "target": body.target,
                "ballot": _ballot_json(body.ballot),
                "view": body.view.to_json(),
            }
        case Nack():
            return {"target": body.target, "promised": _ballot_json(body.promised)}
        case Commit():
            return {"view": body.view.to_json()}
        case ViewRequest():
            return {}
        case Relay():
            return {"to": body.to, "inner": _envelope(body.inner), "seal": body.seal}
    raise TypeError(f"not a message body: {body!r}")  # pragma: no cover


def _envelope(message: Message) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "kind": message.kind,
        "from": message.sender,
        "epoch": message.epoch,
        "body": _body_json(message.body),
    }


def encode(message: Message) -> bytes:
    """Deterministic: ``encode(decode(encode(m))) == encode(m)``, so a relayed message's seal
    can be checked over its re-encoding."""
    return json.dumps(_envelope(message), separators=(",", ":")).encode()


# --- decoding -------------------------------------------------------------------------------


def _bad(field: str, detail: str) -> ProtocolError:
    return ProtocolError("bad_field", f"{field}: {detail}")


def _int(obj: dict[str, Any], key: str, where: str, *, minimum: int = 0) -> int:
    value = obj.get(key)
    if type(value) is not int or value < minimum or value > 2**53:
        raise _bad(f"{where}.{key}", f"expected an integer >= {minimum}")
    return value


def node_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise _bad(where, "expected a node id (1-63 of [A-Za-z0-9._:-])")
    return value


def _address(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > _ADDRESS_MAX:
        raise _bad(where, f"expected an address string of at most {_ADDRESS_MAX} characters")
    return value


def _ids(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise _bad(where, f"expected a list of at most {MAX_MEMBERS} node ids")
    return tuple(node_id(item, f"{where}[{i}]") for i, item in enumerate(value))


def _ballot(value: Any, where: str, *, optional: bool = False) -> Ballot | None:
    if value is None and optional:
        return None
    if not (isinstance(value, list) and len(value) == 2 and type(value[0]) is int and value[0] >= 0):
        raise _bad(where, "expected a ballot [round >= 0, node id]")
    return (value[0], node_id(value[1], f"{where}[1]"))


def _view(value: Any, where: str) -> View:
    if not isinstance(value, dict):
        raise _bad(where, "expected an object")
    members = _ids(value.get("members"), f"{where}.members")
    if not members or len(set(members)) != len(members):
        raise _bad(f"{where}.members", "expected distinct node ids, at least one")
    addresses = value.get("addresses")
    if not isinstance(addresses, list) or len(addresses) != len(members):
        raise _bad(f"{where}.addresses", "expected one address per member")
    coordinator = node_id(value.get("coordinator"), f"{where}.coordinator")
    if coordinator not in members:
        raise _bad(f"{where}.coordinator", "must be a member")
    incarnations = value.get("incarnations", [])
    if not isinstance(incarnations, list) or len(incarnations) not in (0, len(members)):
        raise _bad(f"{where}.incarnations", "expected one incarnation per member")
    for i, incarnation in enumerate(incarnations):
        if type(incarnation) is not int or not 0 <= incarnation <= MAX_INCARNATION:
            raise _bad(f"{where}.incarnations[{i}]", f"expected an integer in 0..{MAX_INCARNATION}")
    return View(
        epoch=_int(value, "epoch", where, minimum=1),
        members=members,
        coordinator=coordinator,
        addresses=tuple(_address(a, f"{where}.addresses[{i}]") for i, a in enumerate(addresses)),
        departed=_ids(value.get("departed", []), f"{where}.departed"),
        incarnations=tuple(incarnations) if any(incarnations) else (),
    )


def view_from_json(value: Any, where: str) -> View:
    """A view as :meth:`View.to_json` wrote it, validated (raises :class:`ProtocolError`)."""
    return _view(value, where)


def ballot_from_json(value: Any, where: str) -> Ballot:
    """A ballot ``[round, node id]``, validated (raises :class:`ProtocolError`)."""
    ballot = _ballot(value, where)
    assert ballot is not None
    return ballot


def _parse_body(kind: str, body: dict[str, Any]) -> Body:
    where = "body"
    match kind:
        case "heartbeat":
            version = body.get("topology_version", [0, 0])
            if not (
                isinstance(version, list)
                and len(version) == 2
                and all(type(x) is int and x >= 0 for x in version)
            ):
                raise _bad("body.topology_version", "expected [epoch, counter]")
            links = body.get("down_links", [])
            if not isinstance(links, list) or len(links) > MAX_MEMBERS:
                raise _bad("body.down_links", "expected a list of [a, b] pairs")
            parsed_links = []
            for i, link in enumerate(links):
                if not isinstance(link, list) or len(link) != 2:
                    raise _bad(f"body.down_links[{i}]", "expected [a, b]")
                parsed_links.append(
                    (
                        node_id(link[0], f"body.down_links[{i}][0]"),
                        node_id(link[1], f"body.down_links[{i}][1]"),
                    )
                )
            direct = body.get("direct")
            return Heartbeat(
                _ids(body.get("hears"), "body.hears"),
                (version[0], version[1]),
                tuple(parsed_links),
                None if direct is None else _ids(direct, "body.direct"),
            )
        case "join":
            incarnation = body.get("incarnation", 0)
            if type(incarnation) is not int or not 0 <= incarnation <= MAX_INCARNATION:
                raise _bad("body.incarnation", f"expected an integer in 0..{MAX_INCARNATION}")
            return Join(
                node_id(body.get("node"), "body.node"),
                _address(body.get("address"), "body.address"),
                incarnation,
            )
        case "leave":
            return Leave(node_id(body.get("node"), "body.node"))
        case "suspect":
            return Suspect(node_id(body.get("node"), "body.node"))
        case "link_down":
            return LinkDown(node_id(body.get("node"), "body.node"))
        case "link_up":
            return LinkUp(node_id(body.get("node"), "body.node"))
        case "prepare":
            return Prepare(_int(body, "target", where, minimum=1), _ballot(body.get("ballot"), "body.ballot"))
        case "promise":
            accepted_view = body.get("accepted_view")
            return Promise(
                _int(body, "target", where, minimum=1),
                _ballot(body.get("ballot"), "body.ballot"),
                _ballot(body.get("accepted_ballot"), "body.accepted_ballot", optional=True),
                None if accepted_view is None else _view(accepted_view, "body.accepted_view"),
            )
        case "accept":
            return Accept(
                _int(body, "target", where, minimum=1),
                _ballot(body.get("ballot"), "body.ballot"),
                _view(body.get("view"), "body.view"),
            )
        case "accepted":
            return Accepted(
                _int(body, "target", where, minimum=1), _ballot(body.get("ballot"), "body.ballot")
            )
        case "nack":
            return Nack(
                _int(body, "target", where, minimum=1),
                _ballot(body.get("promised"), "body.promised"),
            )
        case "commit":
            return Commit(_view(body.get("view"), "body.view"))
        case "view_request":
            return ViewRequest()
        case "relay":
            inner = _message(body.get("inner"), "body.inner")
            if isinstance(inner.body, Relay):
                raise _bad("body.inner", "a relayed message is not relayed again")
            seal = body.get("seal", "")
            if not isinstance(seal, str) or len(seal) > _ADDRESS_MAX:
                raise _bad("body.seal", f"expected a string of at most {_ADDRESS_MAX} characters")
            return Relay(node_id(body.get("to"), "body.to"), inner, seal)
    raise ProtocolError("unknown_kind", f"kind {kind!r} is not a membership message")


def decode(raw: bytes) -> Message:
    """Parse and validate one message; raises :class:`ProtocolError` on any defect."""
    return _message(load_json(raw, MAX_MESSAGE_BYTES, ProtocolError), "envelope")


def _message(payload: Any, where: str) -> Message:
    if not isinstance(payload, dict):
        raise ProtocolError("malformed", f"{where}: expected a JSON object")
    if payload.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("version", f"unsupported protocol version {payload.get('v')!r}")
    kind = payload.get("kind")
    if not isinstance(kind, str):
        raise ProtocolError("malformed", f"{where}: missing kind")
    body = payload.get("body")
    if not isinstance(body, dict):
        raise _bad(f"{where}.body" if where != "envelope" else "body", "expected an object")
    return Message(
        sender=node_id(payload.get("from"), "from" if where == "envelope" else f"{where}.from"),
        epoch=_int(payload, "epoch", where),
        body=_parse_body(kind, body),
    )
