"""``chaos-train bench --scenario NAME [that scenario's options]``: one JSON object per run.

Each scenario is a module of ``chaos_lab.benchmarks`` that declares its own options
(``add_arguments(parser)``) and runs from them (``run_from_args(args)``). Parsing takes two
stages: the first reads only ``--scenario`` (and ``--help``), the second builds a parser for
that scenario alone, so ``bench --scenario transfer --help`` lists transfer's options only and
an option of another scenario is refused. The scenario's module is imported only then.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from types import ModuleType

from chaos_lab.benchmarks.plots import PLOTTERS
from chaos_sidecar.cliutil import Subparsers, print_json

# scenario -> what it measures (the module is chaos_lab.benchmarks.<name with _ for ->)
SCENARIOS = {
    "agreement": "real sidecars on loopback: decision and agreement latency per event kind",
    "events": "the agreement run as a table per event kind (with a figure)",
    "planner": "greedy at 1,000 sources, MILP at 16",
    "transfer": "multi-source snapshot pull against the physical limit",
    "monitor": "false suspicions under CPU load, monitoring traffic per node",
    "steptime": "SDK + sidecars vs a plain torch.distributed loop, per-step time and CPU",
    "scale-out": "a node joins a training group: chaos vs equal-split, single-source, checkpoint-restart",
    "scalability": "decision cost of the membership machine and the planner as the group grows",
    "chaos": "rounds of the local job under random faults; exit 1 on any broken invariant",
    "join-modes": "what a join costs the members: blocking vs overlap joins side by side",
    "examples": "the example scripts under random churn, each against the same script alone",
    "long-haul": "one job absorbs N faults of every kind, beside the same job without: loss, samples, leaks",
    "seeds": "the main job once per random churn seed (netns by default): invariants, bytes per source",
}


def register(subparsers: Subparsers) -> None:
    listing = "\n".join(f"  {name:<12} {what}" for name, what in SCENARIOS.items())
    chooser = subparsers.add_parser(
        "bench",
        add_help=False,  # --help is answered once the scenario is known (see scenario_args)
        help="run a benchmark scenario",
        description="Benchmarks measured side by side in one run; results are printed and, "
        "with --out, written as JSON. Each scenario takes its own options: "
        "chaos-train bench --scenario NAME --help lists them.",
        epilog=f"scenarios:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chooser.add_argument(
        "-h", "--help", action="store_true", help="show this help (or the scenario's) and exit"
    )
    chooser.add_argument("--scenario", choices=tuple(SCENARIOS), metavar="NAME", help="the scenario to run")
    chooser.set_defaults(run=run, parse_rest=lambda args, rest: scenario_args(chooser, args, rest))


def scenario_module(name: str) -> ModuleType:
    return importlib.import_module(f"chaos_lab.benchmarks.{name.replace('-', '_')}")


def scenario_parser(name: str, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=f"{name}: {SCENARIOS[name]}.")
    scenario_module(name).add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", help="also write the JSON result to this file")
    if name in PLOTTERS:
        parser.add_argument("--plot", help="also draw the result as PNG")
    else:
        parser.set_defaults(plot=None)
    return parser


def scenario_args(
    chooser: argparse.ArgumentParser, args: argparse.Namespace, rest: list[str]
) -> argparse.Namespace:
    """The second stage: ``rest`` parsed by the chosen scenario's own parser."""
    if args.scenario is None:
        if args.help:
            chooser.print_help()
            raise SystemExit(0)
        chooser.error("the following arguments are required: --scenario")
    parser = scenario_parser(args.scenario, prog=f"{chooser.prog} --scenario {args.scenario}")
    return parser.parse_args([*rest, *(["--help"] if args.help else [])], namespace=args)


def run(args: argparse.Namespace) -> int:
    result = scenario_module(args.scenario).run_from_args(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        PLOTTERS[args.scenario](result, Path(args.plot))
    if args.json:
        print_json(result)
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return 1 if result.get("failed") else 0
