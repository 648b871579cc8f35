"""Chaos rounds: the local job on real processes under random faults, checked after each round.

Each round is ``chaos-train local`` with checkpoints on (every CHECKPOINT_EVERY steps) and a
seeded churn (:func:`chaos_schedule`): first two kills aimed at the moments where a kill hurts
most (a joiner's state transfer, from the joiner's or a source's side, a checkpoint write, a
regroup), each fired once the harness observes its moment in the trainers' logs
(chaos_lab.kills), then random faults of every kind: whole-node kill -9, trainer-only and
sidecar-only kill -9, graceful leaves, joins, links cut and restored, links slowed to a few
MB/s. Where each kill landed is decided after the round from the trainers' logs, not from
what it aimed at (each round's under ``round_kills``, summed in ``kills_landed``: one count per
moment and per process kind); a run in which a category of chaos_lab.kills.REQUIRED landed fewer than
``--min-landed`` times says so (``kills_missing``) and fails. After the round:

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
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from chaos_lab.churn import CHAOS_KINDS, ChurnEvent, parse_churn, random_churn
from chaos_lab.jobreport import summarize
from chaos_lab.kills import KILLS, TARGET, classify, landed_counts, missing
from chaos_lab.localjob import JobConfig, JobStalled, LocalJob
from chaos_sidecar import eventlog
from chaos_sidecar.cliutil import non_negative_int, positive_int
from chaos_sidecar.eventlog import Kind, Record

NODES = 4
STEPS = 180
SAMPLES = 4096
CHECKPOINT_EVERY = 5  # one member writes a checkpoint every 5 steps (they take turns)
SLOW_MBPS = 3.0  # the founders' uploads while the aimed kills wait: a joiner's pull lasts ~1 s
AIMS = ("pull", "serve", "regroup")  # the first aimed kill of round SEED: AIMS[SEED % 3]
FIRST_DEADLINE = 40  # an aimed kill whose moment has not come by this step fires anyway
SECOND_DEADLINE = 90
RANDOM_FROM = 100  # the random faults: RANDOM_EVENTS of them at steps RANDOM_FROM + 8..72
RANDOM_SPAN = 80
RANDOM_EVENTS = 3
MIN_LANDED = 3  # every category of chaos_lab.kills.REQUIRED must land this often in a run
KEEP_FAILED = Path("out/chaos-rounds")
# A round takes 60-150 s on 2 busy cores; a group that has not stepped for STALL_LIMIT_S (scripted
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


def chaos_schedule(seed: int, initial: list[str] | None = None) -> list[ChurnEvent]:
    """A round's churn: the aimed kills first, then random faults of every kind.

    A joiner starts at once and the founders' uploads are slowed to SLOW_MBPS, so its pull
    lasts about a second. Two kills then wait for their moment (each with a deadline step):
    by ``seed % 3`` the joiner during its pull, or a founder while it is a source of that
    pull, each followed by a founder during its checkpoint write; or a founder during its
    checkpoint write, then another during the regroup that follows. Which founder and which
    process (node, trainer only, sidecar only) come from the seed. The random part
    (chaos_lab.churn.random_churn on the three survivors) follows from step RANDOM_FROM."""
    initial = initial or [f"n{i}" for i in range(NODES)]
    rng = random.Random(f"kills-{seed}")
    joiner = f"n{len(initial)}"
    plan: list[dict[str, Any]] = [{"at_s": 0.1, "event": "join", "node": joiner}]
    plan += [{"at_s": 0.1, "event": "slow_link", "node": n, "rate_mbps": SLOW_MBPS} for n in initial]
    others = list(initial[1:])  # the founder stays (as in every churn script)
    writer = rng.choice(others)
    others.remove(writer)

    def kill(on: str, node: str, deadline: int) -> dict[str, Any]:
        return {"at_step": deadline, "event": rng.choice(KILLS), "node": node, "on": on}

    aim = AIMS[seed % len(AIMS)]
    if aim == "regroup":
        victims = [writer, rng.choice(others)]
        plan += [kill("checkpoint", victims[0], FIRST_DEADLINE), kill("regroup", victims[1], SECOND_DEADLINE)]
    else:
        victims = [joiner if aim == "pull" else rng.choice(others), writer]
        plan += [kill(aim, victims[0], FIRST_DEADLINE), kill("checkpoint", victims[1], SECOND_DEADLINE)]
    survivors = [n for n in [*initial, joiner] if n not in victims]
    # random_churn names its nodes n0.. (n0 the founder) and its joiners from there: map them
    placeholders = [f"n{i}" for i in range(len(survivors))]
    later = random_churn(seed, placeholders, RANDOM_SPAN, events=RANDOM_EVENTS, kinds=CHAOS_KINDS)
    fresh = iter(f"n{i}" for i in range(len(initial) + 1, 100))
    names = dict(zip(placeholders, survivors, strict=True))
    for event in later:
        if event.event == "join":
            names[event.node] = next(fresh)
        shifted = event.to_json() | {"at_step": event.at_step + RANDOM_FROM, "node": names[event.node]}
        if event.peer is not None:
            shifted["peer"] = names[event.peer]
        plan.append(shifted)
    return parse_churn(plan, initial, STEPS)


def run_round(seed: int, workdir: Path) -> dict[str, Any]:
    churn = chaos_schedule(seed)
    out = workdir / f"round-{seed}"
    cfg = JobConfig(nodes=NODES, steps=STEPS, churn=churn, out=out, live=False,
                    samples=SAMPLES, global_batch=128, digest_every=5,
                    checkpoint_dir=out / "checkpoints", checkpoint_every=CHECKPOINT_EVERY,
                    deadline_s=DEADLINE_S, stall_limit_s=STALL_LIMIT_S)  # fmt: skip
    job = LocalJob(cfg)
    wall = asyncio.run(job.run())
    sidecar = eventlog.read(sorted((cfg.out / "sidecars").glob("*.events.jsonl")))
    trainer = eventlog.read(sorted((cfg.out / "logs").glob("*.trainer.jsonl")))
    summary = summarize(cfg, job.injected, sidecar, trainer, wall)
    kills = [
        {"node": i.event.node, "event": i.event.event, "on": i.event.on, "fired": i.fired,
         "step": i.step, "t": i.t}
        for i in job.injected
        if i.event.event in KILLS
    ]  # fmt: skip
    classified = classify(kills, trainer)
    for kill in classified:
        del kill["t"]
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
        "kills": classified,
        "wall_s": summary["wall_s"],
    }


def keep(workdir: Path, seed: int) -> None:
    """Keep a failed round's logs (out/chaos-rounds/round-SEED) for a replay."""
    target = KEEP_FAILED / f"round-{seed}"
    shutil.rmtree(target, ignore_errors=True)
    if (workdir / f"round-{seed}").exists():
        shutil.copytree(workdir / f"round-{seed}", target, ignore_dangling_symlinks=True)
    shutil.rmtree(workdir / f"round-{seed}", ignore_errors=True)


def measure(rounds: int, first_seed: int, workdir: Path, log, min_landed: int = MIN_LANDED) -> dict[str, Any]:
    totals = dict.fromkeys(("divergent", "lost", "duplicated", "split_brain", "survivor_restarts"), 0)
    failed_rounds: list[dict[str, Any]] = []
    kinds: dict[str, int] = defaultdict(int)
    kills: list[dict[str, Any]] = []
    rounds_kills: list[dict[str, Any]] = []  # per round: its kills, where each landed
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
        kills += result["kills"]
        rounds_kills.append({"seed": seed, "wall_s": result["wall_s"], "kills": result["kills"]})
        bad = [f"{key}={result[key]}" for key in totals if result[key]]
        if not result["ok"] or bad:
            fail(
                seed, "checks failed: " + (", ".join(bad) or f"{result['steps']} steps, replicas or samples")
            )
        else:
            landed = ", ".join(f"{k['event']} {k['node']} {k['landed']}" for k in result["kills"])
            log(f"round {seed}: ok {result['wall_s']} s events {','.join(result['events'])}; kills: {landed}")
        shutil.rmtree(workdir / f"round-{seed}", ignore_errors=True)
    failures = [r["seed"] for r in failed_rounds]
    landed = landed_counts(kills)
    short = missing(landed, min_landed)
    for category, n in short.items():
        log(f"kills: {category} landed {n} times, fewer than the {min_landed} required")
    return {
        "scenario": "chaos",
        "rounds": rounds,
        "first_seed": first_seed,
        **totals,
        "failures": failures,
        "failed_rounds": failed_rounds,
        "events_by_kind": dict(sorted(kinds.items())),
        "kills_landed": landed,
        "kills_aimed": aimed(kills),
        "min_landed": min_landed,
        "kills_missing": short,
        "round_kills": rounds_kills,
        "wall_s": round(time.monotonic() - started, 1),
        "failed": bool(failures) or bool(short),
    }


def aimed(kills: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per moment a kill waited for: how many there were, how many fired on observing it
    (the others at their deadline), and how many landed there by the logs."""
    out: dict[str, dict[str, int]] = {}
    for on, moment in TARGET.items():
        mine = [k for k in kills if k["on"] == on]
        out[on] = {
            "kills": len(mine),
            "fired_on_observation": sum(k["fired"] == "observed" for k in mine),
            "landed_there": sum(k["landed"] == moment for k in mine),
        }
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=positive_int, default=10, help="rounds of random faults")
    parser.add_argument("--seed", type=non_negative_int, default=1, help="seed of the first round")
    parser.add_argument(
        "--min-landed", type=non_negative_int, default=MIN_LANDED,
        help="each kill category (chaos_lab.kills.REQUIRED) must land at least this often, or the run fails",
    )  # fmt: skip


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="chaos-rounds-", dir=parent) as tmp:
        return measure(
            args.rounds, args.seed, Path(tmp), lambda line: print(line, flush=True, file=sys.stderr),
            args.min_landed,
        )  # fmt: skip
