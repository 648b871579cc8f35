"""Process groups built ahead on threads (chaos_train.groups): two ranks in one process."""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import threading
import time

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


def _build(epoch, store, rank, timeout_s=10.0, pool=POOL):
    """A two-member group build in ``store`` (the members met there)."""
    open_group = lambda met: (new_process_group("gloo", met.clone(), rank, 2, timeout_s, "127.0.0.1"), met)  # noqa: E731
    return GroupBuild(epoch, ["a", "b"], lambda: store, open_group, pool)


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


# ranks 1..K of a group of K + 1 in one process (a thread each): each publishes its address in
# the store and connects to the others once rank 0 published its own
PEERS = """
import datetime, sys, threading
import torch.distributed as dist
from chaos_train.groups import new_process_group
port, size = int(sys.argv[1]), int(sys.argv[2])
def member(rank):
    store = dist.TCPStore("127.0.0.1", port, None, False, datetime.timedelta(seconds=60))
    new_process_group("gloo", store, rank, size, 60.0, "127.0.0.1")
threads = [threading.Thread(target=member, args=(r,)) for r in range(1, size)]
for t in threads: t.start()
for t in threads: t.join()
"""
STOPPED = 8  # gloo decides who connects to whom per pair by their addresses: rank 0 waits for
# a connection from at least one of 8 stopped members unless it connects to all 8 (1 in 256)


@pytest.mark.timeout(120)
def test_a_build_held_by_a_member_gone_mid_connect_is_given_up_once_the_view_moves_on() -> None:
    """Members that published their addresses in the store and then never connect (killed, or
    stopped as here) hold the others in gloo's constructor for five times the group's
    timeout, whatever the view says (round 14 of the chaos run: 75 s). A trainer waiting for
    the build with ``moved_on`` leaves as soon as it says the view moved on."""
    size = STOPPED + 1
    for _attempt in range(2):  # both attempts fail to hold rank 0 once in 65,536
        store = _store(size)
        peers = subprocess.Popen([sys.executable, "-c", PEERS, str(store.port), str(size)])
        try:
            deadline = time.monotonic() + 60  # the peers import torch: seconds on a loaded machine
            while not store.check([f"0/{r}" for r in range(1, size)]):  # gloo's keys: their addresses
                assert peers.poll() is None, "the peers died before publishing their addresses"
                assert time.monotonic() < deadline, "the peers did not publish their addresses in 60 s"
                time.sleep(0.01)
            peers.send_signal(signal.SIGSTOP)
            open_group = lambda met: (new_process_group("gloo", met.clone(), 0, size, 10.0, "127.0.0.1"), met)  # noqa: E731
            build = GroupBuild(2, [f"m{r}" for r in range(size)], lambda: store, open_group, BuildThreads(1))
            began = time.monotonic()
            moved = began + 1.0
            opened = build.result(moved_on=lambda: time.monotonic() > moved)
            if build.done():  # rank 0 connected to every stopped member itself: nothing held it
                continue
            assert opened is None
            assert time.monotonic() - began < 5.0  # not gloo's 50 s (5 x the 10 s timeout)
            assert not build.usable()
            return
        finally:
            peers.kill()
            peers.wait()
    pytest.fail("no build was given up while gloo waited for a stopped member")


def test_a_job_gets_a_thread_of_its_own_when_every_build_thread_is_held() -> None:
    """Builds abandoned in gloo's constructor hold their threads for minutes: a new build must
    not queue behind them."""
    pool = BuildThreads(1)
    release = threading.Event()
    started = [threading.Event() for _ in range(3)]
    for event in started:  # three jobs that each hold their thread until released
        pool.submit(lambda e=event: (e.set(), release.wait(30)))
    try:
        assert all(e.wait(10) for e in started), "a job waited for a busy thread"
    finally:
        release.set()
    ran = threading.Event()
    pool.submit(ran.set)  # threads freed again take jobs
    assert ran.wait(10)
