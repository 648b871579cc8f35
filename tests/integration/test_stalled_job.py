"""A group that cannot reach a majority: the harness heals it by time, or reports where it
was stuck instead of waiting forever (real sidecar and trainer processes)."""

from __future__ import annotations

import asyncio
import time

import pytest

from chaos_lab.churn import ChurnEvent
from chaos_lab.jobreport import read_jsonl
from chaos_lab.localjob import JobConfig, JobStalled, LocalJob

pytest.importorskip("torch", reason="the trainer needs the 'train' extra (torch)")
pytestmark = pytest.mark.timeout(240)

STEPS = 200
# Five members; in one moment {n0, n1} and {n2, n3} are cut from each other and n4, the only
# node that reached both sides, dies: each survivor reaches two of the five, so nothing can
# commit (within a failure timeout of the cut, before anyone could act on it) and the group
# can never drop n4.
NO_MAJORITY = [
    ChurnEvent(20, "link_down", "n0", "n2"),
    ChurnEvent(20, "link_down", "n0", "n3"),
    ChurnEvent(20, "link_down", "n1", "n2"),
    ChurnEvent(20, "link_down", "n1", "n3"),
    ChurnEvent(20, "crash", "n4"),
]
HEAL_STEP = 100


def job(tmp_path, churn: list[ChurnEvent], **limits: float) -> LocalJob:
    cfg = JobConfig(nodes=5, steps=STEPS, churn=churn, out=tmp_path / "out", live=False,
                    samples=4096, global_batch=128, digest_every=5, **limits)  # fmt: skip
    return LocalJob(cfg)


def test_a_group_without_a_majority_is_reported_stuck_not_waited_for(tmp_path) -> None:
    stalled = job(tmp_path, NO_MAJORITY, stall_limit_s=8.0, deadline_s=150.0)
    started = time.monotonic()
    with pytest.raises(JobStalled) as info:
        asyncio.run(stalled.run())
    assert time.monotonic() - started < 120
    assert info.value.reason.startswith("stalled: no step for 8 s"), info.value.reason
    nodes = info.value.nodes
    assert set(nodes) == {"n0", "n1", "n2", "n3"}, nodes
    for node, state in nodes.items():  # still members of the view with n4: nothing committed
        assert state["sidecar"]["status"] == "member", (node, state)
        assert "n4" in state["sidecar"]["members"], (node, state)
        assert state["trainer"]["step"] is not None and state["trainer"]["step"] < STEPS
    assert all(p.poll() is not None for p in stalled.trainers.values())  # no trainer outlives it


def test_a_scripted_link_up_fires_by_time_when_the_group_stops_stepping(tmp_path) -> None:
    """The link-ups are scripted for a step the stuck group never reaches: the first (n0-n2)
    fires by time, the group drops n4 (n0 and n2 reach three of five) and trains on, and the
    others fire at their step."""
    heal = [ChurnEvent(HEAL_STEP, "link_up", e.node, e.peer) for e in NO_MAJORITY if e.event == "link_down"]
    healed = job(tmp_path, [*NO_MAJORITY, *heal], stall_limit_s=60.0, deadline_s=200.0)
    asyncio.run(healed.run())
    applied = [(i.event.event, i.step) for i in healed.injected]
    assert [kind for kind, _ in applied] == ["link_down"] * 4 + ["crash"] + ["link_up"] * 4, applied
    early = applied[5][1]
    assert early < HEAL_STEP, applied  # the first link-up fired at the stuck step, by time
    trainer = read_jsonl(sorted((healed.cfg.out / "logs").glob("*.trainer.jsonl")))
    assert max(r["step"] for r in trainer if r["type"] == "step") == STEPS
