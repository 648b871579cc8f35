"""``chaos-train sim``: many seeded schedules of the membership protocol, in parallel."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from chaos_lab.stats import summary
from chaos_sidecar.cliutil import Subparsers, non_negative_int, positive_int, print_json
from chaos_sidecar.errors import InputError
from chaos_sidecar.membership.sim import (
    FAULT_KINDS,
    ScheduleResult,
    SimConfig,
    parse_faults,
    run_schedule,
)

_CHUNK = 50
FINAL_BRIDGE_HOLD_S = 2.0  # a group that converges only in passing (removing, re-admitting) fails


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="run the membership protocol under a seeded fault-injecting simulator",
        description="Run N membership state machines under seeded random schedules with "
        "faults, checking safety and liveness invariants after every step.",
    )
    parser.add_argument("--nodes", type=positive_int, default=5, help="initial group size")
    parser.add_argument("--schedules", type=positive_int, default=100, help="schedules to run")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the first schedule")
    parser.add_argument(
        "--faults",
        default="all",
        help="comma-separated fault kinds, 'all' or 'none' (see --list-faults)",
    )
    parser.add_argument(
        "--final-bridge",
        action="store_true",
        help="after the faults stop, keep two sides cut from each other but for one hub: the group "
        "must converge through it and keep its view for 2 s (partial connectivity)",
    )
    parser.add_argument("--replay", type=non_negative_int, help="replay one schedule by its seed")
    parser.add_argument("--list-faults", action="store_true", help="print the fault kinds and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", help="also write the JSON report to this file")
    parser.set_defaults(run=run)


def _run_chunk(seeds: range, config: SimConfig) -> list[ScheduleResult]:
    results = []
    for seed in seeds:
        result = run_schedule(seed, config)
        if not result.violations:
            result.trace = []  # only failing schedules carry their trace back
        results.append(result)
    return results


def run(args: argparse.Namespace) -> int:
    if args.list_faults:
        print("\n".join(FAULT_KINDS))
        return 0
    try:
        faults = parse_faults(args.faults)
    except ValueError as exc:
        raise InputError("--faults", str(exc)) from None
    if args.nodes < 3:
        raise InputError("--nodes", "the protocol needs at least 3 nodes to tolerate a fault")
    config = SimConfig(nodes=args.nodes, faults=faults)
    if args.final_bridge:
        config = replace(config, final_bridge=True, hold_s=FINAL_BRIDGE_HOLD_S)
    if args.replay is not None:
        return _replay(args.replay, config, as_json=args.json)

    started = time.perf_counter()
    seeds = range(args.seed, args.seed + args.schedules)
    chunks = [seeds[i : i + _CHUNK] for i in range(0, len(seeds), _CHUNK)]
    workers = max(1, min(os.cpu_count() or 1, len(chunks)))
    results: list[ScheduleResult] = []
    if workers == 1:
        for chunk in chunks:
            results.extend(_run_chunk(chunk, config))
    else:
        with ProcessPoolExecutor(workers) as pool:
            for done, part in enumerate(pool.map(_run_chunk, chunks, [config] * len(chunks)), 1):
                results.extend(part)
                if not args.json and sys.stderr.isatty():
                    print(f"\r{done}/{len(chunks)} chunks", end="", file=sys.stderr)
    elapsed = time.perf_counter() - started

    failures = [r for r in results if r.violations]
    decision_us = [ns / 1000 for r in results for ns in r.decision_ns]
    converge = [r.converge_s for r in results if r.converge_s is not None]
    report = {
        "schedules": len(results),
        "nodes": args.nodes,
        "faults": sorted(faults),
        "seed": args.seed,
        "events": sum(r.events for r in results),
        "steps": sum(r.steps for r in results),
        "messages": sum(r.messages for r in results),
        "violations": sum(len(r.violations) for r in results),
        "failures": [r.seed for r in failures],
        "converged": sum(1 for r in results if r.converged),
        "converge_s": summary(converge),
        "decision_latency_us": summary(decision_us, 1),
        "max_epoch": max((r.max_epoch for r in results), default=0),
        "final_bridge": config.final_bridge,
        "bridged_commits": sum(r.bridged_commits for r in results),
        "crashes": sum(r.crashes for r in results),
        "agreement_crashes": sum(r.agreement_crashes for r in results),
        "lost_state_restarts": sum(r.lost_state for r in results),
        "run_s": round(elapsed, 2),
    }
    for failure in failures[:3]:
        print(f"schedule seed={failure.seed} failed: {failure.violations[0]}", file=sys.stderr)
        print("\n".join(failure.trace[-20:]), file=sys.stderr)
        print(
            f"replay: chaos-train sim --nodes {args.nodes} --faults {args.faults} "
            f"{'--final-bridge ' if args.final_bridge else ''}--replay {failure.seed}",
            file=sys.stderr,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if args.json:
        print_json(report)
    else:
        d = report["decision_latency_us"]
        print(
            f"{report['schedules']} schedules, {report['events']} fault events, "
            f"{report['violations']} violations, {report['converged']} converged, "
            f"decision p50={d['p50']}us p99={d['p99']}us, max epoch {report['max_epoch']}, "
            f"{report['bridged_commits']} epochs committed while bridged, {report['run_s']}s"
        )
    return 1 if failures else 0


def _replay(seed: int, config: SimConfig, *, as_json: bool) -> int:
    result = run_schedule(seed, config)
    if as_json:
        print_json(
            {
                "seed": seed,
                "violations": result.violations,
                "converged": result.converged,
                "max_epoch": result.max_epoch,
                "trace": result.trace,
            }
        )
    else:
        print("\n".join(result.trace))
        print(f"seed {seed}: {len(result.violations)} violations, converged={result.converged}")
    return 1 if result.violations else 0
