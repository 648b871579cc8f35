"""The long-haul scenario, short: one job absorbs 20 faults of every kind beside the same job
without; it must end at the same loss (within 2 %), with identical replicas and every sample
exactly once. Resource slopes are reported for the long-lived processes; they are judged
from 100 events on (the 200-event run in bench/results), below that they are the noise of a
group whose size changes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_twenty_faults_leave_loss_samples_and_resources_as_without(tmp_path) -> None:
    out = tmp_path / "long-haul.json"
    done = subprocess.run(
        [sys.executable, "-m", "chaos_sidecar.cli", "bench", "--scenario", "long-haul", "--failures", "20",
         "--logs", str(tmp_path / "logs"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.exists(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"], result["failed"]
    assert done.returncode == 0
    assert result["events_injected"] == 20
    assert result["samples_lost"] == result["samples_duplicated"] == 0 and result["replicas_identical"]
    assert result["final_loss_relative_difference"] <= 0.02
    # the founder's sidecar lives through the whole run: its curve is there (a trainer's may
    # have too few samples between the first and the last event of a run this short)
    assert "n0 sidecar" in result["resources"]
    assert result["slopes_judged"] is False
    # every founding node's snapshot volume was watched (the bound itself is part of "ok")
    assert {"n0", "n1", "n2", "n3"} <= set(result["snapshots_held_peak"])
