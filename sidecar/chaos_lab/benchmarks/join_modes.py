"""What a join costs the members: blocking against overlap joins, side by side in one run.

The same local job (3 founding nodes, the built-in model, two joins) runs once per join mode.
For every join and every member: idle = the time it waited because of the join: its regroup
pause (blocking: the joiner's transfer is inside), in overlap mode also starting the copy of
snapshot S and waiting for that copy before its next update, plus how much longer its first
step's all-reduce waited than usual. Reported per join as the worst member; the ratio compares
the means. Also reported, not in the ratio: the regroup pause plus how much longer the first
step took than a usual one (wall clock), which also counts computing slower while an overlap
joiner replays on the same cores (on one machine all processes share them).

The members' lost throughput while an overlap lasts is reported too: the wall time from their
last step before it to their last step in it, less as many steps at the pace of the 40 steps
before the join (the same group with no join); ``lost_wall_ms`` adds it to the switch's wall
clock, so that a blocking join (no overlap) and an overlap join compare whole.

"Than usual" is against the new group's own steps once it settled: the 40 steps after the
joiner is in (the regroup for blocking, its "entered" for overlap). Against the steps before the
join, the first step would also be charged for the bigger group, whose every all-reduce waits
longer (one run: 18 ms with 3 members, 28 ms with 4); that figure is still reported as
``idle_vs_before_ms``. Neither is clipped at zero: one step's wait scatters around the mean by
several ms either way, and counting only its excess would charge a join for noise that a step
with no join shows as well. Single members can thus show a small negative extra; the means
over members and joins are unbiased.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

from chaos_lab.churn import ChurnEvent
from chaos_lab.jobreport import summarize
from chaos_lab.localjob import JobConfig, LocalJob
from chaos_sidecar import eventlog
from chaos_sidecar.cliutil import positive_int
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import Kind, Record

FOUNDING = 3
MODES = ("blocking", "overlap")
FALLBACKS = {
    Kind.OVERLAP_DECLINED,
    Kind.POSTED_GROUP_SKIPPED,
    Kind.COLLECTIVE_FAILED,
    Kind.RENDEZVOUS_FAILED,
    Kind.RECONCILE_FAILED,
    Kind.WRITE_FAILED,
}
USUAL_STEPS = 40  # a group's usual step: the mean of this many once it settled
FEWEST_USUAL = 10  # fewer settled steps before the group changes again: no usual step


def member_costs(trainer: list[Record], joiner: str) -> dict[str, dict[str, float | None]]:
    """Per member of the view that let ``joiner`` in, in ms: idle (its waiting: pauses and the
    first step's extra all-reduce wait), the switch's wall-clock excess over a usual step,
    and the overlap step time. A member whose new group changed again before it took
    FEWEST_USUAL settled steps has no usual step: its costs that need one are None."""
    regroups = [r for r in trainer if r.kind is Kind.REGROUP and joiner in r["members"] and r.node != joiner]
    first_epoch = min((r["epoch"] for r in regroups), default=None)
    costs: dict[str, dict[str, float | None]] = {}
    for regroup in (r for r in regroups if r["epoch"] == first_epoch):
        node = regroup.node
        mine = [r for r in trainer if r.node == node]
        steps = [r for r in mine if r.kind is Kind.STEP]
        starts = [r for r in mine if r.kind is Kind.OVERLAP_START and r["epoch"] == first_epoch]
        waits = [r["wait_ms"] for r in mine if r.kind is Kind.CAPTURE_WAIT and r["epoch"] == first_epoch]
        began = starts[0].t if starts else regroup.t
        first = next((r for r in steps if r.t > regroup.t), None)
        settled = _settled_steps(trainer, mine, steps, joiner, regroup, first)
        before = [r for r in steps if r.t < began][-USUAL_STEPS:]
        window = [r for r in steps if began < r.t < regroup.t]  # the steps taken during an overlap
        overlap_gaps = [b.t - a.t for a, b in itertools.pairwise(window)]
        pauses = regroup["pause_ms"] + sum(s["pause_ms"] for s in starts) + sum(waits)
        extra_wait = _first_wait_extra(first, settled)
        extra_before = _first_wait_extra(first, before)
        usual = _mean_gap_ms(settled)
        slower = _overlap_extra_ms(window, before, _mean_gap_ms(before))
        # wall clock: the regroup pause plus the first step beyond a usual one (includes
        # computing slower while the joiner's replay shares this machine's cores)
        if first is None or usual is None:
            switch = 0.0 if first is None else None
        else:
            switch = (first.t - regroup.t) * 1000 - usual
        costs[node] = {
            "pause_ms": pauses,
            "first_wait_extra_ms": extra_wait,
            "idle_ms": None if extra_wait is None else pauses + extra_wait,
            "idle_vs_before_ms": None if extra_before is None else pauses + extra_before,
            "switch_extra_ms": None if switch is None else switch + regroup["pause_ms"],
            "usual_step_ms": usual,
            "lost_wall_ms": None
            if switch is None or slower is None
            else switch + regroup["pause_ms"] + slower,
            "overlap_step_ms": statistics.median(overlap_gaps) * 1000 if overlap_gaps else None,
            "overlap_steps": len(window),
            "overlap_extra_wall_ms": slower,
        }
    return costs


def _overlap_extra_ms(window: list[Record], before: list[Record], usual_before: float | None) -> float | None:
    """The members' lost throughput while an overlap lasts: the wall time from their last
    step before it to their last step in it, less the same number of steps at the group's
    usual pace before the join (its starting pause and copy waits included; the regroup at
    its end is in the switch). 0 without an overlap; None without a usual pace."""
    if not window:
        return 0.0
    if usual_before is None or not before:
        return None
    return (window[-1].t - before[-1].t) * 1000 - len(window) * usual_before


def _settled_steps(
    trainer: list[Record], mine: list[Record], steps: list[Record], joiner: str, regroup: Record,
    first: Record | None,
) -> list[Record]:  # fmt: skip
    """A member's steps in the joined group once the joiner is in, up to the next change."""
    if first is None:
        return []
    entered = next((r.t for r in trainer if r.node == joiner and r.kind is Kind.ENTERED
                    and r.t > regroup.t), first.t)  # fmt: skip
    changes = [r.t for r in mine if r.kind in (Kind.OVERLAP_START, Kind.REGROUP) and r.t > regroup.t]
    end = min(changes, default=math.inf)
    after = [r for r in steps if max(entered, first.t) < r.t < end]
    return after[:USUAL_STEPS] if len(after) >= FEWEST_USUAL else []


def _first_wait_extra(first: Record | None, usual: list[Record]) -> float | None:
    if first is None:
        return 0.0
    if len(usual) < 2:
        return None
    return first["allreduce_ms"] - statistics.fmean(r["allreduce_ms"] for r in usual)


def _mean_gap_ms(steps: list[Record]) -> float | None:
    if len(steps) < 2:
        return None
    return statistics.fmean(b.t - a.t for a, b in itertools.pairwise(steps)) * 1000


def run_mode(mode: str, steps: int, workdir: Path, hidden: int | None = None) -> dict[str, Any]:
    at = [steps // 4, (steps * 3) // 5]
    churn = [ChurnEvent(at_step=s, event="join", node=f"n{FOUNDING + i}") for i, s in enumerate(at)]
    # replica digests (tens of ms of hashing at every view change) are a check, not training:
    # off in both modes; the final digests are still compared
    cfg = JobConfig(nodes=FOUNDING, steps=steps, churn=churn, out=workdir / mode, live=False,
                    join_mode=mode, digest_every=0, hidden=hidden)  # fmt: skip
    job = LocalJob(cfg)
    wall = asyncio.run(job.run())
    sidecar = eventlog.read(sorted((cfg.out / "sidecars").glob("*.events.jsonl")))
    trainer = eventlog.read(sorted((cfg.out / "logs").glob("*.trainer.jsonl")))
    summary = summarize(cfg, job.injected, sidecar, trainer, wall)
    joins = [join_row(event, member_costs(trainer, event.node), trainer) for event in churn]

    def mean(key: str) -> float | None:
        values = [j[key] for j in joins if j[key] is not None]
        return round(statistics.fmean(values), 1) if values else None

    return {
        "ok": summary["ok"],
        "replicas_identical": summary["replicas_identical"],
        "samples_lost": summary["samples_lost"],
        "samples_duplicated": summary["samples_duplicated"],
        "joins": joins,
        "idle_ms_mean": mean("idle_ms_mean"),
        "idle_vs_before_ms_mean": mean("idle_vs_before_ms_mean"),
        "switch_extra_ms_mean": mean("switch_extra_ms_mean"),
        "overlap_extra_wall_ms_mean": mean("overlap_extra_wall_ms_mean"),
        "lost_wall_ms_mean": mean("lost_wall_ms_mean"),
        "wall_s": summary["wall_s"],
    }


def join_row(event: ChurnEvent, costs: dict[str, dict[str, float]], trainer: list[Record]) -> dict[str, Any]:
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
        "idle_vs_before_ms_mean": rounded(column("idle_vs_before_ms"), statistics.fmean),
        "pause_ms_max": rounded(column("pause_ms"), max),
        "first_wait_extra_ms_max": rounded(column("first_wait_extra_ms"), max),
        "switch_extra_ms_mean": rounded(column("switch_extra_ms"), statistics.fmean),
        "usual_step_ms": rounded(column("usual_step_ms"), statistics.median),
        "overlap_step_ms": rounded(column("overlap_step_ms"), statistics.median),
        "overlap_steps": rounded(column("overlap_steps"), statistics.median),
        "overlap_extra_wall_ms_mean": rounded(column("overlap_extra_wall_ms"), statistics.fmean),
        # the members' whole wall-clock loss: the switch plus the slower steps during an overlap
        "lost_wall_ms_mean": rounded(column("lost_wall_ms"), statistics.fmean),
        "entered_by_replay": any(r.kind is Kind.ENTERED and r.node == event.node for r in trainer),
        # why an overlap joiner pulled the state instead, if it did
        "joiner_events": sorted({r.kind for r in trainer if r.node == event.node} & FALLBACKS),
    }


def measure(steps: int, workdir: Path, hidden: int | None = None, runs: int = 1) -> dict[str, Any]:
    """``runs`` runs per mode, alternating modes so that drift in the machine's load hits both;
    means are over every join of every run."""
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for run in range(runs):
        for mode in MODES:
            results[mode].append(run_mode(mode, steps, workdir / f"run{run}", hidden))

    def mean(mode: str, key: str) -> float | None:
        values = [j[key] for r in results[mode] for j in r["joins"] if j[key] is not None]
        return round(statistics.fmean(values), 1) if values else None

    modes = {
        mode: {
            "ok": all(r["ok"] for r in results[mode]),
            "idle_ms_mean": mean(mode, "idle_ms_mean"),
            "idle_vs_before_ms_mean": mean(mode, "idle_vs_before_ms_mean"),
            "switch_extra_ms_mean": mean(mode, "switch_extra_ms_mean"),
            "overlap_extra_wall_ms_mean": mean(mode, "overlap_extra_wall_ms_mean"),
            "lost_wall_ms_mean": mean(mode, "lost_wall_ms_mean"),
            "entered_by_replay": sum(j["entered_by_replay"] for r in results[mode] for j in r["joins"]),
            "joins": sum(len(r["joins"]) for r in results[mode]),
            "runs": results[mode],
        }
        for mode in MODES
    }

    def ratio(key: str) -> float | None:
        blocking, overlap = modes["blocking"][key], modes["overlap"][key]
        return round(overlap / blocking, 3) if blocking and overlap is not None else None

    return {
        "scenario": "join-modes",
        "steps": steps,
        "founding": FOUNDING,
        "hidden": hidden,
        "runs": runs,
        "modes": modes,
        "overlap_to_blocking_idle": ratio("idle_ms_mean"),
        "overlap_to_blocking_idle_vs_before": ratio("idle_vs_before_ms_mean"),
        "overlap_to_blocking_switch_wall": ratio("switch_extra_ms_mean"),
        "overlap_to_blocking_lost_wall": ratio("lost_wall_ms_mean"),
        "failed": not all(m["ok"] for m in modes.values()),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=positive_int, default=300, help="training steps per run")
    parser.add_argument(
        "--hidden", type=positive_int, help="the built-in model's hidden width (default 1024)"
    )
    parser.add_argument("--runs", type=positive_int, default=3, help="runs per mode, alternating")
    parser.add_argument(
        "--keep-logs", metavar="DIR", help="run in DIR (new or empty) and keep every run's logs"
    )


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.keep_logs:  # every run's job directory (logs, summary) stays for a look afterwards
        return measure(args.steps, empty_directory(args.keep_logs), args.hidden, args.runs)
    with tempfile.TemporaryDirectory(prefix="chaos-join-modes-") as tmp:
        return measure(args.steps, Path(tmp), args.hidden, args.runs)


def empty_directory(path: str) -> Path:
    """``path`` as a directory to write into: created if missing, refused if not empty (the
    runs' directories inside it would be replaced)."""
    directory = Path(path)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InputError("--keep-logs", f"{directory} exists and is not an empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    return directory
