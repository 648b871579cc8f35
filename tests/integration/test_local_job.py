"""The main job end to end: real sidecar and trainer processes, churn, the summary contract."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from chaos_lab.churn import ChurnEvent
from chaos_lab.localjob import JobConfig, LocalJob
from chaos_sidecar import eventlog
from chaos_sidecar.eventlog import Kind

pytest.importorskip("torch", reason="the trainer needs the 'train' extra (torch)")
pytestmark = pytest.mark.timeout(300)


def test_local_job_with_join_crash_and_link_events(tmp_path) -> None:
    churn = tmp_path / "churn.json"
    churn.write_text(
        json.dumps(
            [
                {"at_step": 30, "event": "join", "node": "n3"},
                # a joiner's trainer takes seconds to start: its join is decided ~50 steps on
                {"at_step": 120, "event": "join", "node": "n4"},
                {"at_step": 210, "event": "crash", "node": "n1"},
                {"at_step": 230, "event": "link_down", "node": "n0", "peer": "n2"},
                {"at_step": 270, "event": "link_up", "node": "n0", "peer": "n2"},
            ]
        )
    )
    out = tmp_path / "out"
    result = subprocess.run(  # a relative --out, as make demo gives it
        [sys.executable, "-m", "chaos_sidecar.cli", "local", "--nodes", "3", "--steps", "300",
         "--churn", str(churn), "--out", "out"],
        capture_output=True, text=True, timeout=280, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 300
    assert summary["replicas_identical"] is True and summary["replica_comparisons"] > 5
    assert summary["samples_lost"] == 0 and summary["samples_duplicated"] == 0
    assert summary["samples_seen"] == summary["samples_expected"] == 300 * 256
    assert summary["final_loss"] < summary["initial_loss"] / 2
    kinds = [e["kind"] for e in summary["events"]]
    assert kinds == ["join", "join", "crash", "link_down", "link_up"]
    join = summary["events"][0]
    sent = join["bytes_per_source"]
    # the planner splits the state over the members its estimates favour: at least two of three
    assert join["transfer_ms"] > 0 and set(sent) == {"n0", "n1", "n2"}
    assert join["sources"] == sorted(n for n, b in sent.items() if b > 0) and len(join["sources"]) >= 2
    assert all(e["agreement_ms"] is not None for e in summary["events"])
    assert (out / "timeline.png").stat().st_size > 10_000
    assert len((out / "events.jsonl").read_text().splitlines()) == 5
    # a join's snapshot retires the one before: a member keeps only the newest, n3 the copy
    # it pulled until its own snapshot for n4 replaced it
    assert summary["events"][1]["transfer_ms"] > 0 and "n3" in summary["events"][1]["sources"]
    kept = {d.name: sorted(p.name for p in d.iterdir()) for d in (out / "snapshots").iterdir()}
    (newest,) = [n.removesuffix(".manifest.json") for n in kept["n0"] if n.endswith(".manifest.json")]
    assert kept["n0"] == kept["n3"] == [f"{newest}.data", f"{newest}.manifest.json"], kept
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.trainer.jsonl"))
    # a survivor away from n1 in the ring gives its collective up on the view's word, not at
    # gloo's timeout (see groups.wait_for)
    assert "Timed out waiting" not in logs


def test_overlap_join_replays_to_identical_replicas(tmp_path) -> None:
    churn = tmp_path / "churn.json"
    churn.write_text(json.dumps([{"at_step": 30, "event": "join", "node": "n3"}]))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "chaos_sidecar.cli", "local", "--nodes", "3", "--steps", "250",
         "--churn", str(churn), "--join-mode", "overlap", "--out", str(out)],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas_identical"] is True
    assert summary["samples_lost"] == 0 and summary["samples_duplicated"] == 0
    records = eventlog.read(sorted((out / "logs").glob("*.trainer.jsonl")))
    kinds = {r.kind for r in records}
    assert {Kind.OVERLAP_START, Kind.OVERLAP_CAUGHT_UP} <= kinds  # the overlap path ran
    assert Kind.ENTERED in kinds  # the joiner became level by replay inside the new group
    assert Kind.POSTED_AHEAD in kinds  # ... with its first all-reduce posted before the switch
    # members did not wait for the switch's gather
    assert any(r.kind is Kind.REGROUP and r["gather_predicted"] for r in records)
    assert not kinds & {Kind.COLLECTIVE_FAILED, Kind.RENDEZVOUS_FAILED}
    join = summary["events"][0]
    assert join["transfer_ms"] > 0 and join["sources"]


def test_bad_churn_file_exits_2(tmp_path) -> None:
    churn = tmp_path / "churn.json"
    churn.write_text(json.dumps([{"at_step": 5, "event": "crash", "node": "nobody"}]))
    result = subprocess.run(
        [sys.executable, "-m", "chaos_sidecar.cli", "local", "--churn", str(churn),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "churn[0].node" in result.stderr and "Traceback" not in result.stderr


def test_chaos_round_with_trainer_only_and_sidecar_only_kills(tmp_path) -> None:
    """One round of ``bench --scenario chaos`` (seed 26: a trainer-only kill aimed at a
    checkpoint write, a sidecar-only kill aimed at the regroup after it, a join, link cuts,
    checkpoints every 5 steps) ends with every counter at zero, each kill classified."""
    from chaos_lab.benchmarks.chaos import chaos_schedule, run_round
    from chaos_lab.kills import MOMENTS

    events = chaos_schedule(26)
    aimed = [(e.on, e.event) for e in events if e.on is not None]
    assert aimed == [("checkpoint", "crash_trainer"), ("regroup", "crash_sidecar")], aimed
    assert {"join", "link_down"} <= {e.event for e in events}
    result = run_round(26, tmp_path)
    assert result["ok"], result
    for counter in ("divergent", "lost", "duplicated", "split_brain", "survivor_restarts"):
        assert result[counter] == 0, (counter, result)
    kills = result["kills"]
    assert [k["process"] for k in kills[:2]] == ["trainer_only", "sidecar_only"], kills
    assert all(k["landed"] in MOMENTS for k in kills), kills


def test_overlap_joiner_behind_a_full_log_still_enters_level(tmp_path) -> None:
    """A log of 1 gradient is full one step after S, long before the joiner holds S: the
    members regroup and wait in the joined group's all-gather (they stopped logging), the
    joiner replays to the log's head, posts it, and enters with the members' state."""
    churn = [ChurnEvent(at_step=20, event="join", node="n2")]
    cfg = JobConfig(nodes=2, steps=150, churn=churn, out=tmp_path / "out", live=False,
                    join_mode="overlap", digest_every=0, grad_log=1)  # fmt: skip
    asyncio.run(LocalJob(cfg).run())
    records = eventlog.read(sorted((cfg.out / "logs").glob("*.trainer.jsonl")))
    kinds = {r.kind for r in records}
    assert {Kind.OVERLAP_START, Kind.POSTED_AHEAD, Kind.ENTERED} <= kinds
    assert not kinds & {Kind.COLLECTIVE_FAILED, Kind.RENDEZVOUS_FAILED, Kind.RECONCILE_FAILED,
                        Kind.OVERLAP_DECLINED}  # fmt: skip
    switch = [r for r in records if r.kind is Kind.REGROUP and r.node != "n2" and "n2" in r["members"]]
    starts = {r.node: r["step"] for r in records if r.kind is Kind.OVERLAP_START}
    assert switch and all(r["step"] == starts[r.node] + cfg.grad_log for r in switch)  # the log was full
    done = {r.node: r["digest"] for r in records if r.kind is Kind.DONE}
    assert set(done) == {"n0", "n1", "n2"} and len(set(done.values())) == 1
