"""``chaos-train local``: N nodes (sidecar + trainer processes) on this machine, with churn."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from chaos_sidecar import eventlog
from chaos_sidecar.cliutil import Subparsers, positive_int
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import Kind

RANDOM_CUT_STEPS = 10  # --hosts netns: a random script's unrestored cut heals after this many steps
STALL_LIMIT_S = 120.0  # no step for this long: the run ends, saying where each node was stuck
ALONE_DEADLINE_S = 1800.0  # --compare-alone: the plain run must finish within this long


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
    parser.add_argument(
        "--hosts",
        choices=("loopback", "netns"),
        default="loopback",
        help="netns: every node in its own network namespace, address and directory (needs root)",
    )
    parser.add_argument(
        "--links",
        default="equal",
        help="--hosts netns: each node's link, equal (unshaped), skewed (40/20/10/10 MB/s) or a JSON file "
        "{'rates_mbps': {'n0': 40, ...}}",
    )
    parser.add_argument(
        "--hidden", type=positive_int, help="the built-in model's hidden width (default 1024)"
    )
    parser.add_argument(
        "--script", help="the training script every node runs (default: the built-in examples/train/mlp.py)"
    )
    parser.add_argument(
        "--script-args", default="", help="arguments for --script, one string (split like a shell does)"
    )
    parser.add_argument(
        "--checkpoint-dir",
        help="durable checkpoints here (kept across runs: a new run resumes from the newest)",
    )
    parser.add_argument(
        "--checkpoint-every", type=positive_int, default=100, help="steps between checkpoints"
    )
    parser.add_argument(
        "--compare-alone", action="store_true",
        help="afterwards, train the same script alone (one process, no churn) and report both final losses",
    )  # fmt: skip
    parser.set_defaults(run=run)


def _train_alone(job, out: Path) -> dict:
    """The same script and steps as one plain process with no sidecar (the SDK trains alone)."""
    from chaos_sidecar import trainer_env

    log = out / "alone.trainer.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, trainer_env.STEPS: str(job.cfg.steps), trainer_env.EVENT_LOG: str(log),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop(trainer_env.SIDECAR_URL, None)
    print("\ntraining the same script alone for comparison ...", flush=True)
    try:
        done = subprocess.run([sys.executable, *job.script_command()], env=env, stdout=subprocess.DEVNULL,
                              timeout=ALONE_DEADLINE_S, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {ALONE_DEADLINE_S:.0f} s"}
    steps = [r for r in eventlog.read([log]) if r.kind is Kind.STEP]
    return {"exit": done.returncode, "steps": len(steps), "final_loss": steps[-1]["loss"] if steps else None}


def run(args: argparse.Namespace) -> int:
    # the harness (aiohttp, yaml) is loaded when the job runs, not whenever the CLI parses
    from chaos_lab import netns
    from chaos_lab.churn import default_churn, heal_cuts, load_churn
    from chaos_lab.jobreport import plot, summarize, timeline_lines
    from chaos_lab.links import parse_links
    from chaos_lab.localjob import JobConfig, JobStalled, LocalJob

    if args.nodes < 3:
        raise InputError("--nodes", "at least 3 nodes (a crash must leave a majority)")
    initial = [f"n{i}" for i in range(args.nodes)]
    churn = load_churn(args.churn, initial, args.steps) if args.churn else default_churn(initial, args.steps)
    if args.hosts == "netns" and (why := netns.unavailable()):
        raise InputError("--hosts", f"netns needs namespaces, but {why}")
    out = Path(args.out)
    script = Path(args.script) if args.script else None
    if script is not None and not script.is_file():
        raise InputError("--script", f"{script} does not exist or is not a file")
    if args.script_args and script is None:
        raise InputError("--script-args", "needs --script")
    if script is not None and args.hidden is not None:
        raise InputError(
            "--hidden", "sets the built-in job's width; pass your script's own options in --script-args"
        )
    cfg = JobConfig(nodes=args.nodes, steps=args.steps, churn=churn, out=out, join_mode=args.join_mode,
                    live=sys.stdout.isatty() or args.live, hosts=args.hosts, hidden=args.hidden,
                    stall_limit_s=STALL_LIMIT_S, script=script,
                    script_args=shlex.split(args.script_args),
                    checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
                    checkpoint_every=args.checkpoint_every)  # fmt: skip
    if args.hosts == "netns":
        cfg.links = parse_links(args.links, cfg.node_names())
        if args.churn and args.churn.startswith("random:"):
            churn = cfg.churn = heal_cuts(churn, RANDOM_CUT_STEPS)  # a lasting cut stops both ends
    elif args.links != "equal":
        raise InputError("--links", "shaped links need --hosts netns")
    print(f"chaos-train local: {args.nodes} nodes ({args.hosts}), {args.steps} steps, "
          f"{len(churn)} churn events -> {out}")  # fmt: skip
    if args.hosts == "netns":
        print("  links (MB/s sent): " + ", ".join(
            f"{n} {'unshaped' if r is None else f'{r / 1e6:g}'}" for n, r in cfg.links.items()))  # fmt: skip
    for event in churn:
        print(f"  {event.label()}")
    job = LocalJob(cfg)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: processes and namespaces go
    try:
        wall = asyncio.run(job.run())
    except JobStalled as exc:
        print(f"\nchaos-train local: {exc.reason}; logs in {out}", file=sys.stderr)
        for node, state in exc.nodes.items():
            print(f"  {node}: {json.dumps(state)}", file=sys.stderr)
        return 1
    sidecar = eventlog.read(job.sidecar_logs())
    trainer = eventlog.read(job.trainer_logs())
    summary = summarize(cfg, job.injected, sidecar, trainer, wall)
    summary["stragglers"] = job.stragglers
    summary["hosts"] = args.hosts
    if args.hosts == "netns":  # each node kept to its own directory
        summary["foreign_opens"] = sorted(set(job.foreign_opens))
        summary["ok"] = summary["ok"] and not job.foreign_opens
    if args.compare_alone:
        summary["alone"] = _train_alone(job, out)
        alone = summary["alone"].get("final_loss")
        if alone is not None and summary["final_loss"] is not None:
            difference = abs(summary["final_loss"] - alone) / max(abs(alone), 1e-12)
            summary["alone"]["final_loss_relative_difference"] = round(difference, 6)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "events.jsonl").open("w") as f:
        for row in summary["events"]:
            f.write(json.dumps(row) + "\n")
    t0 = min((r.t for r in trainer), default=0.0)
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
    print(f"sample accounting: {summary['sample_accounting']}")
    if "alone" in summary:
        print(f"final loss {summary['final_loss']} with churn, {summary['alone'].get('final_loss')} alone "
              f"(relative difference {summary['alone'].get('final_loss_relative_difference')})")  # fmt: skip
    print(f"wrote {out}/summary.json, {out}/events.jsonl, {out}/timeline.png")
    return 0 if summary["ok"] else 1


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
