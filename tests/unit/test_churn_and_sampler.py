"""Churn scripts (validation, random generation) and the elastic sampler (pure parts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos_lab.churn import ChurnEvent, default_churn, load_churn, parse_churn, random_churn
from chaos_lab.jobreport import check_replicas, check_samples
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import VERSION, Record
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


@pytest.mark.parametrize("world", range(1, 10))
@pytest.mark.parametrize("global_batch", [1, 7, 16, 23])
def test_split_gives_every_id_of_a_ragged_batch_to_exactly_one_rank(world: int, global_batch: int) -> None:
    sampler = ElasticSampler(dataset_size=100, global_batch=global_batch, seed=world)
    for _ in range(3 * sampler.steps_per_epoch + 1):
        batch = sampler.batch()
        parts = [ElasticSampler.split(batch, rank, world) for rank in range(world)]
        flat = [i for part in parts for i in part]
        assert flat == batch  # contiguous, in rank order: nothing lost, nothing twice
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert len(batch) == global_batch
        sampler.advance()


def test_an_epoch_drops_only_the_tail_that_does_not_fill_a_batch() -> None:
    sampler = ElasticSampler(dataset_size=50, global_batch=16, seed=1)
    assert sampler.steps_per_epoch == 3
    epochs: dict[int, list[int]] = {}
    for _ in range(6):
        epochs.setdefault(sampler.state()[0], []).extend(sampler.batch())
        sampler.advance()
    assert sorted(epochs) == [0, 1]
    for ids in epochs.values():
        assert len(ids) == len(set(ids)) == 48
    assert set(epochs[0]) != set(epochs[1])  # a different tail each epoch
    with pytest.raises(ValueError, match="at most dataset_size"):
        ElasticSampler(dataset_size=8, global_batch=9, seed=0)


def _records(raw: list[dict]) -> list[Record]:
    return [Record({"v": VERSION, "t": 0.0, **r}) for r in raw]


def _job_log(steps: int, batch: int, size: int, worlds: list[int]) -> list[dict]:
    """What members log for ``steps`` steps, the group of ``worlds[s - 1]`` members at step s."""
    sampler = ElasticSampler(size, batch, seed=5)
    records = [{"type": "job", "node": "n0", "dataset_size": size, "global_batch": batch}]
    for step in range(1, steps + 1):
        world = worlds[step - 1]
        full = sampler.batch()
        for rank in range(world):
            ids = ElasticSampler.split(full, rank, world)
            records.append({"type": "share", "node": f"n{rank}", "step": step, "epoch": 1, "group": "g",
                            "ids": ids, "t": float(step)})  # fmt: skip
            records.append({"type": "step", "node": f"n{rank}", "step": step, "epoch": 1, "group": "g",
                            "sampler": list(sampler.state()), "t": step + 0.5})  # fmt: skip
        sampler.advance()
    return records


def test_sample_accounting_counts_ids_and_catches_loss_and_duplication() -> None:
    good = _job_log(10, 16, 64, [3, 3, 4, 2, 5, 5, 1, 3, 3, 2])
    result = check_samples(_records(good), 10)
    assert result["sample_accounting"] == "ids"
    assert (result["samples_seen"], result["samples_lost"], result["samples_duplicated"]) == (160, 0, 0)
    # a member's share missing from a step: lost, even though every step record is there
    lost = [r for r in good if not (r["type"] == "share" and r["step"] == 3 and r["node"] == "n1")]
    assert check_samples(_records(lost), 10)["samples_lost"] == 4
    # a member that used an id another member also used in the same data epoch
    repeated = [dict(r) for r in good]
    share = next(r for r in repeated if r["type"] == "share" and r["step"] == 2 and r["node"] == "n0")
    other = next(r for r in repeated if r["type"] == "share" and r["step"] == 1 and r["node"] == "n0")
    share["ids"] = [other["ids"][0], *share["ids"][1:]]
    result = check_samples(_records(repeated), 10)
    assert result["samples_duplicated"] == 1 and result["samples_lost"] == 0


def test_a_step_redone_in_a_later_group_counts_once_as_redone() -> None:
    records = _job_log(4, 8, 32, [2, 2, 2, 2])
    # step 3 was also taken earlier by another group (whose members then died, or that ran
    # before the job resumed from a checkpoint): superseded, counted as redone
    records.append({"type": "share", "node": "n9", "step": 3, "group": "old", "ids": [0, 1, 2], "t": 0.1})
    records.append({"type": "step", "node": "n9", "step": 3, "group": "old", "sampler": [0, 16], "t": 0.2})
    result = check_samples(_records(records), 4)
    assert (result["samples_duplicated"], result["samples_lost"], result["samples_redone"]) == (0, 0, 3)
    # the same group name in the other order: the later one counts
    records[-1]["t"] = 9.0
    assert check_samples(_records(records), 4)["samples_lost"] == 5  # only n9's 3 ids of the 8 for step 3
    # a share logged before the all-reduce counts even if its member never logged the step
    records = [r for r in _job_log(4, 8, 32, [2, 2, 2, 2]) if not (r["type"] == "step" and r["node"] == "n1")]
    assert check_samples(_records(records), 4)["samples_lost"] == 0


def test_a_step_its_member_discarded_is_not_a_replica_nor_the_step_that_counts() -> None:
    records = _job_log(4, 8, 32, [2, 2, 2, 2])
    for r in records:
        if r["type"] == "step":
            r["digest"] = f"d{r['step']}"
    # cut off mid-step 4, n9 completed in its old group an all-reduce the others gave up, with
    # another outcome, at t=9, after the group took step 4 again; then it pulled the group's state
    records.append({"type": "share", "node": "n9", "step": 4, "group": "old", "ids": [0, 1, 2], "t": 3.2})
    orphan = {
        "type": "step",
        "node": "n9",
        "step": 4,
        "group": "old",
        "sampler": [0, 32],
        "digest": "x",
        "t": 9.0,
    }
    records.append(orphan)
    assert not check_replicas(_records(records))[0]  # as long as nothing discards it, a divergence
    records.append({"type": "pulled", "node": "n9", "name": "state-e3", "t": 9.5})
    identical, compared, problems = check_replicas(_records(records))
    assert identical and compared == 4, problems
    result = check_samples(_records(records), 4)  # step 4 counts in the group that kept it
    assert (result["samples_lost"], result["samples_duplicated"], result["samples_redone"]) == (0, 0, 3)
    # a discarded step is the member's last before the pull only: a later divergence still shows
    records.append({"type": "step", "node": "n9", "step": 3, "group": "g", "sampler": [0, 24], "digest": "y",
                    "t": 10.0})  # fmt: skip
    assert not check_replicas(_records(records))[0]


# round 4715 of `bench --scenario chaos --seed 4711` as the old generator wrote it: after the
# crash of n1 the view could still be {n0, n1, n3} (n4 not admitted yet), where n0 and n3, cut
# from each other, each reach only themselves of the two live nodes
HUNG_ROUND_4715 = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "round-4715-churn.json").read_text()
)


def majority_connected_everywhere(script: list, initial: list[str], upto: int, relay: bool) -> bool:
    """Test oracle, written apart from the generator's model: replays ``script[:upto]`` and
    tries every view the group may hold (any subset of the joiners admitted, any removal of
    the last LINGER_STEPS still pending); in each, every live member must reach a majority of
    the view over links that are up (or through one live member of the view, with relay)."""
    from itertools import chain, combinations

    from chaos_lab.churn import LINGER_STEPS, REMOVALS

    alive, joined, gone, cut = set(initial), [], [], set()
    for e in script[:upto]:
        if e.event == "join":
            alive.add(e.node)
            joined.append(e.node)
        elif e.event in REMOVALS:
            alive.discard(e.node)
            gone.append((e.at_step, e.node))
        elif e.event in ("link_down", "link_up"):
            (cut.add if e.event == "link_down" else cut.discard)(frozenset((e.node, e.peer)))
    now = script[upto - 1].at_step
    pending = joined + [node for at, node in gone if now - at < LINGER_STEPS]
    base = alive - set(joined)
    subsets = chain.from_iterable(combinations(pending, k) for k in range(len(pending) + 1))
    for extra in subsets:
        view = base | set(extra)
        live = view & alive

        def linked(a: str, b: str, live=live) -> bool:
            return a == b or frozenset((a, b)) not in cut

        for a in live:
            reached = [b for b in live if linked(a, b) or (relay and any(linked(a, r) and linked(r, b)
                                                                         for r in live))]  # fmt: skip
            if len(reached) < len(view) // 2 + 1:
                return False
    return True


def test_the_oracle_rejects_round_4715_as_first_written() -> None:
    from chaos_lab.churn import GroupModel

    script = parse_churn(HUNG_ROUND_4715, INITIAL, 150)
    assert majority_connected_everywhere(script, INITIAL, 4, relay=False)
    assert not majority_connected_everywhere(script, INITIAL, 5, relay=False)  # the crash of n1
    group = GroupModel(list(INITIAL), relay=False)
    for event in script[:4]:
        assert group.allows(event)
        group.apply(event)
    assert not group.allows(script[4])


@pytest.mark.parametrize("kinds", ["demo", "chaos"])
def test_random_churn_keeps_a_connected_majority_in_every_possible_view(kinds: str) -> None:
    """The generator's promise, over 1,000 seeds of 7 events each (per kind set): after every
    event, every view the group may hold has every live member reaching a majority of it."""
    from chaos_lab.churn import CHAOS_KINDS, DEMO_KINDS, RELAY

    chosen = CHAOS_KINDS if kinds == "chaos" else DEMO_KINDS
    for seed in range(1000):
        script = random_churn(seed, INITIAL, 150, events=7, kinds=chosen)
        for upto in range(1, len(script) + 1):
            assert majority_connected_everywhere(script, INITIAL, upto, relay=RELAY), (seed, script[upto - 1])


def test_events_keyed_to_time_as_well_as_steps() -> None:
    script = [
        {"at_s": 2.5, "event": "link_down", "node": "n0", "peer": "n1"},
        {"at_step": 40, "at_s": 30, "event": "link_up", "node": "n0", "peer": "n1"},
    ]
    down, up = parse_churn(script, INITIAL, 100)
    assert down.at_step is None and down.at_s == 2.5
    assert not down.due(step=99, elapsed_s=2.0) and down.due(step=0, elapsed_s=2.5)
    assert up.due(step=40, elapsed_s=0.0) and up.due(step=0, elapsed_s=30.0)  # whichever first
    assert parse_churn([e.to_json() for e in (down, up)], INITIAL, 100) == [down, up]
    assert up.label() == "at step 40 or 30 s: link_up n0-n1"
    for bad, field in (
        ({"event": "join", "node": "x"}, "churn[0].at_step"),
        ({"at_s": -1, "event": "join", "node": "x"}, "churn[0].at_s"),
        ({"at_s": True, "event": "join", "node": "x"}, "churn[0].at_s"),
    ):
        with pytest.raises(InputError) as info:
            parse_churn([bad], INITIAL, 100)
        assert info.value.field == field
    with pytest.raises(InputError, match="time order"):
        parse_churn([{**script[0], "at_s": 9}, {**script[1], "at_s": 3}], INITIAL, 100)


def test_a_stalled_group_gets_the_next_healing_event_ahead_of_its_turn() -> None:
    from chaos_lab.localjob import HEAL_AFTER_S, take_due

    crash = ChurnEvent(50, "crash", "n1")
    later_up = ChurnEvent(80, "link_up", "n1", "n2")  # its link is not down (yet)
    link_up = ChurnEvent(90, "link_up", "n0", "n3")
    pending = [crash, later_up, link_up]
    cut = {frozenset(("n3", "n0"))}
    assert take_due(pending, step=10, elapsed_s=5.0, idle_s=0.0, cut=cut) is None
    assert take_due(pending, step=10, elapsed_s=5.0, idle_s=HEAL_AFTER_S, cut=cut) is link_up  # the cut one
    assert pending == [crash, later_up]
    assert take_due(pending, step=10, elapsed_s=99.0, idle_s=HEAL_AFTER_S, cut=set()) is None  # none cut
    assert take_due(pending, step=50, elapsed_s=5.0, idle_s=0.0, cut=set()) is crash and pending == [later_up]


def test_heal_cuts_restores_only_the_cuts_a_script_leaves_down() -> None:
    from chaos_lab.churn import ChurnEvent, heal_cuts

    script = [
        ChurnEvent(10, "link_down", "n0", "n1"),
        ChurnEvent(20, "link_down", "n2", "n3"),
        ChurnEvent(25, "link_up", "n3", "n2"),
        ChurnEvent(30, "crash", "n1"),
    ]
    healed = heal_cuts(script, 5)
    assert [(e.at_step, e.event, e.node) for e in healed] == [
        (10, "link_down", "n0"), (15, "link_up", "n0"), (20, "link_down", "n2"),
        (25, "link_up", "n3"), (30, "crash", "n1"),
    ]  # fmt: skip
    assert healed[1].peer == "n1"
