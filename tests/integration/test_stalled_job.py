"""A group that cannot reach a majority: the harness heals it by time, or reports where it
was stuck instead of waiting forever (real sidecar and trainer processes)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos_lab.churn import ChurnEvent, parse_churn
from chaos_lab.jobreport import summarize
from chaos_lab.localjob import JobConfig, JobStalled, LocalJob
from chaos_sidecar import eventlog
from chaos_sidecar.eventlog import Kind

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
        assert state["sidecar"]["majority"]["reachable"] is False, (node, state)
        assert (
            len(state["sidecar"]["majority"]["reaches"]) == 2 and state["sidecar"]["majority"]["needed"] == 3
        )
        assert state["trainer"]["step"] is not None and state["trainer"]["step"] < STEPS
        # each stuck trainer wrote its threads' stacks (SIGUSR1, the SDK's faulthandler)
        assert "most recent call first" in Path(state["trainer"]["stacks"]).read_text(), (node, state)
    assert all(p.poll() is not None for p in stalled.trainers.values())  # no trainer outlives it


def test_a_scripted_link_up_fires_by_time_when_the_group_stops_stepping(tmp_path) -> None:
    """``chaos-train local --live``: the link-ups are scripted for a step the stuck group never
    reaches. The live line names the members that reach no majority; the first link-up (n0-n2)
    fires by time, the group drops n4 (n0 and n2 reach three of five) and trains on to the end,
    and the other link-ups fire at their step."""
    heal = [ChurnEvent(HEAL_STEP, "link_up", e.node, e.peer) for e in NO_MAJORITY if e.event == "link_down"]
    churn = tmp_path / "churn.json"
    churn.write_text(json.dumps([e.to_json() for e in [*NO_MAJORITY, *heal]]))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "chaos_sidecar.cli", "local", "--nodes", "5", "--steps", str(STEPS),
         "--churn", str(churn), "--out", str(out), "--live"],
        capture_output=True, text=True, timeout=220,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "NO MAJORITY: n0 reaches n0,n1 of 5 (needs 3)" in result.stdout, result.stdout[-3000:]
    assert "stalled, healing early: at step 100: link_up n0-n2" in result.stdout, result.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    applied = [(e["kind"], e["at_step"]) for e in summary["events"]]
    assert [kind for kind, _ in applied] == ["link_down"] * 4 + ["crash"] + ["link_up"] * 4, applied
    # the first fires by time, at the stuck step; the others fire at their step, or by time too
    # when regrouping without n4 takes longer than HEAL_AFTER_S on a loaded machine
    assert applied[5][1] < HEAL_STEP, applied
    assert summary["steps"] == STEPS and summary["ok"], summary
    sidecar = eventlog.read(sorted((out / "sidecars").glob("*.events.jsonl")))
    lost = {r.node for r in sidecar if r.kind is Kind.NO_MAJORITY}
    assert lost == {"n0", "n1", "n2", "n3"}, lost


def test_round_4715_as_first_written_now_finishes(tmp_path) -> None:
    """The script that hung ``bench --scenario chaos --seed 4711``: n0-n3 cut, then n1 crashes
    while the view may still be {n0, n1, n3}. n0 and n3 now reach each other through n4 (a
    member by then, or a node asking to join), so the group drops n1 and trains to the end."""
    script = json.loads((Path(__file__).resolve().parents[1] / "data" / "round-4715-churn.json").read_text())
    churn = parse_churn(script, ["n0", "n1", "n2", "n3"], 150)
    cfg = JobConfig(nodes=4, steps=150, churn=churn, out=tmp_path / "out", live=False, samples=4096,
                    global_batch=128, digest_every=5, stall_limit_s=45.0, deadline_s=200.0)  # fmt: skip
    job = LocalJob(cfg)
    wall = asyncio.run(job.run())
    sidecar = eventlog.read(sorted((cfg.out / "sidecars").glob("*.events.jsonl")))
    trainer = eventlog.read(sorted((cfg.out / "logs").glob("*.trainer.jsonl")))
    summary = summarize(cfg, job.injected, sidecar, trainer, wall)
    assert summary["ok"] and summary["steps"] == 150, summary
    last = max((r for r in sidecar if r.kind is Kind.INSTALLED), key=lambda r: r["epoch"])
    assert {"n0", "n3"} <= set(last["members"]) and "n1" not in last["members"], last
