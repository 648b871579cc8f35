"""Beyond the basic model: several joiners at once, and re-planning after a source fails.

**Several joiners sharing the sources** (:func:`plan_joiners`). ``J`` joiners each need the
whole state, cut into the same ``K`` shards. A source sends one shard at a time whoever it
is for, so its upload capacity is shared in time: with ``N_u`` shards in all it finishes
at ``r_u + N_u c_u``, and every joiner is done when the last source is. That is the basic
model with ``J * K`` shards and the per-source caps multiplied by ``J`` (a source cannot
send one joiner the same shard twice), plus each joiner's own floor ``W / B_j``. We solve
it with the greedy solver, then deal each source's ``N_u`` shards to the joiners round
robin (sources in id order), so every joiner gets exactly ``K`` shards and the shards of
each source are spread evenly over the joiners. The makespan bound is exact for the
shared-upload model; what it ignores is a joiner's download cap *per moment* (it only
keeps ``W / B_j`` overall).

**Re-planning** (:func:`replan`). Mid-transfer the shard size is fixed (the cut is in the
manifest), so only the assignment changes: the missing shards go to the surviving sources
with ``K`` fixed, each survivor's ready time being when it finishes the work it already
has (``busy_until``). This is the fixed-``K`` inner problem of the basic model, solved
exactly by the same slot argument.

**Rebalancing while pulling** (:func:`steal`). The estimates a plan starts from can be far off:
a joiner probes its links while the group trains, so a link busy with gradients looks much
slower than it is once the members wait for the joiner. A source that has nothing left to
send takes shards from the tail of the queue of the source expected to finish last, as many
as make the two finish together at their current rates (measured in this pull where there is
a measurement). A source not yet measured in this pull takes at least one shard: that one
shard measures its link, so a source the estimates left out costs at most one shard's time
on its real link, and a good one is found and used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from chaos_sidecar.errors import InputError
from chaos_sidecar.planning import greedy
from chaos_sidecar.planning.model import Instance, Plan, Source, canonical_assignment, makespan


def plan_joiners(
    instance: Instance, joiners: list[str], download_Bps: dict[str, float] | None = None
) -> Plan:
    """One plan for several joiners; ``extra["per_joiner"]`` maps joiner -> {source: shards}."""
    if not joiners:
        raise InputError("joiners", "expected at least one joiner")
    if len(set(joiners)) != len(joiners):
        raise InputError("joiners", "duplicate joiner ids")
    count = len(joiners)
    floors = [instance.state_bytes / b for b in (download_Bps or {}).values() if b]
    combined = Instance(
        state_bytes=instance.state_bytes * count,
        sources=tuple(
            replace(u, max_shards=None if u.max_shards is None else u.max_shards * count)
            for u in instance.sources
        ),
        download_Bps=None,
        # keep the shard size of K shards of one state: J*K shards of the J-fold state
        shard_counts=tuple(k * count for k in instance.shard_counts),
    )
    plan = greedy.solve(combined)
    per_joiner_shards = plan.shards // count
    floor_s = max([instance.download_floor_s, *floors])
    per_joiner: dict[str, dict[str, int]] = {j: {} for j in joiners}
    slot = 0
    for u in combined.sources:
        for _ in range(plan.assignment[u.id]):
            joiner = joiners[slot % count]
            per_joiner[joiner][u.id] = per_joiner[joiner].get(u.id, 0) + 1
            slot += 1
    return Plan(
        makespan_s=max(plan.makespan_s, floor_s),
        shards=per_joiner_shards,
        shard_bytes=instance.shard_bytes(per_joiner_shards),
        assignment=plan.assignment,
        solver="greedy-multi",
        solve_ms=plan.solve_ms,
        extra={"joiners": list(joiners), "per_joiner": per_joiner},
    )


def replan(
    sources: list[Source], missing: int, shard_bytes: int, busy_until: dict[str, float] | None = None
) -> dict[str, int]:
    """Assign ``missing`` shards of ``shard_bytes`` to the surviving ``sources``.

    ``busy_until[id]`` is when that survivor finishes the shards it is already sending
    (becomes its ready time). Returns source id -> shards, optimal for the makespan.
    """
    if missing <= 0:
        return {}
    if not sources:
        raise InputError("sources", "no surviving source to re-plan over")
    busy_until = busy_until or {}
    survivors = tuple(
        sorted(
            (replace(u, ready_s=max(u.ready_s, busy_until.get(u.id, 0.0))) for u in sources),
            key=lambda u: u.id,
        )
    )
    # any state size works as long as ceil(W / missing) == shard_bytes
    instance = Instance(
        state_bytes=shard_bytes * missing, sources=survivors, download_Bps=None, shard_counts=(missing,)
    )
    if not instance.feasible_counts():
        raise InputError("sources[].max_shards", f"the survivors cannot hold {missing} more shards")
    plan = greedy.solve(instance)
    assignment = canonical_assignment(instance, missing, plan.makespan_s)
    assert makespan(instance, missing, assignment) <= plan.makespan_s * (1 + 1e-9)
    return {k: v for k, v in assignment.items() if v}


@dataclass(frozen=True, slots=True)
class Owing:
    """A source during a pull: its rate now, how many shards it still has queued (not yet
    requested, so a thief may take them) and the seconds it needs before it reaches them."""

    source: Source
    queued: int
    busy_s: float = 0.0

    def finish_s(self, shard_bytes: int, queued: int | None = None) -> float:
        left = self.queued if queued is None else queued
        return self.busy_s + left * shard_bytes / self.source.bandwidth_Bps


def steal(thief: Source, owing: list[Owing], shard_bytes: int, *, explore: bool) -> tuple[str, int] | None:
    """(victim id, shards) that idle ``thief`` should take from the tail of the victim's queue,
    or None when no take makes the pull finish sooner. The victim is the source expected to
    finish last; the take balances the two finishing times. ``explore``: the thief has not
    been measured in this pull, so it takes at least one shard when any source has one queued.
    """
    candidates = [o for o in owing if o.queued > 0 and o.source.id != thief.id]
    if not candidates:
        return None
    victim = max(candidates, key=lambda o: (o.finish_s(shard_bytes), o.queued, o.source.id))
    per_victim = shard_bytes / victim.source.bandwidth_Bps
    per_thief = shard_bytes / thief.bandwidth_Bps

    def makespan_after(k: int) -> float:
        thief_done = thief.overhead_s + k * per_thief if k else 0.0
        return max(victim.finish_s(shard_bytes, victim.queued - k), thief_done)

    balanced = (victim.finish_s(shard_bytes) - thief.overhead_s) / (per_victim + per_thief)
    options = {min(max(k, 0), victim.queued) for k in (int(balanced), int(balanced) + 1)}
    best = min(sorted(options), key=makespan_after)
    if best == 0 or makespan_after(best) >= victim.finish_s(shard_bytes):
        best = 1 if explore else 0
    return (victim.source.id, best) if best else None
