"""Scalability scenario: the cost of one membership decision as the group grows to 1,000.

The state machine is pure, so a group of any size can be simulated in one process: a
coordinator holding a view of N members that all report hearing everyone. Timed (median and
p99 over repeats, from the same state each time): one heartbeat received; the tick a quiet
coordinator asks for (``next_due``: it sends its heartbeat to every member); the tick on
which its failure detector loses a member gone silent; and the steps that turn a join, a
leave and a failure into a decided view. The failure is decided on the Suspect, from
another member whose own detector fired, that leaves the silent member short of a majority
(it was measured on a later tick once, which only resent a proposal already made). The
planner's cost for the same number of sources is timed alongside (greedy, 4,096 shards).

The collector runs during the timed steps (its pauses are part of a step's cost, and most of
its tail), with what was loaded before the states were built frozen, as a sidecar freezes
what it loaded once it started (``commands/sidecar.py``).
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from chaos_sidecar.cliutil import positive_int
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.planning import greedy
from chaos_sidecar.planning.model import Instance, Source
from chaos_sidecar.protocol import Heartbeat, Join, Leave, Message, Suspect, View

SIZES = (10, 30, 100, 300, 1000)
SETTINGS = sm.Settings(0.1, 0.5, 0.05)
EPOCH = 2


def coordinator(n: int) -> tuple[sm.NodeState, tuple[str, ...]]:
    members = tuple(f"m{i:04d}" for i in range(n))
    view = View(EPOCH, members, members[0], tuple(f"http://{m}:7070" for m in members))
    state = sm.initial_member(members[0], view, SETTINGS, 0.0)
    for m in members[1:]:
        state, _ = sm.step(state, sm.Receive(Message(m, EPOCH, Heartbeat(members, (0, 0), ()))), 0.01)
    state, _ = sm.step(state, sm.Tick(), 0.02)
    return state, members


def timed(repeats: int, run: Callable[[], Any]) -> tuple[list[float], list[float]]:
    """``repeats`` timings of ``run`` in µs: wall clock, and this thread's CPU time (which
    leaves out the time other processes had the core: on a shared machine most of a wall
    clock tail is that). The collector runs as it would in a sidecar: its pauses are part of
    a step's cost."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.thread_time()
        run()
        cpu.append((time.thread_time() - started_cpu) * 1e6)
        wall.append((time.perf_counter() - started) * 1e6)
    return wall, cpu


def decides(result: tuple[sm.NodeState, list[sm.Action]]) -> bool:
    """The step itself chose a new view (a proposal already in flight does not count)."""
    return any(isinstance(a, sm.Decided) for a in result[1])


def failure(base: sm.NodeState, members: tuple[str, ...], victim: str) -> dict[str, Any]:
    """A member goes silent after ``base`` (last heard at 0.01), as a crashed one does.

    The others keep reporting that they hear everyone until their failure detectors fire;
    the coordinator's own detector fires first (``detect``: a tick that sees the loss and
    tells everyone, no decision: the others still hear the victim), then the others'
    Suspects arrive one by one and the one that leaves the victim short of a majority makes
    the coordinator decide its removal (``decide``)."""
    timeout = SETTINGS.suspect_timeout
    others = [m for m in members[1:] if m != victim]
    s = base
    for m in others:  # their last heartbeat before their detectors fire
        s, _ = sm.step(s, sm.Receive(Message(m, EPOCH, Heartbeat(members, (0, 0), ()))), timeout - 0.05)
    detect_at = 0.01 + timeout + 0.01
    detect = s
    s, actions = sm.step(s, sm.Tick(), detect_at)
    assert sm.Observed(("lost", victim)) in actions and not decides((s, actions))
    decide_at = detect_at + 0.01
    for m in others:
        suspect = sm.Receive(Message(m, EPOCH, Suspect(victim)))
        after = sm.step(s, suspect, decide_at)
        if decides(after):
            return {"detect": (detect, detect_at), "decide": (s, suspect, decide_at)}
        s = after[0]
    raise AssertionError("no failure decision")


def p99(ranked: list[float]) -> float:
    """Nearest rank: the smallest sample at or above 99 % of them (with fewer than 100
    samples, the largest)."""
    return ranked[math.ceil(0.99 * len(ranked)) - 1]


def percentiles(timings: tuple[list[float], list[float]]) -> dict[str, Any]:
    """Median, p99 and maximum of the wall clock times, the median and p99 of the CPU times,
    and how many samples they rest on."""
    wall, cpu = sorted(timings[0]), sorted(timings[1])
    return {
        "p50_us": round(statistics.median(wall), 1),
        "p99_us": round(p99(wall), 1),
        "max_us": round(wall[-1], 1),
        "cpu_p50_us": round(statistics.median(cpu), 1),
        "cpu_p99_us": round(p99(cpu), 1),
        "samples": len(wall),
    }


def measure_size(n: int, repeats: int) -> dict[str, Any]:
    base, members = coordinator(n)
    now = 0.03
    heartbeat = sm.Receive(Message(members[1], EPOCH, Heartbeat(members, (0, 0), ())))
    join = sm.Receive(Message("newcomer", EPOCH, Join("newcomer", "http://newcomer:7070")))
    leave = sm.Receive(Message(members[-1], EPOCH, Leave(members[-1])))
    tick_at = sm.next_due(base)  # when a quiet coordinator asks for its next tick: its heartbeat
    fail = failure(base, members, members[n // 2])
    detect, detect_at = fail["detect"]
    before, suspect, decide_at = fail["decide"]
    decided = sm.step(before, suspect, decide_at)
    # the failure decision changes the link table too (the silent member is no longer kept):
    # the heartbeat that tells everyone goes on the tick the decision brings forward
    pushed, push_at = decided[0], sm.next_due(decided[0])
    push = sm.step(pushed, sm.Tick(), push_at)[1]
    checks = {
        "join": decides(sm.step(base, join, now)),
        "leave": decides(sm.step(base, leave, now)),
        "failure": decides(decided),
        "table_pushed": any(isinstance(a, sm.TopologyChanged) for a in decided[1])
        and push_at <= decide_at + sm.MIN_TICK_GAP
        and sum(isinstance(a, sm.Send) and isinstance(a.message.body, Heartbeat) for a in push) >= n - 1,
    }
    rows = {
        "heartbeat": timed(repeats, lambda: sm.step(base, heartbeat, now)),
        "tick": timed(repeats, lambda: sm.step(base, sm.Tick(), tick_at)),
        "failure_tick": timed(repeats, lambda: sm.step(detect, sm.Tick(), detect_at)),
        "join_decision": timed(repeats, lambda: sm.step(base, join, now)),
        "leave_decision": timed(repeats, lambda: sm.step(base, leave, now)),
        "failure_decision": timed(repeats, lambda: sm.step(before, suspect, decide_at)),
        "failure_table_push": timed(repeats, lambda: sm.step(pushed, sm.Tick(), push_at)),
    }
    instance = Instance(
        state_bytes=4096 * 1024 * 1024,
        sources=tuple(Source(f"s{i:04d}", 1e6 * (1 + i % 7), 0.001) for i in range(n)),
        download_Bps=None,
        shard_counts=(4096,),
    )
    rows["plan_4096_shards"] = timed(max(3, repeats // 10), lambda: greedy.solve(instance))
    return {"members": n, "decided": checks, **{k: percentiles(v) for k, v in rows.items()}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-nodes", type=positive_int, default=1000, help="largest simulated group")
    parser.add_argument(
        "--repeats", type=positive_int, default=500, help="timed steps per row (a p99 needs 100 or more)"
    )


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [n for n in SIZES if n <= args.max_nodes]
    # as a sidecar does once it started (commands/sidecar.py): what is loaded by now is set
    # aside from the collector, whose full collections then walk the group's state only
    gc.collect()
    gc.freeze()
    results = [measure_size(n, args.repeats) for n in sizes]
    return {
        "scenario": "scalability",
        "sizes": sizes,
        "repeats": args.repeats,
        "gc_frozen_at_start": True,
        "results": results,
        "failed": not all(all(r["decided"].values()) for r in results),
    }
