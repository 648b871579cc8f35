"""``chaos-train local``: N nodes (sidecar + trainer processes) on this machine, with churn."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from chaos_sidecar.cliutil import Subparsers, positive_int
from chaos_sidecar.errors import InputError


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "local",
        help="run the main job: N nodes (sidecar + trainer processes) with scripted churn",
        description="Start N nodes on this machine, each a sidecar and a trainer process, train a "
        "built-in model on generated data while the churn script runs, then check and summarise.",
    )
    parser.add_argument("--nodes", type=positive_int, default=4)
    parser.add_argument("--steps", type=positive_int, default=600)
    parser.add_argument("--churn", help="churn FILE (JSON/YAML) or random:SEED; default: the demo scenario")
    parser.add_argument("--join-mode", choices=("blocking", "overlap"), default="blocking")
    parser.add_argument("--out", default="out/local", help="output directory (replaced)")
    parser.add_argument("--live", action="store_true", help="live progress even when not on a terminal")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # the harness (aiohttp, yaml) is loaded when the job runs, not whenever the CLI parses
    from chaos_lab.churn import default_churn, load_churn
    from chaos_lab.jobreport import plot, read_jsonl, summarize, timeline_lines
    from chaos_lab.localjob import JobConfig, LocalJob

    if args.nodes < 3:
        raise InputError("--nodes", "at least 3 nodes (a crash must leave a majority)")
    initial = [f"n{i}" for i in range(args.nodes)]
    churn = load_churn(args.churn, initial, args.steps) if args.churn else default_churn(initial, args.steps)
    out = Path(args.out)
    cfg = JobConfig(nodes=args.nodes, steps=args.steps, churn=churn, out=out, join_mode=args.join_mode,
                    live=sys.stdout.isatty() or args.live)  # fmt: skip
    print(f"chaos-train local: {args.nodes} nodes, {args.steps} steps, {len(churn)} churn events -> {out}")
    for event in churn:
        print(
            f"  at step {event.at_step:>4}: {event.event} {event.node}"
            + (f"-{event.peer}" if event.peer else "")
        )
    job = LocalJob(cfg)
    wall = asyncio.run(job.run())
    sidecar = read_jsonl(sorted((out / "sidecars").glob("*.events.jsonl")))
    trainer = read_jsonl(sorted((out / "logs").glob("*.trainer.jsonl")))
    summary = summarize(cfg, job.injected, sidecar, trainer, wall)
    summary["stragglers"] = job.stragglers
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "events.jsonl").open("w") as f:
        for row in summary["events"]:
            f.write(json.dumps(row) + "\n")
    t0 = min((r["t"] for r in trainer), default=0.0)
    summary["_event_times"] = [i.t for i in job.injected]
    plot(out / "timeline.png", summary, sidecar, trainer, t0)
    del summary["_event_times"]
    print("\nevent timeline")
    print("\n".join("  " + line for line in timeline_lines(summary)))
    print(
        f"\nsummary: {summary['steps']} steps, loss {summary['initial_loss']} -> {summary['final_loss']}, "
        f"replicas identical: {summary['replicas_identical']} "
        f"({summary['replica_comparisons']} comparisons), "
        f"samples lost {summary['samples_lost']} duplicated {summary['samples_duplicated']} "
        f"of {summary['samples_expected']}, idle s {summary['idle_s_per_member']}, {summary['wall_s']} s"
    )
    print(f"wrote {out}/summary.json, {out}/events.jsonl, {out}/timeline.png")
    return 0 if summary["ok"] else 1
