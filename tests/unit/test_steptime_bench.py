"""The step-time bench's CPU accounting: it reads real children from /proc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chaos_lab.benchmarks import steptime

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ninput()"


def test_children_cpu_counts_a_busy_child_by_kind() -> None:
    before = steptime._children_cpu_s()
    child = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE, text=True)
    try:
        # the child burns 0.3 s of CPU, then blocks on stdin; poll its CPU until it is there
        while True:
            after = steptime._children_cpu_s()
            if after.get("other", 0.0) >= 0.25:
                break
            assert child.poll() is None, "the child exited early"
    finally:
        child.communicate("\n", timeout=30)
    assert before is not None
    assert after.get("harness", 0.0) >= before.get("harness", 0.0)  # this process counts as harness
    assert "trainer" not in after and "sidecar" not in after  # kinds come from the command line


STAMPS = [float(i) for i in range(1, 201)]  # step k logged at time k


def test_per_step_uses_samples_from_the_warmup_on() -> None:
    sampler = steptime.CpuSampler()
    w = steptime.WARMUP
    sampler._samples = [
        (w - 5, {"trainer": 0.0}),  # before the warm-up: not used
        (w, {"trainer": 1.0, "sidecar": 0.5}),
        (w + 100.5, {"trainer": 5.0, "sidecar": 0.7, "harness": 0.1}),  # harness appeared late: left out
    ]
    assert sampler.per_step_ms(STAMPS) == {"sidecar": 2.0, "trainer": 40.0}


def test_per_step_is_none_without_two_steady_samples() -> None:
    sampler = steptime.CpuSampler()
    sampler._samples = [(steptime.WARMUP + 1, {"trainer": 1.0})]
    assert sampler.per_step_ms(STAMPS) is None
