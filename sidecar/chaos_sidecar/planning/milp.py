"""The reference planner: integer programs solved by CBC (PuLP), one per shard count.

The paper's MINLP has the shard size ``W / K`` inside the finish times. Fixing ``K`` (it
only ranges over the listed counts) makes every per-shard time ``c_u = l_u + ceil(W/K)/b_u``
a constant, and what is left is linear. For each feasible ``K``, with ``n_u`` the shards
source ``u`` sends and ``y_u`` whether it sends any::

    min T
    sum_u n_u = K
    n_u <= cap_u y_u                       (a source sending nothing finishes at 0)
    T >= r_u y_u + c_u n_u                 for every u
    T >= W / B

Each solve's makespan is recomputed exactly from its integer solution, and the best ``K``
is chosen on those exact values (ties: fewer shards), because two counts whose makespans
differ by less than CBC's tolerances (about 1e-7 of the time unit) cannot be told apart
inside one program. The assignment reported is the canonical one for the optimal makespan,
so equal makespans give identical plans in both solvers. Times are scaled by a natural time
unit of the instance so the tolerances mean the same for millisecond and hour-long plans.
"""

from __future__ import annotations

import time

import pulp

from chaos_sidecar.errors import ChaosError
from chaos_sidecar.planning.model import REL_TOL, Instance, Plan, canonical_plan, makespan


class SolverError(ChaosError):
    """CBC did not return an optimal solution."""


def _time_unit(instance: Instance) -> float:
    fastest = max(u.bandwidth_Bps for u in instance.sources)
    return max(
        instance.state_bytes / fastest,
        instance.download_floor_s,
        *(u.ready_s for u in instance.sources),
        *(u.overhead_s for u in instance.sources),
    )


def solve_for_count(instance: Instance, shards: int) -> dict[str, int]:
    """An optimal assignment of exactly ``shards`` shards, by CBC."""
    unit = _time_unit(instance)
    size = instance.shard_bytes(shards)
    prob = pulp.LpProblem(f"shards_{shards}", pulp.LpMinimize)
    t = pulp.LpVariable("T", lowBound=0)
    prob += t
    n = {}
    for i, u in enumerate(instance.sources):
        cap = instance.cap(u, shards)
        if cap <= 0:
            continue
        n[u.id] = nv = pulp.LpVariable(f"n_{i}", lowBound=0, upBound=cap, cat="Integer")
        yv = pulp.LpVariable(f"y_{i}", cat="Binary")
        prob += nv <= cap * yv
        prob += t >= (u.ready_s / unit) * yv + (u.shard_time(size) / unit) * nv
    prob += pulp.lpSum(n.values()) == shards
    if instance.download_Bps is not None:
        prob += t >= instance.download_floor_s / unit
    # the reference must be exactly optimal: zero gaps, a tight integrality tolerance, and a
    # tiny cutoff increment (CBC otherwise ignores improvements below ~1e-6 of the objective)
    options = ["integerTolerance 1e-9", "increment 1e-12", "primalTolerance 1e-10"]
    solver = pulp.PULP_CBC_CMD(msg=False, gapRel=0, gapAbs=0, options=options)
    status = prob.solve(solver)
    if pulp.LpStatus[status] != "Optimal":
        raise SolverError(f"CBC returned {pulp.LpStatus[status]} for K={shards}")
    return {u.id: round(pulp.value(n[u.id])) if u.id in n else 0 for u in instance.sources}


def solve(instance: Instance) -> Plan:
    started = time.perf_counter()
    best: tuple[float, int] | None = None
    for k in instance.feasible_counts():
        value = makespan(instance, k, solve_for_count(instance, k))
        if best is None or value < best[0] * (1 - REL_TOL):
            best = (value, k)
    assert best is not None  # parse_instance guarantees a feasible count
    return canonical_plan(instance, best[1], best[0], "milp", time.perf_counter() - started)
