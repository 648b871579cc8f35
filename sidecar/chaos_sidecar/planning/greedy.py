"""The fast planner: exact, ``O(|shard_counts| * n log n)``.

Optimality argument. Fix ``K`` (so ``s`` and every per-shard time ``c_u = l_u + s/b_u``
are fixed). Source ``u`` offers "slots" finishing at ``r_u + k c_u`` for ``k = 1..m_u``;
giving ``u`` its first ``k`` slots costs exactly its ``k``-th slot time, and slot times
increase with ``k``. Any assignment of ``K`` shards uses ``K`` slots, prefix-closed per
source, and its makespan is the largest slot used, so no assignment beats the ``K``-th
smallest slot time ``T*(K)``; taking the ``K`` smallest slots (prefix-closed because slot
times increase along each source) achieves it. Hence ``T*(K)`` is optimal for ``K`` - the
greedy "give the next shard to the source that would finish it first" rule of the paper
computes exactly this set.

Computing it fast: the fluid relaxation ``sum_u min(m_u, (T - r_u)/c_u)^+ = K`` has a root
``T_lb <= T*(K)`` (the relaxation counts at least as many slots by any time); every slot
finishing by ``T_lb`` is among the ``K`` smallest, so we take those (``floor``) and add the
remaining (fewer than ``n``) slots one by one from a heap. Over ``K`` we take the minimum of
``max(T*(K), W/B)`` (ties: fewer shards), then the lexicographically largest assignment
that meets that makespan (:func:`~chaos_sidecar.planning.model.canonical_assignment`).
``K`` values whose fluid bound already exceeds the best makespan are skipped.
"""

from __future__ import annotations

import heapq
import math
import time

from chaos_sidecar.planning.model import REL_TOL, Instance, Plan, canonical_plan


def _fluid_bound(rates: list[tuple[float, float, int]], shards: int) -> float:
    """Smallest T with sum_u min(cap_u, (T - r_u)/c_u)^+ >= shards; rates = (r_u, c_u, cap_u).

    The sum is piecewise linear and increasing in T, with breakpoints where a source starts
    (r_u) and where its cap binds (r_u + cap_u c_u; only caps below ``shards`` can bind).
    """
    events = []
    for r, c, cap in rates:
        if cap <= 0:
            continue
        if c <= 0:
            return r  # instantaneous shards: nothing to wait for beyond readiness
        events.append((r, 1.0 / c))
        if cap < shards:
            events.append((r + cap * c, -1.0 / c))
    events.sort()
    slope = count = 0.0
    t_prev = events[0][0]
    for t, delta in events:
        if slope > 0 and count + slope * (t - t_prev) >= shards:
            return t_prev + (shards - count) / slope
        count += slope * (t - t_prev)
        slope += delta
        t_prev = t
    if slope > 0:
        return t_prev + (shards - count) / slope
    return t_prev  # capacity exactly exhausted at the last breakpoint


def best_time_for(rates: list[tuple[float, float, int]], shards: int, bound: float) -> float:
    """``T*(K)``: the K-th smallest slot finish time (see the module docstring).

    ``rates`` = (r_u, c_u, cap_u) per source; ``bound`` = :func:`_fluid_bound` for them.
    """
    counts = []
    taken = 0
    for r, c, cap in rates:
        n = 0 if cap <= 0 or bound < r else min(cap, math.floor((bound - r) / c) if c > 0 else cap)
        counts.append(n)
        taken += n
    # floating point may overshoot by a slot at the bound: give back the latest slots
    while taken > shards:
        i = max(
            (i for i, n in enumerate(counts) if n > 0), key=lambda i: rates[i][0] + counts[i] * rates[i][1]
        )
        counts[i] -= 1
        taken -= 1
    longest = max((r + n * c for (r, c, _), n in zip(rates, counts, strict=True) if n > 0), default=0.0)
    if taken == shards:
        return longest
    heap = [
        (r + (n + 1) * c, i) for i, ((r, c, cap), n) in enumerate(zip(rates, counts, strict=True)) if n < cap
    ]
    heapq.heapify(heap)
    while taken < shards:
        finish, i = heapq.heappop(heap)
        counts[i] += 1
        taken += 1
        longest = max(longest, finish)
        r, c, cap = rates[i]
        if counts[i] < cap:
            heapq.heappush(heap, (r + (counts[i] + 1) * c, i))
    return longest


def solve(instance: Instance) -> Plan:
    started = time.perf_counter()
    floor_s = instance.download_floor_s
    # fluid lower bounds for every K first; exact values only where a bound can still win
    candidates = []
    for k in instance.feasible_counts():
        size = instance.shard_bytes(k)
        rates = [(u.ready_s, u.shard_time(size), instance.cap(u, k)) for u in instance.sources]
        bound = _fluid_bound(rates, k)
        candidates.append((max(bound, floor_s), k, rates, bound))
    candidates.sort(key=lambda c: (c[0], c[1]))
    best: tuple[float, int] | None = None
    for lower, k, rates, bound in candidates:
        if best is not None and lower > best[0] * (1 + REL_TOL):
            break
        value = max(best_time_for(rates, k, bound), floor_s)
        if best is None or value < best[0] * (1 - REL_TOL):
            best = (value, k)
        elif value <= best[0] * (1 + REL_TOL) and k < best[1]:
            best = (min(value, best[0]), k)  # a tie: fewer shards win
    assert best is not None  # parse_instance guarantees a feasible count
    return canonical_plan(instance, best[1], best[0], "greedy", time.perf_counter() - started)
