"""The durable state's file format: what a sidecar must remember across a restart.

One JSON object, ``{"format": "chaos-sidecar-state", "v": 1, "sha256": ..., "state": {...}}``,
where ``sha256`` is the digest of the canonical encoding of ``state`` (sorted keys, no
spaces). Pure: bytes in, :class:`~chaos_sidecar.membership.machine.Durable` out. The file
comes from outside (a volume that may be damaged, truncated or someone else's), so
:func:`decode_state` checks everything and raises :class:`InputError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from chaos_sidecar.errors import InputError, ProtocolError, load_json
from chaos_sidecar.membership.machine import JOINING, LEFT, MAX_CONTACTS, MEMBER, REMOVED, STANDBY, Durable
from chaos_sidecar.protocol.messages import (
    MAX_INCARNATION,
    MAX_MESSAGE_BYTES,
    ballot_from_json,
    node_id,
    view_from_json,
)

FORMAT = "chaos-sidecar-state"
VERSION = 1
MAX_STATE_BYTES = 4 * MAX_MESSAGE_BYTES  # a view, an accepted view and the contacts
STATUSES = (MEMBER, JOINING, STANDBY, REMOVED, LEFT)


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def encode_state(state: Durable) -> bytes:
    body = {
        "node": state.node_id,
        "incarnation": state.incarnation,
        "status": state.status,
        "view": None if state.view is None else state.view.to_json(),
        "promised": None if state.promised is None else list(state.promised),
        "accepted": None
        if state.accepted is None
        else {"ballot": list(state.accepted[0]), "view": state.accepted[1].to_json()},
        "max_round": state.max_round,
        "fast_used": state.fast_used,
        "want_leave": state.want_leave,
        "contacts": [list(c) for c in state.contacts],
    }
    digest = hashlib.sha256(_canonical(body)).hexdigest()
    return _canonical({"format": FORMAT, "v": VERSION, "sha256": digest, "state": body}) + b"\n"


def _int(body: dict[str, Any], key: str, maximum: int = 2**53) -> int:
    value = body.get(key)
    if type(value) is not int or not 0 <= value <= maximum:
        raise InputError(f"state.{key}", f"expected an integer in 0..{maximum}")
    return value


def decode_state(raw: bytes, expected_node: str) -> Durable:
    """Parse and check a state file written by :func:`encode_state` for ``expected_node``."""
    outer = load_json(raw, MAX_STATE_BYTES, lambda _, text: InputError("state", text))
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise InputError("format", f"expected {FORMAT!r}")
    if outer.get("v") != VERSION:
        raise InputError("v", f"unsupported version {outer.get('v')!r} (this sidecar reads {VERSION})")
    body = outer.get("state")
    if not isinstance(body, dict):
        raise InputError("state", "expected an object")
    if outer.get("sha256") != hashlib.sha256(_canonical(body)).hexdigest():
        raise InputError("sha256", "does not match the state: the file is damaged")
    try:
        return _fields(body, expected_node)
    except ProtocolError as exc:  # a view or ballot inside failed the wire format's checks
        raise InputError(f"state.{exc.detail.split(':')[0]}", exc.detail) from None


def _fields(body: dict[str, Any], expected_node: str) -> Durable:
    node = node_id(body.get("node"), "node")
    if node != expected_node:
        raise InputError("state.node", f"the file belongs to {node!r}, not {expected_node!r}")
    status = body.get("status")
    if status not in STATUSES:
        raise InputError("state.status", f"expected one of {', '.join(STATUSES)}")
    view = None if body.get("view") is None else view_from_json(body["view"], "view")
    promised = None if body.get("promised") is None else ballot_from_json(body["promised"], "promised")
    accepted = None
    if body.get("accepted") is not None:
        raw_accepted = body["accepted"]
        if not isinstance(raw_accepted, dict):
            raise InputError("state.accepted", "expected {ballot, view}")
        accepted = (
            ballot_from_json(raw_accepted.get("ballot"), "accepted.ballot"),
            view_from_json(raw_accepted.get("view"), "accepted.view"),
        )
        if view is None or accepted[1].epoch != view.epoch + 1:
            raise InputError(
                "state.accepted", "an accepted view must be for the epoch after the committed one"
            )
    if status == MEMBER and (view is None or node not in view.members):
        raise InputError("state.status", "a member must be in its committed view")
    want_leave = body.get("want_leave")
    if not isinstance(want_leave, bool):
        raise InputError("state.want_leave", "expected true or false")
    contacts = body.get("contacts")
    if not isinstance(contacts, list) or len(contacts) > MAX_CONTACTS:
        raise InputError("state.contacts", f"expected a list of at most {MAX_CONTACTS} [id, address]")
    parsed = []
    for i, contact in enumerate(contacts):
        if not (isinstance(contact, list) and len(contact) == 2 and isinstance(contact[1], str)):
            raise InputError(f"state.contacts[{i}]", "expected [id, address]")
        if len(contact[1]) > 256:
            raise InputError(f"state.contacts[{i}]", "address longer than 256 characters")
        parsed.append((node_id(contact[0], f"contacts[{i}][0]"), contact[1]))
    return Durable(
        node_id=node,
        incarnation=_int(body, "incarnation", MAX_INCARNATION),
        status=status,
        view=view,
        promised=promised,
        accepted=accepted,
        max_round=_int(body, "max_round"),
        fast_used=_int(body, "fast_used"),
        want_leave=want_leave,
        contacts=tuple(parsed),
    )
