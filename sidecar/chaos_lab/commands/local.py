"""``chaos-train local``: N nodes (sidecar + trainer processes) on this machine, with churn."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from chaos_lab import netns
from chaos_lab.churn import default_churn, load_churn
from chaos_lab.jobreport import plot, read_jsonl, summarize, timeline_lines
from chaos_lab.links import parse_links
from chaos_lab.localjob import JobConfig, LocalJob
from chaos_sidecar.errors import InputError


def run(args: argparse.Namespace) -> int:
    if args.nodes < 3:
        raise InputError("--nodes", "at least 3 nodes (a crash must leave a majority)")
    initial = [f"n{i}" for i in range(args.nodes)]
    churn = load_churn(args.churn, initial, args.steps) if args.churn else default_churn(initial, args.steps)
    if args.hosts == "netns" and (why := netns.unavailable()):
        raise InputError("--hosts", f"netns needs namespaces, but {why}")
    out = Path(args.out)
    cfg = JobConfig(nodes=args.nodes, steps=args.steps, churn=churn, out=out, join_mode=args.join_mode,
                    live=sys.stdout.isatty() or args.live, hosts=args.hosts, hidden=args.hidden)  # fmt: skip
    if args.hosts == "netns":
        cfg.links = parse_links(args.links, cfg.node_names())
    elif args.links != "equal":
        raise InputError("--links", "shaped links need --hosts netns")
    print(f"chaos-train local: {args.nodes} nodes ({args.hosts}), {args.steps} steps, "
          f"{len(churn)} churn events -> {out}")  # fmt: skip
    if args.hosts == "netns":
        print("  links (MB/s sent): " + ", ".join(
            f"{n} {'unshaped' if r is None else f'{r / 1e6:g}'}" for n, r in cfg.links.items()))  # fmt: skip
    for event in churn:
        print(
            f"  at step {event.at_step:>4}: {event.event} {event.node}"
            + (f"-{event.peer}" if event.peer else "")
        )
    job = LocalJob(cfg)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: processes and namespaces go
    wall = asyncio.run(job.run())
    sidecar = read_jsonl(job.sidecar_logs())
    trainer = read_jsonl(job.trainer_logs())
    summary = summarize(cfg, job.injected, sidecar, trainer, wall)
    summary["stragglers"] = job.stragglers
    summary["hosts"] = args.hosts
    if args.hosts == "netns":  # each node kept to its own directory
        summary["foreign_opens"] = sorted(set(job.foreign_opens))
        summary["ok"] = summary["ok"] and not job.foreign_opens
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


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
