"""The public SDK through its launcher and the local harness: real sidecars and trainers.

- a user exception ends the trainer with the user's traceback and a non-zero exit, and is
  not taken for a failed collective (no regroup after it);
- founding members that start from different parameters are refused, naming the problem;
- an example script trains under random churn with every sample used exactly once (counted
  by id) and ends where the same script trained alone ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos_sidecar import eventlog
from chaos_sidecar.eventlog import Kind
from polling import until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "data" / "scripts"
CLI = [sys.executable, "-m", "chaos_sidecar.cli"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")} | {"OMP_NUM_THREADS": "1"}


def test_a_user_exception_ends_the_trainer_with_its_traceback_and_no_regroup(tmp_path) -> None:
    log = tmp_path / "events.jsonl"
    done = subprocess.run(
        [*CLI, "run", "--new-group", "--node-id", "solo", "--event-log", str(log),
         str(SCRIPTS / "failing_step.py")],
        capture_output=True, text=True, timeout=120, env=_clean_env(), check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ValueError: the user's model broke at its third step" in done.stderr
    assert "failing_step.py" in done.stderr  # the user's own frame is in the traceback
    kinds = [r.kind for r in eventlog.read([log])]
    assert Kind.USER_ERROR in kinds
    assert Kind.COLLECTIVE_FAILED not in kinds and Kind.RENDEZVOUS_FAILED not in kinds
    assert kinds.count(Kind.REGROUP) == 1  # the first group only
    assert kinds.count(Kind.STEP) == 2


def test_run_names_a_script_that_does_not_exist(tmp_path) -> None:
    done = subprocess.run([*CLI, "run", "--new-group", str(tmp_path / "nope.py")], capture_output=True,
                          text=True, timeout=60, env=_clean_env(), check=False)  # fmt: skip
    assert done.returncode == 2
    assert "SCRIPT" in done.stderr and "nope.py does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_founding_members_with_different_initial_parameters_are_refused(tmp_path) -> None:
    churn = tmp_path / "none.json"
    churn.write_text("[]")
    out = tmp_path / "out"
    done = subprocess.run(
        [*CLI, "local", "--nodes", "3", "--steps", "20", "--churn", str(churn), "--out", str(out),
         "--script", str(SCRIPTS / "unseeded.py")],
        capture_output=True, text=True, timeout=300, env=_clean_env(), check=False,
    )  # fmt: skip
    assert done.returncode != 0
    stderr = "".join(p.read_text() for p in out.glob("logs/*.trainer.stderr"))
    assert "model: the initial state differs between members" in stderr
    steps = [r for r in eventlog.read(out.glob("logs/*.trainer.jsonl")) if r.kind is Kind.STEP]
    assert steps == []  # refused before the first step


def test_an_example_trains_under_random_churn_exactly_once_per_sample_and_as_alone(tmp_path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [*CLI, "local", "--steps", "60", "--churn", "random:3", "--out", str(out), "--compare-alone",
         "--script", str(ROOT / "examples" / "train" / "digits_cnn.py"), "--script-args", "--steps 60"],
        capture_output=True, text=True, timeout=600, env=_clean_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["replicas_identical"]
    assert summary["sample_accounting"] == "ids"
    assert summary["samples_seen"] == summary["samples_expected"] == 60 * 64
    assert summary["samples_lost"] == summary["samples_duplicated"] == 0
    assert any(e["kind"] in ("crash", "crash_sidecar", "crash_trainer", "leave") for e in summary["events"])
    assert summary["alone"]["steps"] == 60
    # the same global batches in the same order: only the order of floating-point sums differs
    assert summary["alone"]["final_loss_relative_difference"] < 1e-3


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _running(pid: int) -> bool:
    """Alive and not a zombie (the container's init may never reap what it inherits)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


async def test_a_killed_run_takes_its_sidecar_and_script_with_it(tmp_path) -> None:
    """``run`` killed with SIGKILL (the OOM killer, a harness's teardown): its sidecar and
    script get a TERM from the kernel and end, instead of training on as orphans."""
    log = tmp_path / "events.jsonl"
    script = [str(ROOT / "examples" / "train" / "mlp.py"), "--steps", "100000", "--hidden", "8"]
    command = [*CLI, "run", "--new-group", "--node-id", "solo", "--event-log", str(log), *script]
    run = subprocess.Popen(command, env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        steps = lambda: log.exists() and any(r.kind is Kind.STEP for r in eventlog.read([log]))  # noqa: E731
        await until("the script to train", steps, 120)
        children = _children(run.pid)
        assert len(children) == 2 and all(_running(c) for c in children)  # its sidecar and its script
        run.kill()
        run.wait()
        await until("the sidecar and the script to end", lambda: not any(map(_running, children)), 60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
