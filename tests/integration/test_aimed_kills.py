"""Kills where it hurts, on real processes: a kill that waits until the harness observes a
joiner's state transfer in progress, and where the trainers' logs say it landed."""

from __future__ import annotations

import asyncio

import pytest

from chaos_lab.churn import parse_churn
from chaos_lab.jobreport import summarize
from chaos_lab.kills import classify
from chaos_lab.localjob import JobConfig, LocalJob
from chaos_sidecar.eventlog import read as read_jsonl

pytest.importorskip("torch", reason="the trainer needs the 'train' extra (torch)")
pytestmark = pytest.mark.timeout(240)

FOUNDERS = ["n0", "n1", "n2"]


def test_a_kill_waiting_for_a_pull_lands_mid_transfer(tmp_path) -> None:
    """The joiner n3 starts with the founders, their uploads slowed so that its pull lasts
    about a second; its sidecar is killed once the harness sees the pull in progress (not at
    a step: steps do not advance during a blocking transfer). Its trainer, still alive, logs
    that pull failing after the kill (its sidecar is gone), and the group trains on with every
    sample once."""
    steps = 50
    plan = [{"at_s": 0.1, "event": "join", "node": "n3"}]
    plan += [{"at_s": 0.1, "event": "slow_link", "node": n, "rate_mbps": 3} for n in FOUNDERS]
    plan += [{"at_step": steps - 10, "event": "crash_sidecar", "node": "n3", "on": "pull"}]
    cfg = JobConfig(nodes=3, steps=steps, churn=parse_churn(plan, FOUNDERS, steps), out=tmp_path / "out",
                    live=False, samples=4096, global_batch=128, digest_every=5,
                    deadline_s=200, stall_limit_s=45)  # fmt: skip
    job = LocalJob(cfg)
    wall = asyncio.run(job.run())
    trainer = read_jsonl(sorted((cfg.out / "logs").glob("*.trainer.jsonl")))
    sidecar = read_jsonl(sorted((cfg.out / "sidecars").glob("*.events.jsonl")))
    (injected,) = [i for i in job.injected if i.event.event == "crash_sidecar"]
    assert injected.fired == "observed", injected  # on its moment, not at its deadline step
    # from the logs alone: the pull started before the kill and ended (failed) after it
    pulls = [r for r in trainer if r["node"] == "n3" and r["type"] in ("pull_started", "pulled")]
    assert pulls[-1]["type"] == "pull_started" and pulls[-1]["t"] < injected.t
    assert sorted(pulls[-1]["sources"]) == FOUNDERS
    after = [r for r in trainer if r["node"] == "n3" and r["t"] > pulls[-1]["t"] and r["type"] != "digest"]
    assert after and after[0]["type"] in ("reconcile_failed", "sidecar_lost"), after[:3]  # not "pulled"
    assert after[0]["t"] > injected.t, (after[0], injected)
    (kill,) = classify([{"node": "n3", "event": "crash_sidecar", "t": injected.t}], trainer)
    assert (kill["landed"], kill["process"]) == ("mid_transfer_joiner", "sidecar_only")
    summary = summarize(cfg, job.injected, sidecar, trainer, wall)
    assert summary["ok"] and summary["steps"] == steps, summary
    assert summary["samples_lost"] == 0 and summary["samples_duplicated"] == 0
