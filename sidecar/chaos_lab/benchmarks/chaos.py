"""Chaos rounds: the local job on real processes under random faults, checked after each round.

Each round is ``chaos-train local`` with a seeded random churn of every fault kind: whole-node
kill -9, trainer-only and sidecar-only kill -9, graceful leaves, joins, links cut and restored,
and links slowed to a few MB/s (so kills also land mid-transfer). Kills land wherever the
trainers are at that moment (compute, all-reduce, regroup or a state transfer). After the
round:

- ``divergent``: live replicas whose parameter + optimizer digests differ at some step;
- ``lost`` / ``duplicated``: samples of the committed steps not seen / seen twice;
- ``split_brain``: epochs for which two sidecars installed different views (all event logs);
- ``survivor_restarts``: nodes whose trainer started more than once.

A round that crashes, misses its steps, stalls (no step for ``STALL_LIMIT_S``) or runs past
``DEADLINE_S`` counts under ``failures`` with its seed, and under ``failed_rounds`` with the
reason and, for a stall, where each live node was stuck; its logs are kept in
``out/chaos-rounds/round-SEED`` and the next round runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from chaos_lab.churn import CHAOS_KINDS, random_churn
from chaos_lab.jobreport import summarize
from chaos_lab.localjob import JobConfig, JobStalled, LocalJob
from chaos_sidecar import eventlog
from chaos_sidecar.cliutil import non_negative_int, positive_int
from chaos_sidecar.eventlog import Kind, Record

NODES = 4
STEPS = 150
SAMPLES = 4096
EVENTS = 6
KEEP_FAILED = Path("out/chaos-rounds")
# A round takes 15-40 s on 2 cores; a group that has not stepped for STALL_LIMIT_S (scripted
# link-ups fire by time after 5 s of it) is stuck, not slow.
STALL_LIMIT_S = 45.0
DEADLINE_S = 300.0


def split_brain(sidecar: list[Record]) -> int:
    """Epochs installed with more than one member list anywhere."""
    views: dict[int, set[tuple[str, ...]]] = defaultdict(set)
    for r in sidecar:
        if r.kind is Kind.INSTALLED:
            views[r["epoch"]].add(tuple(r["members"]))
    return sum(1 for v in views.values() if len(v) > 1)


def restarts(trainer: list[Record]) -> int:
    pids: dict[str, set[int]] = defaultdict(set)
    for r in trainer:
        if r.kind is Kind.START:
            pids[r.node].add(r["pid"])
    return sum(1 for p in pids.values() if len(p) > 1)


KILLS = ("crash", "crash_trainer", "crash_sidecar")


def kill_moments(injected, trainer: list[Record]) -> dict[str, int]:
    """Where each kill landed: during a state transfer (some trainer was pulling), during a
    regroup, or while the group was stepping (compute and all-reduce)."""
    pulls = [(r.t - (r.get("seconds") or 0.0), r.t) for r in trainer if r.kind is Kind.PULLED]
    regroups = [(r.t - r["pause_ms"] / 1000, r.t) for r in trainer if r.kind is Kind.REGROUP]
    moments = {"mid_transfer": 0, "mid_regroup": 0, "mid_step": 0}
    for inj in injected:
        if inj.event.event not in KILLS:
            continue
        if any(a <= inj.t <= b for a, b in pulls):
            moments["mid_transfer"] += 1
        elif any(a <= inj.t <= b for a, b in regroups):
            moments["mid_regroup"] += 1
        else:
            moments["mid_step"] += 1
    return moments


def run_round(seed: int, workdir: Path) -> dict[str, Any]:
    initial = [f"n{i}" for i in range(NODES)]
    churn = random_churn(seed, initial, STEPS, events=EVENTS, kinds=CHAOS_KINDS)
    cfg = JobConfig(nodes=NODES, steps=STEPS, churn=churn, out=workdir / f"round-{seed}", live=False,
                    samples=SAMPLES, global_batch=128, digest_every=5,
                    deadline_s=DEADLINE_S, stall_limit_s=STALL_LIMIT_S)  # fmt: skip
    job = LocalJob(cfg)
    wall = asyncio.run(job.run())
    sidecar = eventlog.read(sorted((cfg.out / "sidecars").glob("*.events.jsonl")))
    trainer = eventlog.read(sorted((cfg.out / "logs").glob("*.trainer.jsonl")))
    summary = summarize(cfg, job.injected, sidecar, trainer, wall)
    return {
        "seed": seed,
        "ok": summary["ok"],
        "divergent": 0 if summary["replicas_identical"] else 1,
        "lost": summary["samples_lost"],
        "duplicated": summary["samples_duplicated"],
        "split_brain": split_brain(sidecar),
        "survivor_restarts": restarts(trainer),
        "steps": summary["steps"],
        "events": [e.event for e in churn],
        "kills": kill_moments(job.injected, trainer),
        "wall_s": summary["wall_s"],
    }


def keep(workdir: Path, seed: int) -> None:
    """Keep a failed round's logs (out/chaos-rounds/round-SEED) for a replay."""
    target = KEEP_FAILED / f"round-{seed}"
    shutil.rmtree(target, ignore_errors=True)
    if (workdir / f"round-{seed}").exists():
        shutil.copytree(workdir / f"round-{seed}", target, ignore_dangling_symlinks=True)
    shutil.rmtree(workdir / f"round-{seed}", ignore_errors=True)


def measure(rounds: int, first_seed: int, workdir: Path, log) -> dict[str, Any]:
    totals = dict.fromkeys(("divergent", "lost", "duplicated", "split_brain", "survivor_restarts"), 0)
    failed_rounds: list[dict[str, Any]] = []
    kinds: dict[str, int] = defaultdict(int)
    kills: dict[str, int] = defaultdict(int)
    started = time.monotonic()

    def fail(seed: int, reason: str, **details: Any) -> None:
        log(f"round {seed}: FAILED {reason}")
        failed_rounds.append({"seed": seed, "reason": reason, "logs": str(KEEP_FAILED / f"round-{seed}"),
                              **details})  # fmt: skip
        keep(workdir, seed)

    for seed in range(first_seed, first_seed + rounds):
        try:
            result = run_round(seed, workdir)
        except JobStalled as exc:  # a stalled group is an outcome to report, then the next round
            fail(seed, exc.reason, stuck=exc.nodes)
            continue
        except Exception as exc:  # a round that breaks is a finding, not the end of the run
            fail(seed, f"{type(exc).__name__}: {exc}")
            continue
        for key in totals:
            totals[key] += result[key]
        for kind in result["events"]:
            kinds[kind] += 1
        for moment, n in result["kills"].items():
            kills[moment] += n
        bad = [f"{key}={result[key]}" for key in totals if result[key]]
        if not result["ok"] or bad:
            fail(
                seed, "checks failed: " + (", ".join(bad) or f"{result['steps']} steps, replicas or samples")
            )
        else:
            log(f"round {seed}: ok {result['wall_s']} s events {','.join(result['events'])}")
        shutil.rmtree(workdir / f"round-{seed}", ignore_errors=True)
    failures = [r["seed"] for r in failed_rounds]
    return {
        "scenario": "chaos",
        "rounds": rounds,
        "first_seed": first_seed,
        **totals,
        "failures": failures,
        "failed_rounds": failed_rounds,
        "events_by_kind": dict(sorted(kinds.items())),
        "kills_landed": dict(kills),
        "wall_s": round(time.monotonic() - started, 1),
        "failed": bool(failures),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=positive_int, default=10, help="rounds of random faults")
    parser.add_argument("--seed", type=non_negative_int, default=1, help="seed of the first round")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="chaos-rounds-", dir=parent) as tmp:
        return measure(
            args.rounds, args.seed, Path(tmp), lambda line: print(line, flush=True, file=sys.stderr)
        )
