"""Kills where it hurts (pure parts): kills that wait for a moment in a churn script, the
harness's live view of the trainers' moments, and where a kill landed by the complete logs."""

from __future__ import annotations

import pytest

from chaos_lab.benchmarks.chaos import AIMS, chaos_schedule
from chaos_lab.churn import ChurnEvent, parse_churn
from chaos_lab.kills import Moments, classify, landed_counts, missing
from chaos_lab.localjob import take_due
from chaos_sidecar.errors import InputError

INITIAL = ["n0", "n1", "n2", "n3"]


def rec(t: float, node: str, kind: str, **fields) -> dict:
    return {"t": t, "node": node, "type": kind, **fields}


# a joiner n3 pulls from n1 and n2 over [10, 12]; n1 writes a checkpoint over [20, 20.2];
# n2 regroups after a view change over [30, 30.5]; n1's first regroup is [0, 1]
LOG = [
    rec(0.0, "n1", "regroup_started", step=0, epoch=None),
    rec(1.0, "n1", "regroup", epoch=3, step=0),
    rec(2.0, "n0", "step", step=1),
    rec(2.0, "n2", "step", step=1),
    rec(9.0, "n3", "regroup_started", step=-1, epoch=None),
    rec(10.0, "n3", "pull_started", name="state-e4", sources=["n1", "n2"]),
    rec(12.5, "n3", "pulled", name="state-e4", seconds=1.9, load_s=0.5),
    rec(12.6, "n3", "regroup", epoch=4, step=40),
    rec(20.0, "n1", "checkpoint_started", step=50),
    rec(20.2, "n1", "checkpoint", step=50),
    rec(30.0, "n2", "regroup_started", step=70, epoch=4),
    rec(30.5, "n2", "regroup", epoch=5, step=70),
]


def kill(node: str, t: float, event: str = "crash") -> dict:
    return {"node": node, "event": event, "t": t}


@pytest.mark.parametrize(
    ("node", "t", "landed"),
    [
        ("n3", 11.0, "mid_transfer_joiner"),
        ("n2", 11.0, "mid_transfer_source"),  # n2 serves n3's pull
        ("n0", 11.0, "mid_step"),  # not a source
        ("n2", 12.1, "mid_step"),  # the transfer ended at 12.0 (12.5 minus the load)
        ("n1", 20.1, "mid_checkpoint"),
        ("n1", 20.3, "mid_step"),
        ("n2", 30.2, "mid_regroup"),
        ("n1", 0.5, "mid_start"),  # its first regroup: the group was forming
        ("n3", 9.5, "mid_start"),  # a joiner waiting for admission
        ("n0", 0.5, "mid_start"),  # no record yet: still starting
    ],
)
def test_a_kill_lands_where_the_logs_say_something_was_in_progress(node, t, landed) -> None:
    (result,) = classify([kill(node, t)], LOG)
    assert result["landed"] == landed and result["process"] == "both"


def test_an_open_moment_of_a_killed_trainer_ends_at_its_kill() -> None:
    """A joiner killed during its pull logs no end: the pull lasted until the kill, so a later
    kill of a source no longer lands in a transfer."""
    log = [rec(1.0, "n2", "step", step=1), rec(10.0, "n3", "pull_started", name="s", sources=["n1", "n2"])]
    first, second = classify([kill("n3", 11.0, "crash_trainer"), kill("n2", 11.5, "crash_sidecar")], log)
    assert (first["landed"], first["process"]) == ("mid_transfer_joiner", "trainer_only")
    assert (second["landed"], second["process"]) == ("mid_step", "sidecar_only")


def test_a_node_whose_sidecar_was_killed_ends_its_moments_at_the_kill() -> None:
    """Its trainer may crash without another record: the joiner's pull was in progress at the
    kill and ended there, so a source killed after it did not land in a transfer."""
    log = [rec(1.0, "n2", "step", step=1), rec(10.0, "n3", "pull_started", name="s", sources=["n1", "n2"])]
    first, second = classify([kill("n3", 11.0, "crash_sidecar"), kill("n2", 11.5, "crash_sidecar")], log)
    assert (first["landed"], first["process"]) == ("mid_transfer_joiner", "sidecar_only")
    assert second["landed"] == "mid_step"
    log = [rec(10.0, "n1", "checkpoint_started", step=5), rec(10.4, "n1", "checkpoint", step=5)]
    assert [k["landed"] for k in classify([kill("n1", 10.2, "crash_sidecar")], log)] == ["mid_checkpoint"]
    assert [k["landed"] for k in classify([kill("n2", 10.5, "crash_sidecar")], log)] == ["mid_start"]


def test_landed_counts_list_every_category_and_missing_names_the_short_ones() -> None:
    kills = classify([kill("n3", 11.0, "crash_sidecar"), kill("n1", 20.1, "crash_trainer")], LOG)
    counts = landed_counts(kills)
    assert counts["mid_transfer_joiner"] == 1 and counts["mid_checkpoint"] == 1 and counts["mid_regroup"] == 0
    assert counts["sidecar_only"] == 1 and counts["trainer_only"] == 1 and counts["both"] == 0
    short = missing(counts, 1)
    assert set(short) == {"mid_transfer_source", "mid_regroup", "both"}
    assert missing(counts, 0) == {}


def test_moments_observed_live() -> None:
    moments = Moments()
    for record in LOG[:6]:
        moments.feed(record)
    assert (
        moments.observed("pull", "n3") and moments.observed("serve", "n2") and moments.observed("serve", "n1")
    )
    assert not moments.observed("serve", "n0") and not moments.observed("pull", "n1")
    assert not moments.observed("regroup", "n3")  # its first regroup, and it is pulling
    moments.feed(LOG[6])
    assert not moments.observed("pull", "n3") and not moments.observed("serve", "n2")
    moments.feed(LOG[8])
    assert moments.observed("checkpoint", "n1") and not moments.observed("checkpoint", "n2")
    moments.died("n1", 20.1)
    assert not moments.observed("checkpoint", "n1")
    moments.feed(LOG[10])
    assert moments.observed("regroup", "n2")


def test_a_kill_may_wait_for_a_moment_in_a_churn_file() -> None:
    events = parse_churn(
        [{"at_step": 50, "event": "crash_trainer", "node": "n1", "on": "checkpoint"}], INITIAL, 100
    )
    assert events == [ChurnEvent(50, "crash_trainer", "n1", on="checkpoint")]
    assert parse_churn([e.to_json() for e in events], INITIAL, 100) == events
    assert events[0].label() == "on checkpoint, at step 50: crash_trainer n1"
    for bad, field in (({"on": "lunch"}, "churn[0].on"), ({"event": "leave"}, "churn[0].on")):
        with pytest.raises(InputError) as err:
            parse_churn([{"at_step": 5, "event": "crash", "node": "n1", "on": "pull"} | bad], INITIAL, 100)
        assert err.value.field == field


def test_take_due_fires_a_waiting_kill_on_its_moment_or_at_its_deadline() -> None:
    waiting = ChurnEvent(50, "crash", "n1", on="pull")
    after = ChurnEvent(60, "leave", "n2")
    pending = [waiting, after]
    assert take_due(pending, 10, 1.0, 0.0, set(), lambda e: False) is None
    assert take_due(pending, 70, 1.0, 0.0, set(), lambda e: False) is waiting  # the deadline
    pending = [waiting, after]
    assert take_due(pending, 10, 1.0, 0.0, set(), lambda e: e.node == "n1") is waiting
    assert take_due(pending, 10, 1.0, 0.0, set(), lambda e: True) is None  # a step-keyed one waits


@pytest.mark.parametrize("seed", range(1, 31))
def test_chaos_schedule_is_reproducible_and_aims_each_moment(seed: int) -> None:
    events = chaos_schedule(seed)
    assert events == chaos_schedule(seed)
    aimed = [e.on for e in events if e.on is not None]
    aim = AIMS[seed % len(AIMS)]
    assert aimed == (["checkpoint", "regroup"] if aim == "regroup" else [aim, "checkpoint"])
    if aim == "pull":
        assert next(e for e in events if e.on == "pull").node == "n4"  # the joiner
    assert all(e.node != "n0" for e in events if e.on is not None)  # the founder stays
