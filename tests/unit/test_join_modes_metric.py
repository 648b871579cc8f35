"""The join-modes bench's per-member cost, on synthetic trainer logs."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys

import pytest

from chaos_lab.benchmarks.join_modes import empty_directory, member_costs
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import VERSION, Record


def _records(raw: list[dict]) -> list[Record]:
    return [Record({"v": VERSION, **r}) for r in raw]


def _log(
    before: list[float], first_wait: float, after: list[float], pause_ms: float, step_s: float = 0.05,
    entered_after: int | None = None,
) -> list[dict]:  # fmt: skip
    """Member n0 trains with the ``before`` all-reduce waits, regroups (n1 joins), takes its first
    step (``first_wait``), then the ``after`` steps; n1 logs "entered" after ``entered_after`` of
    them (an overlap joiner), or logs nothing (blocking)."""
    records = [
        {"node": "n0", "type": "step", "t": i * step_s, "allreduce_ms": w} for i, w in enumerate(before)
    ]
    t = len(before) * step_s
    records.append({"node": "n0", "type": "regroup", "t": t, "epoch": 2, "members": ["n0", "n1"],
                    "pause_ms": pause_ms})  # fmt: skip
    for i, w in enumerate([first_wait, *after]):
        records.append({"node": "n0", "type": "step", "t": t + (i + 1) * step_s, "allreduce_ms": w})
        if entered_after is not None and i == entered_after:
            records.append({"node": "n1", "type": "entered", "t": t + (i + 1.5) * step_s})
    return records


def test_idle_is_the_pause_plus_the_first_wait_beyond_the_settled_group() -> None:
    before = [10.0, 20.0] * 20  # mean 15: the smaller group
    after = [20.0, 30.0] * 20  # mean 25: the joined group waits longer in every step
    costs = member_costs(_records(_log(before, first_wait=35.0, after=after, pause_ms=3.0)), "n1")["n0"]
    assert costs["first_wait_extra_ms"] == 10.0
    assert costs["idle_ms"] == 13.0
    assert costs["idle_vs_before_ms"] == 23.0  # charged for the bigger group too
    assert costs["usual_step_ms"] == pytest.approx(50.0)


def test_steps_before_an_overlap_joiner_entered_are_not_usual() -> None:
    after = [90.0] * 3 + [25.0] * 40  # replaying beside the members: slower steps
    costs = member_costs(_records(_log([15.0] * 40, 35.0, after, pause_ms=0.0, entered_after=3)), "n1")["n0"]
    assert costs["first_wait_extra_ms"] == 10.0


def test_a_group_that_changes_again_at_once_has_no_usual_step() -> None:
    log = _log([15.0] * 40, 35.0, [25.0] * 5, pause_ms=1.0)
    log.append({"node": "n0", "type": "regroup", "t": log[-1]["t"] + 0.01, "epoch": 3,
                "members": ["n0"], "pause_ms": 1.0})  # fmt: skip
    log.append({"node": "n0", "type": "step", "t": log[-1]["t"] + 0.05, "allreduce_ms": 1.0})
    costs = member_costs(_records(log), "n1")["n0"]
    assert costs["idle_ms"] is None and costs["usual_step_ms"] is None
    assert costs["idle_vs_before_ms"] == 21.0


def test_a_usual_step_as_the_first_costs_nothing_on_average() -> None:
    """Unbiased: a join that changes nothing measures zero extra wait, averaged over steps
    (clipping at zero, or the median as the baseline, would charge the noise to the join)."""
    rng = random.Random(7)
    waits = [rng.expovariate(1 / 15) for _ in range(40)]
    costs = [
        member_costs(_records(_log(waits, first_wait=w, after=waits, pause_ms=0.0)), "n1")["n0"]
        for w in waits
    ]
    extras = [c["first_wait_extra_ms"] for c in costs]
    assert abs(statistics.fmean(extras)) < 1e-9
    assert min(extras) < 0 < max(extras)  # single steps scatter both ways


def test_an_overlap_charges_its_slower_steps_against_the_pace_before_the_join() -> None:
    """Lost throughput: 5 steps of 80 ms during the overlap where the group took 50 ms."""
    records = [{"node": "n0", "type": "step", "t": i * 0.05, "allreduce_ms": 15.0} for i in range(40)]
    records.append({"node": "n0", "type": "overlap_start", "t": 1.96, "epoch": 2, "pause_ms": 10.0})
    records += [
        {"node": "n0", "type": "step", "t": 1.95 + k * 0.08, "allreduce_ms": 15.0} for k in range(1, 6)
    ]
    records.append({"node": "n0", "type": "regroup", "t": 2.36, "epoch": 2, "members": ["n0", "n1"],
                    "pause_ms": 5.0})  # fmt: skip
    records.append({"node": "n1", "type": "entered", "t": 2.37})
    records += [
        {"node": "n0", "type": "step", "t": 2.36 + i * 0.05, "allreduce_ms": 15.0} for i in range(1, 42)
    ]
    costs = member_costs(_records(records), "n1")["n0"]
    assert costs["overlap_steps"] == 5
    assert costs["overlap_extra_wall_ms"] == pytest.approx(400.0 - 5 * 50.0)  # start pause inside
    assert costs["switch_extra_ms"] == pytest.approx(5.0)  # the first step took a usual 50 ms
    assert costs["lost_wall_ms"] == pytest.approx(155.0)


def test_a_blocking_join_loses_no_overlap_steps() -> None:
    costs = member_costs(_records(_log([15.0] * 40, 35.0, [25.0] * 40, pause_ms=3.0)), "n1")["n0"]
    assert costs["overlap_steps"] == 0 and costs["overlap_extra_wall_ms"] == 0.0
    assert costs["lost_wall_ms"] == pytest.approx(costs["switch_extra_ms"])


def test_keep_logs_takes_a_new_or_empty_directory_only(tmp_path) -> None:
    assert empty_directory(str(tmp_path / "new" / "runs")).is_dir()
    assert empty_directory(str(tmp_path / "new" / "runs")) == tmp_path / "new" / "runs"  # still empty
    (tmp_path / "new" / "runs" / "old.log").write_text("x")
    with pytest.raises(InputError, match=r"--keep-logs: .* not an empty directory"):
        empty_directory(str(tmp_path / "new" / "runs"))
    with pytest.raises(InputError, match="--keep-logs"):
        empty_directory(str(tmp_path / "new" / "runs" / "old.log"))


def test_cli_refuses_a_directory_with_files_before_running(tmp_path) -> None:
    (tmp_path / "old.log").write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "chaos_sidecar.cli", "bench", "--scenario", "join-modes", "--keep-logs",
         str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--keep-logs" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.log"]  # nothing ran, nothing written
