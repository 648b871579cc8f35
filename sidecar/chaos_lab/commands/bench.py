"""``chaos-train bench --scenario NAME``: one JSON object per run."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from chaos_lab.benchmarks.plots import PLOTTERS
from chaos_sidecar.cli import print_json
from chaos_sidecar.errors import InputError


def run(args: argparse.Namespace) -> int:
    if args.plot and args.scenario not in PLOTTERS:
        raise InputError("--plot", f"no figure for {args.scenario}; figures exist for {sorted(PLOTTERS)}")
    module = importlib.import_module(f"chaos_lab.benchmarks.{args.scenario.replace('-', '_')}")
    result = module.run_from_args(args) if hasattr(module, "run_from_args") else module.run()
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
