"""Process groups built ahead on threads (chaos_train.groups): two ranks in one process."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from chaos_train.groups import BuildThreads, Gather, GroupBuild, all_gather_ints, new_process_group

POOL = BuildThreads(2)


def _open(store, rank):
    return lambda: (new_process_group("gloo", store, rank, 2, timeout_s=10.0), store)


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
    assert posted.is_completed() and posted.result() == [[42, 0], [41, 1]]
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
