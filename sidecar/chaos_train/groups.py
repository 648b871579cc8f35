"""Process groups as plain objects, one per view epoch, built at the step boundary or ahead of it.

The trainer never touches torch's default group: a view's group is a ``ProcessGroupGloo``
(``ProcessGroupNCCL`` on CUDA) made from that epoch's store and used through its own methods;
a view whose members belong to several parties gets a chaos_train.crossparty.CrossPartyGroup
instead (gloo within each party, encrypted between the parties' leaders), with the same methods.
So a group can be built on a thread while the previous one still trains (the constructor
waits for every member with the GIL released), and no torch global has to be reset between
views.
"""

from __future__ import annotations

import datetime
import queue
import threading
from collections.abc import Callable

import torch
import torch.distributed as dist

Opened = tuple[dist.ProcessGroup, dist.Store]


def new_process_group(
    backend: str, store: dist.Store, rank: int, size: int, timeout_s: float, address: str | None = None
):
    """A process group of ``size`` ranks meeting in ``store``. gloo binds to ``address`` (this
    node's own host) when given, else to the interface its hostname resolves to."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, size, options)
    if backend != "gloo":
        raise ValueError(f"backend must be gloo or nccl, got {backend!r}")
    gloo = dist.ProcessGroupGloo._Options()
    gloo._timeout = timeout
    device = dist.ProcessGroupGloo.create_device(hostname=address) if address else None
    gloo._devices = [device or dist.ProcessGroupGloo.create_default_device()]
    return dist.ProcessGroupGloo(store, rank, size, gloo)


WAIT_SLICE = datetime.timedelta(seconds=0.2)
# gloo's constructor waits for a connection from every member that published its address; one
# killed right after publishing holds the others there for five times the group's timeout
# (75 s at 15 s; round 14 of the chaos run stalled so), and the constructor cannot be told that
# the view dropped it: a trainer waiting for a build checks the view this often
MOVED_ON_POLL_S = 0.05


class GroupLost(RuntimeError):
    """A collective was given up because the agreed view dropped a member of its group."""


def wait_for(work, lost: Callable[[], bool] | None = None) -> None:
    """``work.wait()``, but raising GroupLost once ``lost()`` says the agreed view dropped a
    member of the work's group. Such a collective may never complete, and gloo would end it
    only at its timeout: ``abort()`` does not end a pending operation. ``lost`` is checked
    every 0.2 s while the work is pending; None waits plainly (NCCL: a timed-out wait there
    may abort the communicator)."""
    if lost is None:
        work.wait()
        return
    while True:
        try:
            work.wait(WAIT_SLICE)
            return
        except RuntimeError:
            if work.is_completed():
                # it ended: either the slice ran out just as it completed (this returns) or the
                # collective itself failed (this raises its own error, not the slice's timeout)
                work.wait()
                return
        if lost():
            raise GroupLost("the agreed view dropped a member of this group")


class Gather:
    """An all-gather of a few integers per rank, posted now and read later."""

    def __init__(self, group, values: list[int]) -> None:
        mine = torch.tensor(values, dtype=torch.int64)
        self._out = [torch.zeros_like(mine) for _ in range(group.size())]
        self._work = group.allgather([self._out], [mine])

    def is_completed(self) -> bool:
        return self._work.is_completed()

    def result(self, lost: Callable[[], bool] | None = None) -> list[list[int]]:
        """Every rank's values, in rank order (raises RuntimeError when a rank failed; see
        wait_for for ``lost``)."""
        wait_for(self._work, lost)
        return [[int(x) for x in t.tolist()] for t in self._out]


def all_gather_ints(group, values: list[int], lost: Callable[[], bool] | None = None) -> list[list[int]]:
    return Gather(group, values).result(lost)


class BuildThreads:
    """Threads started ahead that build groups (see GroupBuild). Daemons: a build still waiting
    for members that will not come must not hold up the trainer's exit. Several: a build for a
    view that moved on runs until it notices (or until gloo gives up: minutes, see
    MOVED_ON_POLL_S), while the next view's build starts; when every thread is busy so, a job
    gets a thread of its own rather than waiting behind them."""

    def __init__(self, count: int = 3) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        for _ in range(count):
            self._start()
        self._idle = count  # threads free for a job, less the jobs queued

    def _start(self) -> None:
        threading.Thread(target=self._work, name=f"group-build-{self._threads}", daemon=True).start()
        self._threads += 1

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        with self._lock:
            if self._idle == 0:
                self._start()
                self._idle += 1
            self._idle -= 1
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while True:
            fn, args = self._jobs.get()
            fn(*args)  # GroupBuild._run keeps its own errors
            del fn, args  # a build set aside is freed as soon as the trainer drops it too
            with self._lock:
                self._idle += 1


class GroupBuild:
    """The group of an upcoming view, built on a thread of ``pool`` while training goes on.
    The pool's threads are started ahead: starting a thread waits until the OS schedules it,
    several ms on busy cores, and a build starts at the step where a join begins.

    Its first collective is the all-gather of every member's step (see ``gather``): members
    run it at the step boundary where they change groups; a joiner posts it once it holds a
    state level with the members' gradient log, and keeps replaying until it completes.
    """

    def __init__(
        self,
        epoch: int,
        members: list[str],
        meet: Callable[[], dist.Store | None],
        open_group: Callable[[dist.Store], Opened],
        pool: BuildThreads,
    ) -> None:
        self.epoch = epoch
        self.members = list(members)
        self._store: dist.Store | None = None
        self._met = threading.Event()  # the members met (or the meeting failed)
        self._opened: Opened | None = None
        self._error: BaseException | None = None
        self._gather: Gather | None = None
        self._finished = threading.Event()
        pool.submit(self._run, meet, open_group)

    def _run(self, meet: Callable[[], dist.Store | None], open_group: Callable[[dist.Store], Opened]) -> None:
        try:
            self._store = meet()
            self._met.set()
            if self._store is not None:
                self._opened = open_group(self._store)
        except Exception as exc:  # handed to the trainer thread by result()
            self._error = exc
        finally:
            self._met.set()
            self._finished.set()

    def store(self, wait_s: float = 0.0) -> dist.Store | None:
        """The store the members met in, once they all did (waiting up to ``wait_s``); None
        before that, or when the meeting failed or the view moved on."""
        self._met.wait(wait_s)
        return self._store

    def done(self) -> bool:
        return self._finished.is_set()

    def usable(self) -> bool:
        """Built, and for this view (not abandoned because the view moved on)."""
        return self.done() and self._error is None and self._opened is not None

    def result(self, moved_on: Callable[[], bool] | None = None) -> Opened | None:
        """The group and its store; None when the view moved on before everyone arrived, or
        (given ``moved_on``) once ``moved_on()`` says so while the group is still being built:
        the build is then abandoned, its thread ends when gloo gives up (see MOVED_ON_POLL_S)."""
        if moved_on is None:
            self._finished.wait()
        else:
            while not self._finished.wait(MOVED_ON_POLL_S):
                if moved_on():
                    return None
        if self._error is not None:
            raise RuntimeError(f"building the group of epoch {self.epoch} failed: {self._error}")
        return self._opened

    def posted(self) -> Gather | None:
        return self._gather

    def gather(self, values: list[int]) -> Gather:
        """Post the group's first all-gather with ``values``; later calls return that one."""
        if self._gather is None:
            opened = self.result()
            if opened is None:
                raise RuntimeError(f"the group of epoch {self.epoch} was abandoned")
            self._gather = Gather(opened[0], values)
        return self._gather
