"""``chaos-train plan INSTANCE.json --solver greedy|milp|both --json``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chaos_sidecar.cliutil import Subparsers, print_json
from chaos_sidecar.errors import InputError
from chaos_sidecar.planning import greedy
from chaos_sidecar.planning.model import Plan, parse_instance

AGREE_REL = 1e-9


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="solve a shard-planning instance (JSON file)",
        description="Choose the shard count and per-source shard assignment minimising the "
        "joiner's makespan.",
    )
    parser.add_argument("instance", help="instance JSON file ('-' for stdin)")
    parser.add_argument("--solver", choices=("greedy", "milp", "both"), default="greedy")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def load_instance_json(path: str) -> object:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise InputError("instance", f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError("instance", f"{path} is not JSON: {exc}") from None


def _describe(plan: Plan) -> str:
    used = {k: v for k, v in plan.assignment.items() if v}
    return (
        f"{plan.solver}: makespan {plan.makespan_s:.6f}s with {plan.shards} shards of "
        f"{plan.shard_bytes} B from {len(used)} sources {used} ({plan.solve_ms:.2f} ms)"
    )


def run(args: argparse.Namespace) -> int:
    instance = parse_instance(load_instance_json(args.instance))
    plans: dict[str, Plan] = {}
    if args.solver in ("greedy", "both"):
        plans["greedy"] = greedy.solve(instance)
    if args.solver in ("milp", "both"):
        from chaos_sidecar.planning import milp  # CBC is only loaded when asked for

        plans["milp"] = milp.solve(instance)
    agree = True
    if args.solver == "both":
        g, m = plans["greedy"].makespan_s, plans["milp"].makespan_s
        agree = abs(g - m) <= AGREE_REL * max(abs(g), abs(m), 1e-300)
    if args.json:
        if args.solver == "both":
            print_json({name: plan.to_json() for name, plan in plans.items()} | {"agree": agree})
        else:
            print_json(plans[args.solver].to_json())
    else:
        for plan in plans.values():
            print(_describe(plan))
        if args.solver == "both":
            print("solvers agree" if agree else "SOLVERS DISAGREE")
    return 0 if agree else 1
