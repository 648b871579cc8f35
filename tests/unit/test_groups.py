"""Process groups built ahead on threads (chaos_train.groups): two ranks in one process."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from chaos_train.groups import (
    BuildThreads,
    Gather,
    GroupBuild,
    GroupLost,
    all_gather_ints,
    new_process_group,
    wait_for,
)

POOL = BuildThreads(2)


def _store(world: int = 2) -> dist.TCPStore:
    """A store on a free loopback port, as a view's first member hosts one."""
    return dist.TCPStore("127.0.0.1", 0, world, True, datetime.timedelta(seconds=30), wait_for_workers=False)


def _build(epoch, store, rank, timeout_s=10.0):
    """A two-member group build in ``store`` (the members met there)."""
    open_group = lambda met: (new_process_group("gloo", met.clone(), rank, 2, timeout_s, "127.0.0.1"), met)  # noqa: E731
    return GroupBuild(epoch, ["a", "b"], lambda: store, open_group, POOL)


def test_a_posted_gather_completes_when_the_other_rank_opens_the_group(tmp_path) -> None:
    store = _store()
    joiner = _build(5, store, 1)
    member = _build(5, store, 0)
    assert joiner.store(wait_s=10) is store
    assert joiner.result() is not None and member.result() is not None
    assert joiner.usable() and member.usable()
    posted = joiner.gather([41, 1])  # the joiner posts early and goes on working
    assert joiner.gather([99, 0]) is posted  # posted once: later calls return the first
    assert joiner.posted() is posted and member.posted() is None
    assert member.gather([42, 0]).result() == [[42, 0], [41, 1]]
    assert posted.result() == [[42, 0], [41, 1]]  # each rank completes on its own thread
    assert posted.is_completed()
    # the group goes on working after its first gather
    later = Gather(joiner.result()[0], [8])
    assert all_gather_ints(member.result()[0], [7]) == [[7], [8]]
    assert later.result() == [[7], [8]]


def test_a_build_whose_view_moved_on_is_not_usable() -> None:
    build = GroupBuild(3, ["a"], lambda: None, lambda store: pytest.fail("no meeting, no group"), POOL)
    assert build.result() is None and not build.usable() and build.store() is None
    with pytest.raises(RuntimeError, match="abandoned"):
        build.gather([0, 0])


def test_a_failed_build_raises_in_the_trainer_thread() -> None:
    def fail():
        raise OSError("store unreachable")

    build = GroupBuild(4, ["a"], fail, lambda store: pytest.fail("no meeting, no group"), POOL)
    with pytest.raises(RuntimeError, match="epoch 4 failed: store unreachable"):
        build.result()
    assert build.done() and not build.usable()


def test_unknown_backend_is_refused(tmp_path) -> None:
    store = _store(1)
    with pytest.raises(ValueError, match="backend"):
        new_process_group("mpi", store, 0, 1, timeout_s=1.0)


def _pair(tmp_path, timeout_s: float):
    store = _store()
    builds = [_build(1, store, r, timeout_s) for r in range(2)]
    return [b.result()[0] for b in builds]


def test_a_collective_waiting_for_a_member_the_view_dropped_is_given_up(tmp_path) -> None:
    first, second = _pair(tmp_path, timeout_s=60.0)
    work = first.allreduce([torch.ones(4)])  # the other rank never posts: it is gone
    checks = []

    def lost() -> bool:
        checks.append(work.is_completed())
        return len(checks) == 2  # the view drops the member between two checks

    with pytest.raises(GroupLost):
        wait_for(work, lost)
    assert checks == [False, False]  # given up on the view's word, long before gloo's timeout
    del second  # its connections close, which ends the pending work (else freeing waits for it)


def test_waiting_with_a_watch_still_returns_the_collective(tmp_path) -> None:
    first, second = _pair(tmp_path, timeout_s=60.0)
    late = []

    def lost() -> bool:  # the other rank posts only after the first check
        late.append(second.allreduce([torch.full((4,), 2.0)]))
        return False

    mine = torch.ones(4)
    work = first.allreduce([mine])
    wait_for(work, lost)
    late[0].wait()
    assert torch.equal(mine, torch.full((4,), 3.0))


def test_a_failed_collective_raises_its_own_error_not_group_lost(tmp_path) -> None:
    first, _ = _pair(tmp_path, timeout_s=0.5)
    work = first.allreduce([torch.ones(4)])
    with pytest.raises(RuntimeError) as raised:
        wait_for(work, lambda: False)  # the view keeps every member: only gloo's timeout ends it
    assert not isinstance(raised.value, GroupLost)


def test_freeing_a_build_set_aside_fails_the_peers_posted_gather_at_once(tmp_path) -> None:
    store = _store()
    joiner = _build(6, store, 1, timeout_s=60.0)
    member = _build(6, store, 0, timeout_s=60.0)
    assert joiner.result() is not None and member.result() is not None
    posted = joiner.gather([41, 1])  # the member moves to a newer view and never gathers here
    del member  # what the trainer's close-group thread does with a build it set aside
    with pytest.raises(RuntimeError) as raised:
        posted.result()
    assert "Timed out" not in str(raised.value)  # the connection closed: not gloo's timeout
