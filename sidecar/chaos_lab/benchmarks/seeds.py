"""The main job over consecutive random churn seeds: ``chaos-train local --churn random:SEED``
once per seed, on loopback or with every node in its own network namespace. Reported per seed:
exit status, replicas identical, per-sample accounting, files opened across node directories,
and every event with the bytes each member sent to a joiner; overall, how many members sent
bytes per join and whether the fastest link sent the most.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from chaos_lab.benchmarks.localrun import run_local
from chaos_sidecar.cliutil import positive_int
from chaos_sidecar.errors import InputError

RUN_DEADLINE_S = 900.0


def seed_range(text: str) -> list[int]:
    """``A-B`` (inclusive) or one seed."""
    first, _, last = text.partition("-")
    try:
        seeds = list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise InputError("--seeds", f"expected A-B or one seed, got {text!r}") from None
    if not seeds or seeds[0] < 1:
        raise InputError("--seeds", f"expected positive seeds, first <= last, got {text!r}")
    return seeds


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    local_args = ["--nodes", str(args.nodes), "--hosts", args.hosts, "--links", args.links,
                  "--churn", f"random:{seed}", "--steps", str(args.steps)]  # fmt: skip
    summary, ended = run_local(local_args, out, RUN_DEADLINE_S)
    if summary is None:
        return {"seed": seed, **ended}
    return {
        "seed": seed,
        **ended,
        "replicas_identical": summary["replicas_identical"],
        "samples_lost": summary["samples_lost"],
        "samples_duplicated": summary["samples_duplicated"],
        "foreign_opens": summary.get("foreign_opens", []),
        "events": [
            {
                key: e.get(key)
                for key in ("kind", "node", "peer", "at_step", "sources", "bytes_per_source", "transfer_ms")
            }
            for e in summary["events"]
        ],
    }


def join_sources(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per join that moved state: how many members sent bytes, and which one sent the most."""
    joins = [
        e for r in runs for e in r.get("events", []) if e["kind"] == "join" and e.get("bytes_per_source")
    ]
    senders = Counter(sum(1 for b in e["bytes_per_source"].values() if b > 0) for e in joins)
    top = Counter(max(e["bytes_per_source"], key=e["bytes_per_source"].get) for e in joins)
    return {
        "joins": len(joins),
        "senders_per_join": {str(k): senders[k] for k in sorted(senders)},
        "top_sender_per_join": {node: top[node] for node in sorted(top)},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=seed_range, default=seed_range("1-10"), help="A-B, inclusive (1-10)")
    parser.add_argument("--nodes", type=positive_int, default=4)
    parser.add_argument("--steps", type=positive_int, default=200)
    parser.add_argument("--hosts", choices=("loopback", "netns"), default="netns")
    parser.add_argument("--links", default="skewed", help="as chaos-train local --links")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="chaos-seeds-") as tmp:
        for seed in args.seeds:
            print(f"seeds: random:{seed} ...", file=sys.stderr, flush=True)
            runs.append(run_seed(seed, args, Path(tmp) / f"seed-{seed}"))
            print(f"seeds: random:{seed} ok={runs[-1]['ok']} {runs[-1].get('wall_s')} s", file=sys.stderr)
    return {
        "scenario": "seeds",
        "command": f"chaos-train local --nodes {args.nodes} --hosts {args.hosts} --links {args.links} "
        f"--churn random:SEED --steps {args.steps}",
        "seeds": [args.seeds[0], args.seeds[-1]],
        "ok": all(r["ok"] for r in runs),
        "joins": join_sources(runs),
        "runs": runs,
    }
