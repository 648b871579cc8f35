"""Planning instances and plans, and the JSON contract for them.

Basic model (the contract of ``chaos-train plan``): the joiner needs ``W`` bytes cut into
``K`` equal shards of ``s = ceil(W / K)`` bytes, ``K`` taken from ``shard_counts``. Source
``u`` becomes ready at ``r_u``, then sends its ``n_u`` shards one after another over a link
of ``b_u`` bytes/s with ``l_u`` seconds of overhead per shard, so it finishes at
``r_u + n_u * (l_u + s / b_u)`` (a source sending nothing finishes at 0). The joiner
downloads at most ``B`` bytes/s. Minimise ``max(max_u finish_u, W / B)`` over ``K`` and
integers ``0 <= n_u <= m_u`` with ``sum n_u = K``. Ties: fewer shards first, then the
assignment that is lexicographically largest in source-id order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from chaos_sidecar.errors import InputError

DEFAULT_SHARD_COUNTS = tuple(2**i for i in range(13))  # 1 .. 4096
MAX_SHARD_COUNT = 1 << 20
REL_TOL = 1e-12  # makespans this close are ties when choosing K
TIE_TOL = 1e-9  # a shard finishing this close after the deadline still meets it (float slop)


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    bandwidth_Bps: float
    overhead_s: float = 0.0
    ready_s: float = 0.0
    max_shards: int | None = None

    def shard_time(self, shard_bytes: int) -> float:
        """Seconds this source spends per shard of ``shard_bytes``."""
        return self.overhead_s + shard_bytes / self.bandwidth_Bps


@dataclass(frozen=True, slots=True)
class Instance:
    state_bytes: int
    sources: tuple[Source, ...]  # sorted by id
    download_Bps: float | None = None
    shard_counts: tuple[int, ...] = DEFAULT_SHARD_COUNTS

    def shard_bytes(self, shards: int) -> int:
        return -(-self.state_bytes // shards)

    @property
    def download_floor_s(self) -> float:
        """W / B, the joiner's own download limit (0 without B)."""
        return 0.0 if self.download_Bps is None else self.state_bytes / self.download_Bps

    def cap(self, source: Source, shards: int) -> int:
        return shards if source.max_shards is None else min(source.max_shards, shards)

    def feasible_counts(self) -> tuple[int, ...]:
        return tuple(k for k in self.shard_counts if sum(self.cap(u, k) for u in self.sources) >= k)


@dataclass(frozen=True, slots=True)
class Plan:
    makespan_s: float
    shards: int
    shard_bytes: int
    assignment: dict[str, int]
    solver: str
    solve_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "makespan_s": self.makespan_s,
            "shards": self.shards,
            "shard_bytes": self.shard_bytes,
            "assignment": dict(self.assignment),
            "solver": self.solver,
            "solve_ms": round(self.solve_ms, 3),
            **self.extra,
        }


def finish_time(source: Source, shards: int, shard_bytes: int) -> float:
    return 0.0 if shards == 0 else source.ready_s + shards * source.shard_time(shard_bytes)


def makespan(instance: Instance, shards: int, assignment: dict[str, int]) -> float:
    size = instance.shard_bytes(shards)
    longest = max((finish_time(u, assignment.get(u.id, 0), size) for u in instance.sources), default=0.0)
    return max(longest, instance.download_floor_s)


def capacity_within(source: Source, limit: int, shard_bytes: int, deadline: float) -> int:
    """Most shards (<= ``limit``) ``source`` can finish by ``deadline`` (float-safe)."""
    per = source.shard_time(shard_bytes)
    slack = deadline - source.ready_s
    if slack < 0:
        return 0
    room = deadline * (1 + TIE_TOL)
    n = min(limit, math.floor(slack / per + 1e-9)) if per > 0 else limit
    while n > 0 and source.ready_s + n * per > room:
        n -= 1
    return max(n, 0)


def canonical_assignment(instance: Instance, shards: int, deadline: float) -> dict[str, int]:
    """The lexicographically largest assignment (in source-id order) finishing by ``deadline``.

    Both solvers end with it, so equal makespans give identical plans.
    """
    size = instance.shard_bytes(shards)
    left = shards
    assignment = {}
    for u in instance.sources:
        n = min(left, capacity_within(u, instance.cap(u, shards), size, deadline))
        assignment[u.id] = n
        left -= n
    if left:
        raise ValueError(f"no assignment of {shards} shards finishes by {deadline}")
    return assignment


def canonical_plan(instance: Instance, shards: int, makespan_s: float, solver: str, seconds: float) -> Plan:
    """The plan both solvers report for an optimal (shards, makespan): canonical assignment,
    makespan recomputed from it."""
    assignment = canonical_assignment(instance, shards, makespan_s)
    return Plan(
        makespan_s=makespan(instance, shards, assignment),
        shards=shards,
        shard_bytes=instance.shard_bytes(shards),
        assignment=assignment,
        solver=solver,
        solve_ms=seconds * 1000,
    )


# --- parsing ---------------------------------------------------------------------------------


def _number(
    obj: dict[str, Any], key: str, where: str, *, positive: bool, optional: bool = False
) -> float | None:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise InputError(f"{where}{key}", "is required")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}{key}", f"expected a number, got {value!r}")
    if positive and value <= 0:
        raise InputError(f"{where}{key}", f"must be > 0, got {value}")
    if not positive and value < 0:
        raise InputError(f"{where}{key}", f"must be >= 0, got {value}")
    return float(value)


def parse_instance(data: Any) -> Instance:
    """Validate instance JSON; raises :class:`InputError` naming the offending field."""
    if not isinstance(data, dict):
        raise InputError("instance", "expected a JSON object")
    unknown = set(data) - {"state_bytes", "joiner", "sources", "shard_counts"}
    if unknown:
        raise InputError(sorted(unknown)[0], "unknown field")
    state_bytes = data.get("state_bytes")
    if isinstance(state_bytes, bool) or not isinstance(state_bytes, int) or state_bytes <= 0:
        raise InputError("state_bytes", f"expected a positive integer, got {state_bytes!r}")
    joiner = data.get("joiner", {})
    if joiner is None:
        joiner = {}
    if not isinstance(joiner, dict):
        raise InputError("joiner", "expected an object")
    download = _number(joiner, "download_Bps", "joiner.", positive=True, optional=True)
    raw_sources = data.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise InputError("sources", "expected a non-empty list")
    sources = []
    seen = set()
    for i, raw in enumerate(raw_sources):
        where = f"sources[{i}]."
        if not isinstance(raw, dict):
            raise InputError(f"sources[{i}]", "expected an object")
        sid = raw.get("id")
        if not isinstance(sid, str) or not sid:
            raise InputError(f"{where}id", "expected a non-empty string")
        if sid in seen:
            raise InputError(f"{where}id", f"duplicate source id {sid!r}")
        seen.add(sid)
        max_shards = raw.get("max_shards")
        if max_shards is not None and (
            isinstance(max_shards, bool) or not isinstance(max_shards, int) or max_shards < 0
        ):
            raise InputError(f"{where}max_shards", f"expected an integer >= 0 or null, got {max_shards!r}")
        sources.append(
            Source(
                id=sid,
                bandwidth_Bps=_number(raw, "bandwidth_Bps", where, positive=True),  # type: ignore[arg-type]
                overhead_s=_number(raw, "overhead_s", where, positive=False, optional=True) or 0.0,
                ready_s=_number(raw, "ready_s", where, positive=False, optional=True) or 0.0,
                max_shards=max_shards,
            )
        )
    counts = data.get("shard_counts", list(DEFAULT_SHARD_COUNTS))
    if not isinstance(counts, list) or not counts:
        raise InputError("shard_counts", "expected a non-empty list of positive integers")
    for i, k in enumerate(counts):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SHARD_COUNT:
            raise InputError(f"shard_counts[{i}]", f"expected an integer in 1..{MAX_SHARD_COUNT}, got {k!r}")
    instance = Instance(
        state_bytes=state_bytes,
        sources=tuple(sorted(sources, key=lambda u: u.id)),
        download_Bps=download,
        shard_counts=tuple(sorted(set(counts))),
    )
    if not instance.feasible_counts():
        total = sum(u.max_shards or 0 for u in instance.sources)
        raise InputError(
            "sources[].max_shards",
            f"the caps hold {total} shards in all, "
            f"fewer than any shard count in {list(instance.shard_counts)}",
        )
    return instance
