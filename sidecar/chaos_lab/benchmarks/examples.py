"""The example scripts under random churn: each of ``examples/train/*.py`` runs on the local
harness (``chaos-train local --script``) with a random churn script, then alone for the same
steps; reported per example: exit status, replicas identical, per-sample accounting (by id),
the churn that landed, and the final loss with churn and alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    cmd = [sys.executable, "-m", "chaos_sidecar.cli", "local", "--script", str(script),
           "--script-args", args, "--steps", str(steps), "--churn", f"random:{seed}", "--out", str(out),
           "--compare-alone"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")}
    began = time.monotonic()
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=RUN_DEADLINE_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"example": name, "ok": False, "error": f"did not finish within {RUN_DEADLINE_S:.0f} s"}
    summary_path = out / "summary.json"
    if not summary_path.exists():
        return {"example": name, "ok": False, "exit": done.returncode, "error": done.stderr[-1500:]}
    summary = json.loads(summary_path.read_text())
    alone = summary.get("alone", {})
    return {
        "example": name,
        "command": f"chaos-train local --script examples/train/{name} --script-args '{args}' --steps {steps} "
        f"--churn random:{seed} --compare-alone",
        "exit": done.returncode,
        "ok": done.returncode == 0 and summary["ok"],
        "wall_s": round(time.monotonic() - began, 1),
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
