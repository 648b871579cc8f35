"""Process groups built ahead on threads (chaos_train.groups): two ranks in one process."""

from __future__ import annotations

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


def _open(store, rank, timeout_s=10.0):
    return lambda: (new_process_group("gloo", store, rank, 2, timeout_s), store)


def test_a_posted_gather_completes_when_the_other_rank_opens_the_group(tmp_path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 2)
    joiner = GroupBuild(5, ["a", "b"], _open(store, 1), POOL)
    member = GroupBuild(5, ["a", "b"], _open(store, 0), POOL)
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
    build = GroupBuild(3, ["a"], lambda: None, POOL)
    assert build.result() is None and not build.usable()
    with pytest.raises(RuntimeError, match="abandoned"):
        build.gather([0, 0])


def test_a_failed_build_raises_in_the_trainer_thread() -> None:
    def fail():
        raise OSError("store unreachable")

    build = GroupBuild(4, ["a"], fail, POOL)
    with pytest.raises(RuntimeError, match="epoch 4 failed: store unreachable"):
        build.result()
    assert build.done() and not build.usable()


def test_unknown_backend_is_refused(tmp_path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    with pytest.raises(ValueError, match="backend"):
        new_process_group("mpi", store, 0, 1, timeout_s=1.0)


def _pair(tmp_path, timeout_s: float):
    store = dist.FileStore(str(tmp_path / "store"), 2)
    builds = [GroupBuild(1, ["a", "b"], _open(store, r, timeout_s), POOL) for r in range(2)]
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
    store = dist.FileStore(str(tmp_path / "store"), 2)
    joiner = GroupBuild(6, ["a", "b"], _open(store, 1, timeout_s=60.0), POOL)
    member = GroupBuild(6, ["a", "b"], _open(store, 0, timeout_s=60.0), POOL)
    assert joiner.result() is not None and member.result() is not None
    posted = joiner.gather([41, 1])  # the member moves to a newer view and never gathers here
    del member  # what the trainer's close-group thread does with a build it set aside
    with pytest.raises(RuntimeError) as raised:
        posted.result()
    assert "Timed out" not in str(raised.value)  # the connection closed: not gloo's timeout
