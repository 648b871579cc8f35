"""Steady-state step time: the elastic SDK with its sidecars against a plain loop.

Both run the built-in job (same model, data, global batch and all-reduce) on N processes of
this machine, one after the other in one run: plain, elastic, plain again (the plain figure is
the mean of the two, to cancel drift). Step time = median gap between consecutive steps of
rank 0 after a warm-up.
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


def measure(nodes: int, steps: int, workdir: Path) -> dict[str, Any]:
    plain_before = _plain(nodes, steps, workdir / "plain1")
    # replica digests are a check of the demo, not part of training: off here
    config = JobConfig(
        nodes=nodes, steps=steps, churn=[], out=workdir / "elastic", live=False, digest_every=0
    )
    job = LocalJob(config)
    asyncio.run(job.run())
    elastic = _median_gap_ms(job.trainer_log("n0"))
    plain_after = _plain(nodes, steps, workdir / "plain2")
    plain = (plain_before + plain_after) / 2
    return {
        "scenario": "steptime",
        "nodes": nodes,
        "steps": steps,
        "plain_step_ms": round(plain, 3),
        "plain_step_ms_runs": [round(plain_before, 3), round(plain_after, 3)],
        "elastic_step_ms": round(elastic, 3),
        "ratio": round(elastic / plain, 4),
    }


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chaos-steptime-") as tmp:
        return measure(args.nodes, args.steps, Path(tmp))
