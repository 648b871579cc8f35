"""``chaos-train local``: N nodes (sidecar + trainer processes) on this machine, with churn."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from chaos_lab.churn import default_churn, load_churn
from chaos_lab.jobreport import plot, read_jsonl, summarize, timeline_lines
from chaos_lab.localjob import JobConfig, JobStalled, LocalJob
from chaos_sidecar.errors import InputError

STALL_LIMIT_S = 120.0  # no step for this long: the run ends, saying where each node was stuck


def run(args: argparse.Namespace) -> int:
    if args.nodes < 3:
        raise InputError("--nodes", "at least 3 nodes (a crash must leave a majority)")
    initial = [f"n{i}" for i in range(args.nodes)]
    churn = load_churn(args.churn, initial, args.steps) if args.churn else default_churn(initial, args.steps)
    out = Path(args.out)
    cfg = JobConfig(nodes=args.nodes, steps=args.steps, churn=churn, out=out, join_mode=args.join_mode,
                    live=sys.stdout.isatty() or args.live, stall_limit_s=STALL_LIMIT_S)  # fmt: skip
    print(f"chaos-train local: {args.nodes} nodes, {args.steps} steps, {len(churn)} churn events -> {out}")
    for event in churn:
        print(f"  {event.label()}")
    job = LocalJob(cfg)
    try:
        wall = asyncio.run(job.run())
    except JobStalled as exc:
        print(f"\nchaos-train local: {exc.reason}; logs in {out}", file=sys.stderr)
        for node, state in exc.nodes.items():
            print(f"  {node}: {json.dumps(state)}", file=sys.stderr)
        return 1
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
