"""The contract between a trainer and its own sidecar (the local API), and the rendezvous
entries sidecars hand each other for their trainers. Imported by both sides, no I/O.

Trainers meet per view epoch in a store hosted by the view's first member's trainer: that
trainer publishes where its store listens (:class:`RendezvousEntry`) to its sidecar; any
other member's trainer asks its own sidecar, which asks the host's sidecar over the
authenticated peer API. The entry names the epoch and round it is for, so a trainer never
meets a store of another epoch (fencing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chaos_sidecar.errors import InputError, ProtocolError
from chaos_sidecar.protocol.messages import View, view_from_json

TRAINER_HEADER = "X-Chaos-Trainer"  # set by the trainer SDK: only its calls hold its lease

LOCAL_PREFIX = "/local/"  # every local route: loopback only, and the trainer's calls hold its lease
VIEW = "/local/view"
WAIT_VIEW = "/local/wait-view"
REPORT = "/local/report"
JOIN = "/local/join"
LEAVE = "/local/leave"
PULL = "/local/pull"
LINKS = "/local/links"
FAULTS = "/local/faults"
RENDEZVOUS = "/local/rendezvous"  # POST: publish this trainer's store; GET: look up a host's
COLLECTIVE = "/local/collective"  # GET ?members=a,b: how the view's collectives cross parties
PEER_RENDEZVOUS = "/v1/rendezvous"  # peer API: this sidecar's trainer's entry

MAX_HOST_CHARS = 253  # a DNS name at most
KEEP_RENDEZVOUS_EPOCHS = 8  # a sidecar remembers its trainer's stores for this many epochs


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the view calls (``VIEW``, ``WAIT_VIEW``) answer, as a trainer reads it: its node,
    the address peers reach it at (its trainer binds to that host), its membership status
    and the view it holds (None before it has one)."""

    node: str
    address: str
    status: str
    view: View | None

    @property
    def epoch(self) -> int:
        """The view's epoch; 0 before the first view."""
        return self.view.epoch if self.view is not None else 0

    @classmethod
    def from_json(cls, payload: Any) -> NodeView:
        if not isinstance(payload, dict):
            raise InputError("view", "expected an object")
        for key in ("node", "address", "status"):
            if not isinstance(payload.get(key), str):
                raise InputError(f"view.{key}", f"expected a string, got {payload.get(key)!r}")
        try:
            view = None if payload.get("view") is None else view_from_json(payload["view"], "view.view")
        except ProtocolError as exc:
            raise InputError("view", exc.detail) from None
        return cls(payload["node"], payload["address"], payload["status"], view)


def _int(payload: dict[str, Any], key: str, minimum: int, maximum: int | None = None) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(key, f"expected an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise InputError(key, f"expected an integer <= {maximum}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class RendezvousEntry:
    """Where the store of one epoch's rendezvous round listens."""

    epoch: int
    round: int
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "round": self.round, "host": self.host, "port": self.port}

    @classmethod
    def from_json(cls, payload: object) -> RendezvousEntry:
        if not isinstance(payload, dict):
            raise InputError("rendezvous", "expected an object")
        host = payload.get("host")
        if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_CHARS or any(c.isspace() for c in host):
            raise InputError("host", f"expected a host name or address, got {host!r}")
        return cls(
            epoch=_int(payload, "epoch", 0),
            round=_int(payload, "round", 0),
            host=host,
            port=_int(payload, "port", 1, 65535),
        )


@dataclass(frozen=True, slots=True)
class TrainerStatus:
    """What a sidecar tells peers about its trainer: the store it hosts for ``epoch`` (if
    any), and the step it finished the job at (None while it trains)."""

    entry: RendezvousEntry | None
    finished_step: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "rendezvous": None if self.entry is None else self.entry.to_json(),
            "finished_step": self.finished_step,
        }

    @classmethod
    def from_json(cls, payload: object) -> TrainerStatus:
        if not isinstance(payload, dict):
            raise InputError("status", "expected an object")
        raw = payload.get("rendezvous")
        finished = payload.get("finished_step")
        if finished is not None:
            finished = _int(payload, "finished_step", 0)
        return cls(None if raw is None else RendezvousEntry.from_json(raw), finished)


def parse_report(payload: object) -> tuple[int | None, float, int | None]:
    """A trainer's progress report: (step, idle seconds, finished step), each optional."""
    if not isinstance(payload, dict):
        raise InputError("report", "expected an object")
    step = None if payload.get("step") is None else _int(payload, "step", 0)
    finished = None if payload.get("finished_step") is None else _int(payload, "finished_step", 0)
    idle = payload.get("idle_s", 0.0)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 <= idle < 1e6:
        raise InputError("idle_s", f"expected seconds in [0, 1e6), got {idle!r}")
    return step, float(idle), finished


@dataclass(frozen=True, slots=True)
class CollectivePlan:
    """What ``COLLECTIVE`` answers for a view's members: the party of each when they belong to
    several (None: one party, or no admission policy), whether the owner allowed their
    collectives in clear text (``--allow-cleartext-collectives``), and otherwise the job's
    collective keys (chaos_sidecar.security.collective_keys), the one this node signs with first."""

    parties: tuple[str, ...] | None
    cleartext: bool = False
    keys: tuple[bytes, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "parties": None if self.parties is None else list(self.parties),
            "cleartext": self.cleartext,
            "keys": [k.hex() for k in self.keys],
        }

    @classmethod
    def from_json(cls, payload: object) -> CollectivePlan:
        if not isinstance(payload, dict):
            raise InputError("collective", "expected an object")
        parties, keys = payload.get("parties"), payload.get("keys", [])
        cleartext = payload.get("cleartext", False)
        if parties is not None and not (
            isinstance(parties, list) and all(isinstance(p, str) for p in parties)
        ):
            raise InputError("parties", f"expected a list of party names, got {parties!r}")
        if not isinstance(cleartext, bool):
            raise InputError("cleartext", f"expected true or false, got {cleartext!r}")
        if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) == 64 for k in keys):
            raise InputError("keys", "expected a list of 32-byte keys in hex")
        try:
            raw = tuple(bytes.fromhex(k) for k in keys)
        except ValueError:
            raise InputError("keys", "expected a list of 32-byte keys in hex") from None
        if parties is not None and not cleartext and not raw:
            raise InputError("keys", "several parties, no cleartext, and no collective key")
        return cls(None if parties is None else tuple(parties), cleartext, raw)
