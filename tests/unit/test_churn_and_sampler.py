"""Churn scripts (validation, random generation) and the elastic sampler (pure parts)."""

from __future__ import annotations

import json

import pytest

from chaos_lab.churn import default_churn, load_churn, parse_churn, random_churn
from chaos_lab.jobreport import check_samples
from chaos_sidecar.errors import InputError
from chaos_train.sampler import ElasticSampler

INITIAL = ["n0", "n1", "n2", "n3"]


def test_default_churn_is_the_demo() -> None:
    kinds = [e.event for e in default_churn(INITIAL, 600)]
    assert kinds == ["join", "leave", "crash", "link_down", "link_up"]


@pytest.mark.parametrize("seed", range(1, 21))
def test_random_churn_is_valid_and_deterministic(seed: int) -> None:
    first = random_churn(seed, INITIAL, 600)
    assert first == random_churn(seed, INITIAL, 600)
    assert len(first) == 5
    # re-validating with the same rules must pass (never below the minimum size)
    assert parse_churn([e.to_json() for e in first], INITIAL, 600) == first


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"at_step": 10, "event": "join"}, "churn[0].node"),
        ({"at_step": 0, "event": "join", "node": "x"}, "churn[0].at_step"),
        ({"at_step": 999, "event": "join", "node": "x"}, "churn[0].at_step"),
        ({"at_step": 10, "event": "explode", "node": "n1"}, "churn[0].event"),
        ({"at_step": 10, "event": "crash", "node": "n9"}, "churn[0].node"),
        ({"at_step": 10, "event": "join", "node": "n1"}, "churn[0].node"),
        ({"at_step": 10, "event": "link_down", "node": "n1"}, "churn[0].peer"),
        ({"at_step": 10, "event": "leave", "node": "n1", "peer": "n2"}, "churn[0].peer"),
        ({"at_step": 10, "event": "join", "node": "x", "color": "red"}, "churn[0].color"),
    ],
)
def test_bad_churn_entries_are_named(data, field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_churn([data], INITIAL, 100)
    assert info.value.field == field


def test_churn_never_drops_below_the_minimum() -> None:
    script = [
        {"at_step": 10, "event": "crash", "node": "n1"},
        {"at_step": 20, "event": "crash", "node": "n2"},
    ]
    with pytest.raises(InputError, match="fewer than 3"):
        parse_churn(script, INITIAL, 100)


def test_churn_files(tmp_path) -> None:
    path = tmp_path / "churn.yaml"
    path.write_text("- {at_step: 5, event: join, node: n4}\n- {at_step: 9, event: leave, node: n4}\n")
    assert [e.event for e in load_churn(str(path), INITIAL, 50)] == ["join", "leave"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(InputError, match="list"):
        load_churn(str(bad), INITIAL, 50)
    with pytest.raises(InputError, match="random:SEED"):
        load_churn("random:x", INITIAL, 50)


def test_sampler_covers_each_epoch_exactly_once_whatever_the_split() -> None:
    sampler = ElasticSampler(dataset_size=64, global_batch=16, seed=3)
    seen = []
    for world in (4, 3, 5, 2):  # membership changes every step
        batch = sampler.batch()
        parts = [ElasticSampler.split(batch, rank, world) for rank in range(world)]
        assert sorted(i for part in parts for i in part) == sorted(batch)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        seen += batch
        sampler.advance()
    assert sorted(seen) == list(range(64))
    assert sampler.state() == (1, 0)


def test_sample_accounting_catches_loss_and_duplication() -> None:
    def step(s, epoch, cursor):
        return {"type": "step", "step": s, "sampler": [epoch, cursor]}

    good = [step(1, 0, 0), step(2, 0, 16), step(3, 0, 32), step(4, 0, 48), step(5, 1, 0)]
    assert check_samples(good, 5, 16, 64)["samples_lost"] == 0
    assert check_samples(good, 5, 16, 64)["samples_duplicated"] == 0
    lost = [r for r in good if r["step"] != 3]
    assert check_samples(lost, 5, 16, 64)["samples_lost"] == 16
    repeated = [*good[:2], step(3, 0, 16), *good[3:]]
    result = check_samples(repeated, 5, 16, 64)
    assert result["samples_duplicated"] == 16 and result["samples_lost"] == 16


def test_random_chaos_churn_always_leaves_a_group_that_can_agree() -> None:
    """After every event of 300 generated chaos scripts, each member still reaches a majority
    over working links (the generator once cut all links among a crash's three survivors)."""
    from chaos_lab.churn import CHAOS_KINDS, REMOVALS, connected_enough

    assert not connected_enough(["a", "b", "c"], [("a", "b"), ("b", "c"), ("a", "c")])
    for seed in range(300):
        members, down = ["n0", "n1", "n2", "n3"], []
        for event in random_churn(seed, list(members), 150, events=6, kinds=CHAOS_KINDS):
            if event.event == "join":
                members.append(event.node)
            elif event.event in REMOVALS:
                members.remove(event.node)
            elif event.event == "link_down":
                down.append((event.node, event.peer))
            elif event.event == "link_up":
                down = [link for link in down if set(link) != {event.node, event.peer}]
            assert len(members) >= 3 and connected_enough(members, down), (seed, event)
