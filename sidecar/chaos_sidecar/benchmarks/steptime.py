"""Steady-state step time: the elastic SDK with its sidecars against a plain loop.

Both run the built-in job (same model, data, global batch and all-reduce) on N processes of
this machine, one after the other in one run, alternating: plain, elastic, plain, ... (R
elastic runs between R + 1 plain ones). Each elastic run is compared with the mean of the
plain runs on either side (to cancel drift); the ratio is the median of those. Step time =
median gap between consecutive steps of rank 0 after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from chaos_sidecar.localjob import JobConfig, LocalJob

WARMUP = 20


def _median_gap_ms(path: Path) -> float:
    stamps = [json.loads(line)["t"] for line in path.read_text().splitlines() if '"type": "step"' in line]
    gaps = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1 :], strict=False)]
    return statistics.median(gaps) * 1000


def _plain(nodes: int, steps: int, workdir: Path) -> float:
    workdir.mkdir(parents=True)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chaos_train.worker",
                "--node-id",
                f"p{r}",
                "--plain",
                str(nodes),
                "--rank",
                str(r),
                "--rendezvous-dir",
                str(workdir),
                "--log",
                str(workdir / f"p{r}.jsonl"),
                "--steps",
                str(steps),
            ],
            stdout=subprocess.DEVNULL,
        )
        for r in range(nodes)
    ]
    for p in procs:
        if p.wait(timeout=600) != 0:
            raise RuntimeError("a plain worker failed")
    return _median_gap_ms(workdir / "p0.jsonl")


def _elastic(nodes: int, steps: int, workdir: Path) -> float:
    # replica digests are a check of the demo, not part of training: off here
    config = JobConfig(nodes=nodes, steps=steps, churn=[], out=workdir, live=False, digest_every=0)
    job = LocalJob(config)
    asyncio.run(job.run())
    return _median_gap_ms(job.trainer_log("n0"))


def measure(nodes: int, steps: int, workdir: Path, runs: int = 1) -> dict[str, Any]:
    plain = [_plain(nodes, steps, workdir / "plain0")]
    elastic = []
    for run in range(1, runs + 1):
        elastic.append(_elastic(nodes, steps, workdir / f"elastic{run}"))
        plain.append(_plain(nodes, steps, workdir / f"plain{run}"))
    ratios = [e / ((plain[i] + plain[i + 1]) / 2) for i, e in enumerate(elastic)]
    return {
        "scenario": "steptime",
        "nodes": nodes,
        "steps": steps,
        "runs": runs,
        "plain_step_ms": round(statistics.median(plain), 3),
        "plain_step_ms_runs": [round(x, 3) for x in plain],
        "elastic_step_ms": round(statistics.median(elastic), 3),
        "elastic_step_ms_runs": [round(x, 3) for x in elastic],
        "ratio_runs": [round(r, 4) for r in ratios],
        "ratio": round(statistics.median(ratios), 4),
    }


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chaos-steptime-") as tmp:
        return measure(args.nodes, args.steps, Path(tmp), args.runs)
