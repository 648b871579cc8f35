"""Scalability scenario: the cost of one membership decision as the group grows to 1,000.

The state machine is pure, so a group of any size can be simulated in one process: a
coordinator holding a view of N members that all report hearing everyone. Timed (median and
p99 over repeats, from the same base state each time): one heartbeat received, one periodic
tick, and the steps that turn a join, a leave and a failure (a member gone silent past the
suspicion timeout) into a decided view. The planner's cost for the same number of sources
is timed alongside (greedy, 4,096 shards).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from chaos_sidecar.cliutil import positive_int
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.planning import greedy
from chaos_sidecar.planning.model import Instance, Source
from chaos_sidecar.protocol import Heartbeat, Join, Leave, Message, View

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


def timed(repeats: int, run: Callable[[], Any]) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        out.append((time.perf_counter() - started) * 1e6)
    return out


def decides(result: tuple[sm.NodeState, list[sm.Action]]) -> bool:
    """The step chose a new view: it says so, or it proposes one (a removal is decided when
    the coordinator proposes the view without the silent member)."""
    state, actions = result
    return any(isinstance(a, sm.Decided) for a in actions) or (
        state.proposal is not None and state.proposal.own
    )


def silent(state: sm.NodeState, members: tuple[str, ...], victim: str, now: float) -> sm.NodeState:
    """Everyone but ``victim`` kept reporting (and was heard) up to ``now``; the victim did not."""
    others = tuple(m for m in members if m != victim)
    for m in others[1:]:
        state, _ = sm.step(state, sm.Receive(Message(m, EPOCH, Heartbeat(others, (0, 0), ()))), now)
    return state


def measure_size(n: int, repeats: int) -> dict[str, Any]:
    base, members = coordinator(n)
    now = 0.03
    heartbeat = sm.Receive(Message(members[1], EPOCH, Heartbeat(members, (0, 0), ())))
    join = sm.Receive(Message("newcomer", EPOCH, Join("newcomer", "http://newcomer:7070")))
    leave = sm.Receive(Message(members[-1], EPOCH, Leave(members[-1])))
    victim = members[n // 2]
    later = now + SETTINGS.suspect_timeout * 3
    quiet = silent(base, members, victim, later)
    checks = {
        "join": decides(sm.step(base, join, now)),
        "leave": decides(sm.step(base, leave, now)),
        "failure": decides(sm.step(quiet, sm.Tick(), later)),
    }
    rows = {
        "heartbeat": timed(repeats, lambda: sm.step(base, heartbeat, now)),
        "tick": timed(repeats, lambda: sm.step(base, sm.Tick(), now)),
        "join_decision": timed(repeats, lambda: sm.step(base, join, now)),
        "leave_decision": timed(repeats, lambda: sm.step(base, leave, now)),
        "failure_decision": timed(repeats, lambda: sm.step(quiet, sm.Tick(), later)),
    }
    instance = Instance(
        state_bytes=4096 * 1024 * 1024,
        sources=tuple(Source(f"s{i:04d}", 1e6 * (1 + i % 7), 0.001) for i in range(n)),
        download_Bps=None,
        shard_counts=(4096,),
    )
    rows["plan_4096_shards"] = timed(max(3, repeats // 10), lambda: greedy.solve(instance))
    return {
        "members": n,
        "decided": checks,
        **{
            k: {
                "p50_us": round(statistics.median(v), 1),
                "p99_us": round(sorted(v)[int(0.99 * (len(v) - 1))], 1),
            }
            for k, v in rows.items()
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-nodes", type=positive_int, default=1000, help="largest simulated group")
    parser.add_argument("--repeats", type=positive_int, default=30, help="timed steps per measurement")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [n for n in SIZES if n <= args.max_nodes]
    results = [measure_size(n, args.repeats) for n in sizes]
    return {
        "scenario": "scalability",
        "sizes": sizes,
        "repeats": args.repeats,
        "results": results,
        "failed": not all(all(r["decided"].values()) for r in results),
    }
