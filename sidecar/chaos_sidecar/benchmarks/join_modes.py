"""What a join costs the members: blocking against overlap joins, side by side in one run.

The same local job (3 founding nodes, the built-in model, two joins) runs once per join mode.
For every join and every member: idle = its pause at the join (overlap: the copy of snapshot
S, plus the regroup) + how much longer its first step in the new group took than its usual
step (an overlap joiner replays its last steps inside that step, members wait for it in the
all-reduce). Reported per join as the worst member; the ratio compares the means.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
from pathlib import Path
from typing import Any

from chaos_sidecar.churn import ChurnEvent
from chaos_sidecar.jobreport import read_jsonl, summarize
from chaos_sidecar.localjob import JobConfig, LocalJob

FOUNDING = 3
MODES = ("blocking", "overlap")


def member_costs(trainer: list[dict[str, Any]], joiner: str) -> dict[str, dict[str, float]]:
    """Per member of the view that let ``joiner`` in: pause, first-step excess and overlap
    step time, in ms."""
    regroups = [
        r for r in trainer if r["type"] == "regroup" and joiner in r["members"] and r["node"] != joiner
    ]
    first_epoch = min((r["epoch"] for r in regroups), default=None)
    costs: dict[str, dict[str, float]] = {}
    for regroup in (r for r in regroups if r["epoch"] == first_epoch):
        node = regroup["node"]
        steps = [r for r in trainer if r["type"] == "step" and r["node"] == node]
        before = [r["t"] for r in steps if r["t"] < regroup["t"]]
        usual = statistics.median(b - a for a, b in itertools.pairwise(before[-40:]))
        after = next((r["t"] for r in steps if r["t"] > regroup["t"]), regroup["t"])
        starts = [
            r for r in trainer
            if r["type"] == "overlap_start" and r["node"] == node and r["epoch"] == first_epoch
        ]  # fmt: skip
        overlap_gaps = []
        if starts:
            window = [t for t in before if t > starts[0]["t"]]
            overlap_gaps = [b - a for a, b in itertools.pairwise(window)]
        pause = regroup["pause_ms"] + sum(s["pause_ms"] for s in starts)
        extra = max(0.0, (after - regroup["t"] - usual) * 1000)
        costs[node] = {
            "pause_ms": pause,
            "first_step_extra_ms": extra,
            "idle_ms": pause + extra,
            "usual_step_ms": usual * 1000,
            "overlap_step_ms": statistics.median(overlap_gaps) * 1000 if overlap_gaps else None,
        }
    return costs


def run_mode(mode: str, steps: int, workdir: Path, hidden: int | None = None) -> dict[str, Any]:
    at = [steps // 4, (steps * 3) // 5]
    churn = [ChurnEvent(at_step=s, event="join", node=f"n{FOUNDING + i}") for i, s in enumerate(at)]
    # replica digests (tens of ms of hashing at every view change) are a check, not training:
    # off in both modes; the final digests are still compared
    cfg = JobConfig(nodes=FOUNDING, steps=steps, churn=churn, out=workdir / mode, live=False,
                    join_mode=mode, digest_every=0, hidden=hidden)  # fmt: skip
    job = LocalJob(cfg)
    wall = asyncio.run(job.run())
    sidecar = read_jsonl(sorted((cfg.out / "sidecars").glob("*.events.jsonl")))
    trainer = read_jsonl(sorted((cfg.out / "logs").glob("*.trainer.jsonl")))
    summary = summarize(cfg, job.injected, sidecar, trainer, wall)
    joins = [join_row(event, member_costs(trainer, event.node), trainer) for event in churn]
    means = [j["idle_ms_mean"] for j in joins if j["idle_ms_mean"] is not None]
    return {
        "ok": summary["ok"],
        "replicas_identical": summary["replicas_identical"],
        "samples_lost": summary["samples_lost"],
        "samples_duplicated": summary["samples_duplicated"],
        "joins": joins,
        "idle_ms_mean": round(statistics.fmean(means), 1) if means else None,
        "wall_s": summary["wall_s"],
    }


def join_row(event: ChurnEvent, costs: dict[str, dict[str, float]], trainer: list[dict]) -> dict[str, Any]:
    def column(key: str) -> list[float]:
        return [c[key] for c in costs.values() if c[key] is not None]

    def rounded(values: list[float], how) -> float | None:
        return round(how(values), 1) if values else None

    return {
        "joiner": event.node,
        "at_step": event.at_step,
        "members": len(costs),
        "idle_ms_max": rounded(column("idle_ms"), max),
        "idle_ms_mean": rounded(column("idle_ms"), statistics.fmean),
        "pause_ms_max": rounded(column("pause_ms"), max),
        "first_step_extra_ms_max": rounded(column("first_step_extra_ms"), max),
        "usual_step_ms": rounded(column("usual_step_ms"), statistics.median),
        "overlap_step_ms": rounded(column("overlap_step_ms"), statistics.median),
        "entered_by_replay": any(r["type"] == "entered" and r["node"] == event.node for r in trainer),
    }


def measure(steps: int, workdir: Path, hidden: int | None = None) -> dict[str, Any]:
    modes = {mode: run_mode(mode, steps, workdir, hidden) for mode in MODES}
    blocking, overlap = modes["blocking"]["idle_ms_mean"], modes["overlap"]["idle_ms_mean"]
    return {
        "scenario": "join-modes",
        "steps": steps,
        "founding": FOUNDING,
        "hidden": hidden,
        "modes": modes,
        "overlap_to_blocking_idle": round(overlap / blocking, 3) if blocking else None,
        "failed": not all(m["ok"] for m in modes.values()),
    }


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chaos-join-modes-") as tmp:
        return measure(args.steps, Path(tmp), args.hidden)
