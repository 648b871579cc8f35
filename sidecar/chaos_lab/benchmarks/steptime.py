"""Steady-state step time: the elastic SDK with its sidecars against a plain loop.

Both run the built-in job (same model, data, global batch and all-reduce) on N processes of
this machine, one after the other in one run, alternating: plain, elastic, plain, ... (R
elastic runs between R + 1 plain ones). Each elastic run is compared with the mean of the
plain runs on either side (to cancel drift); the ratio is the median of those, reported with
its spread because back-to-back runs of the same loop differ by several per cent here.

Step time = rank 0's time from step WARMUP to its last step, divided by the steps: throughput,
so occasional long steps (a trainer preempted by a sidecar) count. While each run trains, the
CPU time of this process's children is read from /proc (Linux) and reported per training step
and per kind of process: with more trainers than cores, every millisecond a sidecar spends
comes out of the trainers, so this is the share the ratio is made of, measured inside one run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos_lab.localjob import JobConfig, LocalJob
from chaos_lab.sampling import Sampler, children_cpu_s
from chaos_sidecar import eventlog
from chaos_sidecar.cliutil import positive_int
from chaos_sidecar.eventlog import Kind

WARMUP = 20
SAMPLE_S = 0.5  # how often the CPU sampler reads /proc
KINDS = {"examples/train/": "trainer", "chaos_lab.plain_worker": "trainer", "chaos_sidecar.cli": "sidecar"}


def _step_stamps(path: Path) -> list[float]:
    return [r.t for r in eventlog.read([path]) if r.kind is Kind.STEP]


def _step_ms(path: Path, stamps: list[float]) -> float:
    steady = stamps[WARMUP:]
    if len(steady) < 2:
        raise RuntimeError(f"{path}: fewer than {WARMUP + 2} steps logged; use more --steps")
    return (steady[-1] - steady[0]) / (len(steady) - 1) * 1000


def _children_cpu_s() -> dict[str, float] | None:
    return children_cpu_s(KINDS)


class CpuSampler(Sampler):
    """Samples children's CPU in a thread while one run trains (wall time, CPU by kind); the
    result is CPU ms per training step by kind, between step WARMUP and the last sample, with
    the steps counted afterwards from rank 0's step stamps."""

    def __init__(self) -> None:
        super().__init__(SAMPLE_S, "cpu-sampler")
        self._samples: list[tuple[float, dict[str, float]]] = []

    def sample(self) -> bool:
        cpu = _children_cpu_s()
        if cpu is None:
            return False
        self._samples.append((time.time(), cpu))  # the trainers' logs stamp with time.time()
        return True

    def per_step_ms(self, stamps: list[float]) -> dict[str, float] | None:
        """``stamps``: rank 0's step times, in order."""
        counted = [(bisect.bisect_right(stamps, t), cpu) for t, cpu in self._samples]
        steady = [s for s in counted if s[0] >= WARMUP]
        if len(steady) < 2 or steady[-1][0] == steady[0][0]:
            return None
        (first_steps, first), (last_steps, last) = steady[0], steady[-1]
        steps = last_steps - first_steps
        # a child present in both samples; one that exited in between is not counted
        return {k: round((last[k] - first.get(k, 0.0)) * 1000 / steps, 3) for k in sorted(last) if k in first}


def _plain_cmd(nodes: int, rank: int, steps: int, workdir: Path) -> list[str]:
    return [
        sys.executable, "-m", "chaos_lab.plain_worker", "--node-id", f"p{rank}", "--world", str(nodes),
        "--rank", str(rank), "--store-dir", str(workdir), "--log", str(workdir / f"p{rank}.jsonl"),
        "--steps", str(steps),
    ]  # fmt: skip


def _plain(nodes: int, steps: int, workdir: Path) -> tuple[float, dict[str, float] | None]:
    workdir.mkdir(parents=True)
    with CpuSampler() as sampler:
        cmds = [_plain_cmd(nodes, rank, steps, workdir) for rank in range(nodes)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for cmd in cmds]
        if [p.wait(timeout=600) for p in procs] != [0] * nodes:
            raise RuntimeError("a plain worker failed")
    return _measured(workdir / "p0.jsonl", sampler)


def _elastic(
    nodes: int, steps: int, workdir: Path, checkpoint_every: int | None = None
) -> tuple[float, dict[str, float] | None]:
    # replica digests are a check of the demo, not part of training: off here
    config = JobConfig(nodes=nodes, steps=steps, churn=[], out=workdir, live=False, digest_every=0)
    if checkpoint_every:  # a fresh directory per run: a run must not resume from the last one
        config.checkpoint_dir, config.checkpoint_every = (
            workdir.parent / f"{workdir.name}-ckpt",
            checkpoint_every,
        )
    job = LocalJob(config)
    with CpuSampler() as sampler:
        asyncio.run(job.run())
    return _measured(job.trainer_log("n0"), sampler)


def _measured(log: Path, sampler: CpuSampler) -> tuple[float, dict[str, float] | None]:
    """Step time and CPU per step of one run, from rank 0's log."""
    stamps = _step_stamps(log)
    return _step_ms(log, stamps), sampler.per_step_ms(stamps)


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [round(values[0], 4)] * 3
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [round(q1, 4), round(q2, 4), round(q3, 4)]


def _mean_cpu(runs: list[dict[str, float] | None]) -> dict[str, float] | None:
    known = [r for r in runs if r]
    if not known:
        return None
    kinds = sorted({k for r in known for k in r})
    return {k: round(statistics.mean(r.get(k, 0.0) for r in known), 3) for k in kinds}


def measure_checkpoints(
    nodes: int,
    steps: int,
    every: int,
    workdir: Path,
    runs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The elastic job with durable checkpoints every ``every`` steps against the same job
    without, alternating (off, on, off, ...) as ``measure`` does with the plain loop."""
    say = progress or (lambda text: None)
    off = [_elastic(nodes, steps, workdir / "off0")[0]]
    on = []
    for run in range(1, runs + 1):
        on.append(_elastic(nodes, steps, workdir / f"on{run}", checkpoint_every=every)[0])
        off.append(_elastic(nodes, steps, workdir / f"off{run}")[0])
        say(
            f"run {run}/{runs}: checkpoints on {on[-1]:.2f} ms between off {off[-2]:.2f} and {off[-1]:.2f} ms"
        )
    ratios = [x / ((off[i] + off[i + 1]) / 2) for i, x in enumerate(on)]
    return {
        "scenario": "steptime",
        "compared": f"checkpoints every {every} steps vs none",
        "nodes": nodes,
        "steps": steps,
        "runs": runs,
        "checkpoint_every": every,
        "off_step_ms_runs": [round(x, 3) for x in off],
        "on_step_ms_runs": [round(x, 3) for x in on],
        "ratio_runs": [round(r, 4) for r in ratios],
        "ratio": round(statistics.median(ratios), 4),
        "ratio_quartiles": _quartiles(ratios),
        "off_neighbour_ratios": [round(b / a, 4) for a, b in itertools.pairwise(off)],
    }


def measure(
    nodes: int, steps: int, workdir: Path, runs: int = 1, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    say = progress or (lambda text: None)
    plain = [_plain(nodes, steps, workdir / "plain0")]
    elastic = []
    for run in range(1, runs + 1):
        elastic.append(_elastic(nodes, steps, workdir / f"elastic{run}"))
        plain.append(_plain(nodes, steps, workdir / f"plain{run}"))
        before, after = plain[-2][0], plain[-1][0]
        say(
            f"run {run}/{runs}: elastic {elastic[-1][0]:.2f} ms between plain {before:.2f} and {after:.2f} ms"
        )
    plain_ms = [p[0] for p in plain]
    elastic_ms = [e[0] for e in elastic]
    ratios = [e / ((plain_ms[i] + plain_ms[i + 1]) / 2) for i, e in enumerate(elastic_ms)]
    plain_cpu, elastic_cpu = _mean_cpu([p[1] for p in plain]), _mean_cpu([e[1] for e in elastic])
    result: dict[str, Any] = {
        "scenario": "steptime",
        "nodes": nodes,
        "steps": steps,
        "runs": runs,
        "plain_step_ms": round(statistics.median(plain_ms), 3),
        "plain_step_ms_runs": [round(x, 3) for x in plain_ms],
        "elastic_step_ms": round(statistics.median(elastic_ms), 3),
        "elastic_step_ms_runs": [round(x, 3) for x in elastic_ms],
        "ratio_runs": [round(r, 4) for r in ratios],
        "ratio": round(statistics.median(ratios), 4),
        "ratio_quartiles": _quartiles(ratios),
        # spread of the baseline itself: what a ratio of 1.0 +- noise looks like here
        "plain_neighbour_ratios": [round(b / a, 4) for a, b in itertools.pairwise(plain_ms)],
        "cpu_ms_per_step_plain": plain_cpu,
        "cpu_ms_per_step_elastic": elastic_cpu,
    }
    if elastic_cpu and elastic_cpu.get("trainer") and "sidecar" in elastic_cpu:
        result["sidecar_cpu_share"] = round(elastic_cpu["sidecar"] / elastic_cpu["trainer"], 4)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=positive_int, default=8, help="trainer processes")
    parser.add_argument("--steps", type=positive_int, default=300, help="training steps per run")
    parser.add_argument("--runs", type=positive_int, default=3, help="runs per variant, alternating")
    parser.add_argument(
        "--checkpoint-every", type=positive_int,
        help="compare the elastic job with durable checkpoints every N steps against the same job without",
    )  # fmt: skip


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chaos-steptime-") as tmp:
        say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        if args.checkpoint_every:
            return measure_checkpoints(
                args.nodes, args.steps, args.checkpoint_every, Path(tmp), args.runs, say
            )
        return measure(args.nodes, args.steps, Path(tmp), args.runs, say)
