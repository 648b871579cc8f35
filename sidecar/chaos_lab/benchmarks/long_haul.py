"""Long haul: one job absorbs N injected faults, side by side with the same job without any.

The job (``--nodes``, default 4, the built-in MLP at a small width) trains long enough for N
events at a steady rate (one every ``--every`` steps), drawn by the churn generator from every
kind it knows (crash of trainer, sidecar or both, graceful leave, join, link down/up, slow
link) and never taking the group below ``--min-size`` or above two more (a steady size, so that a
resource growing with the events is not one growing with the group). The same job with the same data order
and no faults runs first. Reported:

- final loss of both runs and their relative difference; replicas identical; samples lost or
  duplicated (counted by id);
- events injected per kind, the steps the faulty run took, wall time of both runs;
- resource curves of every long-lived process (alive for the whole faulty run: the founding
  node's sidecar and trainer, and whoever else survived), sampled from /proc every second:
  resident memory, open file descriptors and threads, each fitted against the number of
  events injected so far and the number of trainers running (connections and threads follow
  the group's size, which the faults move up and down). A slope per event above the threshold
  fails the run: a resource that grows with the faults, not with time or the group, leaks.

Each node's snapshot volume (memory in a pod) is sampled too: the state snapshots it holds at
once (files ``state-*``, published, being written or being pulled) must never exceed
SNAPSHOTS_HELD_LIMIT: one of each kind (blocking and overlap join) and one arriving; a node
that kept every join's snapshot would exceed it after a few joins.

Thresholds (per injected event, over the whole run, judged from 100 events on): RSS 0.5 MiB,
0.05 file descriptors, 0.05 threads. Why: a fault costs a member a process group (gloo's
connections and threads are freed when the group is), a store and a snapshot; one kept per
event would be tens of MiB, one descriptor or thread per event or more; below the thresholds,
200 events grow a process by less than 100 MiB, 10 descriptors and 10 threads, the noise of
allocators and pools.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from chaos_lab.churn import CHAOS_KINDS, random_churn
from chaos_lab.jobreport import summarize
from chaos_lab.localjob import JobConfig, JobStalled, LocalJob
from chaos_lab.sampling import Sampler, resources
from chaos_sidecar import eventlog
from chaos_sidecar.cliutil import positive_int
from chaos_sidecar.eventlog import Kind

HIDDEN = 256
SAMPLE_S = 1.0
SLOPE_LIMITS = {"rss_mib": 0.5, "fds": 0.05, "threads": 0.05}  # per injected event
SNAPSHOTS_HELD_LIMIT = 3
STALL_LIMIT_S = 120.0
# below this many events a slope is the noise of connections opened and closed as the group's
# size changes (a sidecar holds one per peer): the slopes are reported, not judged
LEAK_MIN_EVENTS = 100


class ResourceSampler(Sampler):
    """Samples every sidecar and trainer of ``job`` each second, with the events injected so far."""

    def __init__(self, job: LocalJob) -> None:
        super().__init__(SAMPLE_S, "resources")
        self.job = job
        self.series: dict[str, list[dict[str, float]]] = defaultdict(list)  # "n0 trainer" -> samples
        self.snapshots_peak: dict[str, dict[str, float]] = {}  # node -> most snapshots held at once
        self._started = time.monotonic()

    def sample(self) -> bool:
        events = len(self.job.injected)
        processes = {f"{n} trainer": p for n, p in list(self.job.trainers.items())}
        # the group's size, as near as the harness knows it: connections follow it
        size = sum(1 for p in processes.values() if p.poll() is None)
        cluster = getattr(self.job, "cluster", None)
        if cluster is not None:
            processes |= {f"{n} sidecar": node.process for n, node in list(cluster.nodes.items())}
        for name, process in processes.items():
            if process.poll() is not None:
                continue
            sample = resources(process.pid)
            if sample is not None:
                self.series[name].append(
                    {
                        "t": round(time.monotonic() - self._started, 1),
                        "events": events,
                        "size": size,
                        **sample,
                    }
                )
        for node in list(self.job.trainers):
            held = snapshots_held(self.job.snapshot_dir(node))
            peak = self.snapshots_peak.setdefault(node, {"snapshots": 0, "mib": 0.0})
            peak["snapshots"] = max(peak["snapshots"], held[0])
            peak["mib"] = max(peak["mib"], round(held[1] / 2**20, 2))
        return True


def snapshots_held(directory: Path) -> tuple[int, int]:
    """How many state snapshots (published, being written or pulled) ``directory`` holds, and
    their bytes."""
    count = size = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("state-") and ".data" in entry.name:
                with contextlib.suppress(FileNotFoundError):  # retired while we looked
                    size += entry.stat().st_size
                    count += 1
    return count, size


def slope(xs: list[float], ys: list[float], sizes: list[float] | None = None) -> float:
    """Least-squares slope of ys over xs (0 when xs do not vary). With ``sizes``, ys are fitted
    against xs and sizes together and the slope over xs is returned: a process's connections
    and threads follow the group's size, which the faults move up and down; that is not a leak."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    dx = [x - mx for x in xs]
    dy = [y - my for y in ys]
    sxx = sum(d * d for d in dx)
    sxy = sum(a * b for a, b in zip(dx, dy, strict=True))
    if sxx == 0:
        return 0.0
    if sizes is not None:
        ms = statistics.fmean(sizes)
        dz = [z - ms for z in sizes]
        szz = sum(d * d for d in dz)
        sxz = sum(a * b for a, b in zip(dx, dz, strict=True))
        det = sxx * szz - sxz * sxz
        if szz > 0 and det > 1e-9 * sxx * szz:  # sizes that vary, and not in step with xs
            return (szz * sxy - sxz * sum(a * b for a, b in zip(dz, dy, strict=True))) / det
    return sxy / sxx


def curves(series: dict[str, list[dict[str, float]]], events: int) -> dict[str, Any]:
    """Slopes per event of each long-lived process (sampled from the first to the last event)."""
    out = {}
    for name, all_samples in sorted(series.items()):
        if not all_samples or all_samples[0]["events"] > 0 or all_samples[-1]["events"] < events:
            continue  # not alive for the whole run: a joiner, or a node that was removed
        # from the first event on (not the start-up, whose imports grow a process without
        # any fault), and not a process caught exiting
        samples = [s for s in all_samples if s["events"] >= 1 and s["rss_mib"] > 0]
        if len(samples) < 10:
            continue
        xs = [s["events"] for s in samples]
        sizes = [s["size"] for s in samples]
        out[name] = {
            "samples": len(samples),
            **{f"{k}_first": round(samples[0][k], 2) for k in SLOPE_LIMITS},
            **{f"{k}_last": round(samples[-1][k], 2) for k in SLOPE_LIMITS},
            **{f"{k}_per_event": round(slope(xs, [s[k] for s in samples], sizes), 4) for k in SLOPE_LIMITS},
        }
    return out


def run_job(cfg: JobConfig) -> tuple[LocalJob, ResourceSampler, dict[str, Any]]:
    job = LocalJob(cfg)
    with ResourceSampler(job) as sampler:
        wall = asyncio.run(job.run())
    sidecar = eventlog.read(sorted((cfg.out / "sidecars").glob("*.events.jsonl")))
    trainer = eventlog.read(job.trainer_logs())
    return job, sampler, summarize(cfg, job.injected, sidecar, trainer, wall) | {"_trainer": trainer}


def measure(args: argparse.Namespace, workdir: Path, say) -> dict[str, Any]:
    initial = [f"n{i}" for i in range(args.nodes)]
    steps = int(args.failures * args.every / 0.8) + 2 * args.every  # the generator uses 80 % of the run
    churn = random_churn(args.seed, initial, steps, events=args.failures, min_size=args.min_size,
                         kinds=CHAOS_KINDS, max_size=args.min_size + 2)  # fmt: skip
    common = dict(nodes=args.nodes, steps=steps, live=False, hidden=HIDDEN, digest_every=10,
                  stall_limit_s=STALL_LIMIT_S, hosts=args.hosts)  # fmt: skip
    say(f"long-haul: {args.failures} events over {steps} steps, {args.nodes} nodes; failure-free run first")
    _, _, calm = run_job(JobConfig(churn=[], out=workdir / "calm", **common))
    say(f"long-haul: failure-free {calm['wall_s']} s, final loss {calm['final_loss']}; now the faulty run")
    result: dict[str, Any] = {"scenario": "long-haul", "failures": args.failures, "nodes": args.nodes,
                              "steps": steps, "seed": args.seed, "hosts": args.hosts,
                              "events_per_kind": dict(Counter(e.event for e in churn))}  # fmt: skip
    try:
        job, sampler, faulty = run_job(JobConfig(churn=churn, out=workdir / "faulty", **common))
    except JobStalled as exc:
        return result | {"ok": False, "failed": [f"stalled: {exc.reason}"], "stuck": exc.nodes}
    trainer = faulty.pop("_trainer")
    calm.pop("_trainer")
    injected = Counter(i.event.event for i in job.injected)
    loss_difference = abs(faulty["final_loss"] - calm["final_loss"]) / max(abs(calm["final_loss"]), 1e-12)
    resources = curves(sampler.series, len(job.injected))
    leaks = [f"{name} {k}: {c[f'{k}_per_event']} per event > {limit}" for name, c in resources.items()
             for k, limit in SLOPE_LIMITS.items() if c[f"{k}_per_event"] > limit]  # fmt: skip
    if len(job.injected) < LEAK_MIN_EVENTS:
        leaks = []  # too few events to tell a leak from the group's size changing: slopes reported only
    failed = []
    if not faulty["replicas_identical"]:
        failed.append("replicas diverged")
    if faulty["samples_lost"] or faulty["samples_duplicated"]:
        failed.append(f"samples lost {faulty['samples_lost']}, duplicated {faulty['samples_duplicated']}")
    if faulty["steps"] != steps:
        failed.append(f"the faulty run ended at step {faulty['steps']} of {steps}")
    if loss_difference > args.loss_tolerance:
        failed.append(f"final loss differs by {loss_difference:.2%} (> {args.loss_tolerance:.0%})")
    if not resources:
        failed.append("no process lived through the whole run: no resource curve")
    failed += leaks
    failed += [f"{node} held {peak['snapshots']} snapshots at once (> {SNAPSHOTS_HELD_LIMIT})"
               for node, peak in sorted(sampler.snapshots_peak.items())
               if peak["snapshots"] > SNAPSHOTS_HELD_LIMIT]  # fmt: skip
    regroups = sum(1 for r in trainer if r.kind is Kind.REGROUP)
    # a joiner's trainer takes seconds to start: a later event may remove it first
    joiners_in = {r.node for r in trainer if r.kind is Kind.REGROUP} - set(initial)
    result |= {
        "ok": not failed,
        "failed": failed,
        "events_injected": sum(injected.values()),
        "events_injected_per_kind": dict(injected),
        "final_loss_failure_free": calm["final_loss"],
        "final_loss_with_failures": faulty["final_loss"],
        "final_loss_relative_difference": round(loss_difference, 6),
        "replicas_identical": faulty["replicas_identical"],
        "sample_accounting": faulty["sample_accounting"],
        "samples_lost": faulty["samples_lost"],
        "samples_duplicated": faulty["samples_duplicated"],
        "samples_redone": faulty.get("samples_redone", 0),
        "steps_redone": faulty.get("samples_redone", 0) // 256,
        "regroups": regroups,
        "joiners_trained": len(joiners_in),
        "state_pulls": sum(1 for r in trainer if r.kind is Kind.PULLED),
        "wall_s_failure_free": calm["wall_s"],
        "wall_s_with_failures": faulty["wall_s"],
        "time_lost_s": round(faulty["wall_s"] - calm["wall_s"], 1),
        "slope_limits_per_event": SLOPE_LIMITS,
        "slopes_judged": len(job.injected) >= LEAK_MIN_EVENTS,
        "resources": resources,
        "snapshots_held_limit": SNAPSHOTS_HELD_LIMIT,
        "snapshots_held_peak": dict(sorted(sampler.snapshots_peak.items())),
        "_series": dict(sampler.series),
        "_losses": {
            "failure_free": _losses(
                eventlog.read(sorted((workdir / "calm" / "logs").glob("*.trainer.jsonl")))
            ),
            "with_failures": _losses(trainer),
        },
        "_event_steps": [(i.step, i.event.event) for i in job.injected],
    }
    return result


def _losses(trainer: list[dict[str, Any]]) -> list[tuple[int, float]]:
    by_step = {r["step"]: r["loss"] for r in trainer if r.kind is Kind.STEP}
    return sorted(by_step.items())


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=False)
    for label, points in result["_losses"].items():
        axes[0].plot([s for s, _ in points], [v for _, v in points], label=label.replace("_", " "), lw=1)
    for step, _kind in result["_event_steps"]:
        axes[0].axvline(step, color="grey", alpha=0.2, lw=0.5)
    axes[0].set(xlabel="step", ylabel="loss", yscale="log",
                title=f"{result['events_injected']} events (grey lines), loss with and without")  # fmt: skip
    axes[0].legend()
    for ax, key, unit in zip(axes[1:], ("rss_mib", "fds", "threads"), ("MiB", "count", "count"), strict=True):
        for name in result["resources"]:
            samples = result["_series"][name]
            ax.plot([s["events"] for s in samples], [s[key] for s in samples], label=name, lw=1)
        ax.set(xlabel="events injected so far", ylabel=f"{key} ({unit})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--failures", type=positive_int, default=200, help="events to inject")
    parser.add_argument("--nodes", type=positive_int, default=4, help="founding members")
    parser.add_argument("--min-size", type=positive_int, default=4, help="the group never drops below this")
    parser.add_argument("--every", type=positive_int, default=6, help="steps between events (on average)")
    parser.add_argument("--seed", type=positive_int, default=1)
    parser.add_argument("--hosts", choices=("loopback", "netns"), default="loopback")
    parser.add_argument(
        "--loss-tolerance", type=float, default=0.02, help="final loss may differ by this fraction"
    )
    parser.add_argument("--png", help="draw loss of both runs with the events, and the resource curves")
    parser.add_argument("--logs", default="out/long-haul", help="both runs' job directories (replaced)")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.min_size > args.nodes:
        from chaos_sidecar.errors import InputError

        raise InputError("--min-size", f"{args.min_size} is more than --nodes {args.nodes}")
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    workdir = Path(args.logs)
    shutil.rmtree(workdir, ignore_errors=True)
    result = measure(args, workdir.resolve(), say)
    if args.png and "_losses" in result:
        plot(result, Path(args.png))
    for key in ("_series", "_losses", "_event_steps"):
        result.pop(key, None)
    return result
