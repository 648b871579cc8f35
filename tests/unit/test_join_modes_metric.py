"""The join-modes bench's per-member cost, on synthetic trainer logs."""

from __future__ import annotations

import random
import statistics

import pytest

from chaos_sidecar.benchmarks.join_modes import member_costs


def _log(waits: list[float], first_wait: float, pause_ms: float, step_s: float = 0.05) -> list[dict]:
    """Member n0 trains with the given all-reduce waits, regroups (n1 joins), then takes one step."""
    records = [
        {"node": "n0", "type": "step", "t": i * step_s, "allreduce_ms": w} for i, w in enumerate(waits)
    ]
    t = len(waits) * step_s
    records.append({"node": "n0", "type": "regroup", "t": t, "epoch": 2, "members": ["n0", "n1"],
                    "pause_ms": pause_ms})  # fmt: skip
    records.append({"node": "n0", "type": "step", "t": t + step_s, "allreduce_ms": first_wait})
    return records


def test_idle_is_the_pause_plus_the_first_wait_beyond_the_mean() -> None:
    waits = [10.0, 20.0] * 20  # mean 15
    costs = member_costs(_log(waits, first_wait=25.0, pause_ms=3.0), "n1")["n0"]
    assert costs["first_wait_extra_ms"] == 10.0
    assert costs["idle_ms"] == 13.0
    assert costs["usual_step_ms"] == pytest.approx(50.0)


def test_a_usual_step_as_the_first_costs_nothing_on_average() -> None:
    """Unbiased: a join that changes nothing measures zero extra wait, averaged over steps
    (clipping at zero, or the median as the baseline, would charge the noise to the join)."""
    rng = random.Random(7)
    waits = [rng.expovariate(1 / 15) for _ in range(40)]
    extras = [member_costs(_log(waits, first_wait=w, pause_ms=0.0), "n1")["n0"]["first_wait_extra_ms"]
              for w in waits]  # fmt: skip
    assert abs(statistics.fmean(extras)) < 1e-9
    assert min(extras) < 0 < max(extras)  # single steps scatter both ways
