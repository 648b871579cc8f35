"""The example scripts under random churn: each of ``examples/train/*.py`` runs on the local
harness (``chaos-train local --script``) with a random churn script, then alone for the same
steps; reported per example: exit status, replicas identical, per-sample accounting (by id),
the churn that landed, and the final loss with churn and alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from chaos_lab.benchmarks.localrun import run_local
from chaos_lab.builtin import BUILTIN_SCRIPT
from chaos_sidecar.cliutil import positive_int

EXAMPLES = BUILTIN_SCRIPT.parent
# per example: steps, and the script's own options (a smaller MLP: the demo's width is for
# transfer figures, not for this check)
# long enough that a joiner's new process (Python, torch, the script's imports: 10-20 s on a
# busy 2-core machine) starts before the run ends, so the scripted joins land
DEFAULTS = {
    "mlp.py": (500, ["--hidden", "256"]),
    "digits_cnn.py": (500, []),
    "tiny_gpt.py": (400, []),
}
RUN_DEADLINE_S = 900.0


def run_example(name: str, steps: int, script_args: list[str], seed: int, out: Path) -> dict[str, Any]:
    script = EXAMPLES / name
    args = " ".join([*script_args, "--steps", str(steps)])
    local_args = ["--script", str(script), "--script-args", args, "--steps", str(steps),
                  "--churn", f"random:{seed}", "--compare-alone"]  # fmt: skip
    summary, ended = run_local(local_args, out, RUN_DEADLINE_S)
    if summary is None:
        return {"example": name, **ended}
    alone = summary.get("alone", {})
    return {
        "example": name,
        "command": f"chaos-train local --script examples/train/{name} --script-args '{args}' --steps {steps} "
        f"--churn random:{seed} --compare-alone",
        **ended,
        "replicas_identical": summary["replicas_identical"],
        "replica_comparisons": summary["replica_comparisons"],
        "sample_accounting": summary["sample_accounting"],
        "samples_expected": summary["samples_expected"],
        "samples_seen": summary["samples_seen"],
        "samples_lost": summary["samples_lost"],
        "samples_duplicated": summary["samples_duplicated"],
        "events": [
            {"kind": e["kind"], "node": e["node"], "at_step": e["at_step"], "sources": e.get("sources")}
            for e in summary["events"]
        ],
        # joins that moved state to the joiner (bytes from at least one member)
        "joins_with_transfer": sum(1 for e in summary["events"] if e["kind"] == "join" and e.get("sources")),
        "final_loss_with_churn": summary["final_loss"],
        "final_loss_alone": alone.get("final_loss"),
        "final_loss_relative_difference": alone.get("final_loss_relative_difference"),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=positive_int, default=1, help="the random churn script's seed")
    parser.add_argument(
        "--examples", default=",".join(DEFAULTS), help=f"comma-separated, of {', '.join(DEFAULTS)}"
    )
    parser.add_argument("--steps", type=positive_int, help="steps for every example (default: each its own)")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    names = [n.strip() for n in args.examples.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEFAULTS]
    if unknown:
        from chaos_sidecar.errors import InputError

        raise InputError("--examples", f"unknown {unknown}; choose from {sorted(DEFAULTS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="chaos-examples-") as tmp:
        for name in names:
            steps, script_args = DEFAULTS[name]
            print(f"examples: {name} ...", file=sys.stderr, flush=True)
            results.append(run_example(name, args.steps or steps, script_args, args.seed, Path(tmp) / name))
    return {
        "scenario": "examples",
        "seed": args.seed,
        "ok": all(r["ok"] for r in results),
        "examples": results,
    }
