"""An independent check of a plan against its instance (no solver code reused)."""

from __future__ import annotations

from chaos_sidecar.planning.model import Instance, Plan, makespan


def check_plan(instance: Instance, plan: Plan, *, rel_tol: float = 1e-9) -> list[str]:
    """Problems with ``plan`` (empty when valid); recomputes the makespan from scratch."""
    problems = []
    if plan.shards not in instance.shard_counts:
        problems.append(f"shards={plan.shards} is not one of shard_counts")
    if plan.shard_bytes != -(-instance.state_bytes // plan.shards):
        problems.append(f"shard_bytes={plan.shard_bytes} != ceil(W/K)")
    ids = {u.id for u in instance.sources}
    unknown = set(plan.assignment) - ids
    if unknown:
        problems.append(f"assignment names unknown sources {sorted(unknown)}")
    for u in instance.sources:
        n = plan.assignment.get(u.id, 0)
        if not isinstance(n, int) or n < 0:
            problems.append(f"{u.id}: {n!r} is not a shard count")
        elif u.max_shards is not None and n > u.max_shards:
            problems.append(f"{u.id}: {n} shards > max_shards {u.max_shards}")
    total = sum(plan.assignment.values())
    if total != plan.shards:
        problems.append(f"assignment sums to {total}, not {plan.shards}")
    if not problems:
        actual = makespan(instance, plan.shards, plan.assignment)
        if abs(actual - plan.makespan_s) > rel_tol * max(actual, 1e-12):
            problems.append(f"makespan_s={plan.makespan_s} but the assignment gives {actual}")
    return problems
