"""Checkpoints and resume: a local job killed entirely (every process, SIGKILL) at a random
step and started again resumes from its newest complete checkpoint. Accounted per sample
over both runs: every step's ids exactly once, the steps after the checkpoint redone."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos_lab.jobreport import check_samples
from chaos_sidecar import eventlog
from chaos_sidecar.eventlog import Kind

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "chaos_sidecar.cli", "local", "--nodes", "3", "--hidden", "64",
       "--checkpoint-every", "25"]  # fmt: skip
STEPS = 300
DEADLINE_S = 240


def _steps(out: Path) -> int:
    records = eventlog.read(sorted(out.glob("logs/*.trainer.jsonl")))
    return max((r["step"] for r in records if r.kind is Kind.STEP), default=0)


def test_a_job_killed_entirely_resumes_from_its_newest_checkpoint(tmp_path) -> None:
    churn, checkpoints = tmp_path / "none.json", tmp_path / "checkpoints"
    churn.write_text("[]")
    first, second = tmp_path / "first", tmp_path / "second"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")}
    common = [*CLI, "--churn", str(churn), "--checkpoint-dir", str(checkpoints), "--steps", str(STEPS)]
    kill_at = random.Random().randint(80, 200)
    job = subprocess.Popen([*common, "--out", str(first)], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + DEADLINE_S
    try:
        while _steps(first) < kill_at:
            assert job.poll() is None, "the first run ended before the kill"
            assert time.monotonic() < deadline, f"the first run did not reach step {kill_at}"
            time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the harness, every sidecar and every trainer
        job.wait(30)
    killed_at = _steps(first)
    newest = max(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*"))
    assert newest <= killed_at and newest % 25 == 0

    done = subprocess.run([*common, "--out", str(second)], env=env, capture_output=True, text=True,
                          timeout=DEADLINE_S, check=False)  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-2000:]
    trainer = eventlog.read(sorted(second.glob("logs/*.trainer.jsonl")))
    resumed = {r.node: r["checkpoint"] for r in trainer if r.kind is Kind.RESUMED}
    assert resumed == {"n0": newest, "n1": newest, "n2": newest}
    summary = json.loads((second / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["replicas_identical"]
    # both runs together: every step's global batch exactly once, the steps after the
    # checkpoint taken twice (once by the killed run, again after the resume)
    both = eventlog.read(
        sorted(first.glob("logs/*.trainer.jsonl")) + sorted(second.glob("logs/*.trainer.jsonl"))
    )
    accounting = check_samples(both, STEPS)
    assert accounting["samples_lost"] == accounting["samples_duplicated"] == 0
    assert accounting["samples_seen"] == STEPS * 256
    assert accounting["samples_redone"] >= (killed_at - newest) * 256
    # the loss curve continues: the first step after the resume is close to the step before it
    losses = {r["step"]: r["loss"] for r in eventlog.read(sorted(first.glob("logs/n0.trainer.jsonl")))
              if r.kind is Kind.STEP}  # fmt: skip
    after = min((r for r in trainer if r.kind is Kind.STEP), key=lambda r: r["step"])
    assert after["step"] == newest + 1
    if newest + 1 in losses:  # the killed run took that step too: the same batch on the same state
        assert abs(after["loss"] - losses[newest + 1]) < 1e-4
