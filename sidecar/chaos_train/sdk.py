"""ElasticTrainer: data-parallel steps that survive joins, leaves and crashes.

At every step boundary the trainer knows (from the sidecar watcher thread) whether the
group's view moved on. The flag travels inside the step's one all-reduce (together with the
gradients and the loss), so every member decides to regroup after the same step. A regroup
builds a new gloo/nccl process group for the view's epoch (rank = position in the view),
then the members agree on who holds the newest state: those behind (fresh joiners, or a
survivor one step short after a crash) pull it from every up-to-date member at once
through their sidecars (planned multi-source transfer), while the others wait ("blocking"
join). A failed collective means a member died: the survivors wait for the view without
it and regroup the same way; the interrupted step is redone, so no sample is lost or seen
twice.

In an "overlap" join the members do not wait: they copy their state at a step S, train on
and log their averaged gradients while the joiner pulls S and replays the log; the joined
view's group is built meanwhile. At the switch the joiner enters behind: it takes no share of
the batch, its all-reduces (zeros and its flags) are posted ahead, and it replays the log and
then the gradients it receives until it is level; its flag in the all-reduce then tells the
members it takes a share from the next step.

The engine is split by concern, one module each: ``regroup`` (rendezvous, group build,
reconciling state: a transfer or a resume from a checkpoint), ``overlap`` (overlap joins),
``stepping`` (a step, its vote, entering by replay, the step log); ``engine_config`` holds the
settings, exceptions and shared constants; this module keeps the loop and the group's life
cycle. The user's side is ``chaos_train.workload`` (gradients and update) and
``chaos_train.trainer`` (the public API).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import math
import os
import queue
import signal
import threading
from collections.abc import Callable
from typing import Any

import torch

from chaos_sidecar.errors import InputError, UserCodeError
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_train import state as snapshot_state
from chaos_train.checkpoint import Checkpoints
from chaos_train.engine_config import (
    RETRY_PATIENCE_S,
    JobFinished,
    LeftGroup,
    NoState,
    TrainerConfig,
    env_backend,
    log_keeper,
)
from chaos_train.groups import BuildThreads, GroupBuild, wait_for
from chaos_train.lineage import FOLLOWS, FOUNDING
from chaos_train.overlap import OverlapJoin
from chaos_train.regroup import Regrouping
from chaos_train.rendezvous import Rendezvous
from chaos_train.sampler import ElasticSampler
from chaos_train.sidecar_client import SidecarClient, SidecarLost
from chaos_train.stepping import Stepping, data_parallel_step
from chaos_train.workload import Workload

__all__ = [
    "ElasticTrainer",
    "JobFinished",
    "LeftGroup",
    "NoState",
    "TrainerConfig",
    "data_parallel_step",
    "env_backend",
    "log_keeper",
]


class ElasticTrainer(Regrouping, OverlapJoin, Stepping):
    def __init__(
        self,
        config: TrainerConfig,
        work: Workload,
        after_step: Callable[[int, float, int, int], None] | None = None,
    ) -> None:
        """``after_step(step, loss, rank, world)`` runs after every step this member takes part in."""
        self.cfg = config
        self.work = work
        self.replica = work.replica
        self.after_step = after_step
        self.sampler = ElasticSampler(len(work.dataset), work.global_batch, config.seed)
        self.step = 0 if config.founding else -1  # -1: no state yet
        self.group_epoch: int | None = None
        self.group_id = ""  # the current group's meeting name (chaos_train.rendezvous.Meeting.group)
        self.rank = 0
        self.world = 1
        self.members: list[str] = []
        self.group = None  # this view's process group (see chaos_train.groups)
        self._lost: Callable[[], bool] | None = None  # whether the view dropped one of its members
        self._store = None
        self._next: GroupBuild | None = None  # overlap: the joined view's group, built ahead
        # overlap: members that entered the group behind and replay while the others train,
        # taking no share of the batch until they are through (see _entering_step); a joiner's
        # own catch-up: the end of the members' log and its sources, the group's step, and the
        # averaged gradients it received in the group but has not applied yet
        self._entering: list[str] = []
        # a blocking joiner takes no share of the batch in its first step: the members compute
        # theirs while it pulls the state (see _compute_ahead), so that step only waits for
        # the all-reduce; the gradient computed ahead: (step, group, ids, flat)
        self._resting: list[str] = []
        self._ahead: tuple[int, str, list[int], torch.Tensor] | None = None
        self._catch_up: tuple[int, list[str]] | None = None
        self._group_step = 0
        self._backlog: collections.deque[tuple[int, torch.Tensor]] = collections.deque()
        # its all-reduces posted ahead: (group, work, tensor, final: the last one it enters in)
        self._posted: collections.deque[tuple[Any, Any, torch.Tensor, bool]] = collections.deque()
        self._steps = 0  # the job's last step: nothing is posted ahead past it
        self._capture: concurrent.futures.Future | None = None  # overlap: snapshot S being copied
        self._unchecked: tuple[Any, list[list[int]]] | None = None  # see _predicted_gather
        self._can_replay = False  # an overlap joiner holding a snapshot the members' log continues
        self._lineage = FOUNDING  # the group this state's last step was taken in (chaos_train.lineage)
        self._stale_grads: tuple[int, int] | None = None  # gradient log to drop once no one enters
        # overlap: the copy of S, snapshot S and the gradient log are done in order on one
        # thread (a joiner asking too early finds nothing and asks again)
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._writer.submit(lambda: None)  # its thread starts now, not at the step where S is taken
        self._builders = BuildThreads()  # started now, not at the step where a join begins
        self.regroup_needed = True
        self.leaving = False
        self.pending: dict[str, Any] | None = None  # overlap: joiners catching up, see _start_overlap
        self._just_regrouped = False
        self._idle_s = 0.0  # the last regroup's pause, reported with the next step
        self._reported_at = -math.inf
        # closed groups are freed here (see _close_group): one thread, started once
        self._to_free: queue.SimpleQueue = queue.SimpleQueue()
        self._freeing = threading.Thread(target=self._free_closed, name="close-group", daemon=True)
        self._freeing.start()
        self.sidecar = SidecarClient(config.sidecar_url)
        self.log = EventLog(config.log_path, config.node_id).write
        self.params = work.params
        self.grad_bytes = work.grad_bytes
        self._step_times: collections.deque[float] = collections.deque(maxlen=20)
        self._last_step_end: float | None = None
        self.rendezvous: Rendezvous | None = None  # once the sidecar says where this node is
        self.checkpoints = (
            Checkpoints(config.checkpoint, config.node_id, self.log) if config.checkpoint else None
        )
        self._same_epoch_again = False
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.leaving = True

    # --- the loop -------------------------------------------------------------------------------

    def run(self, steps: int) -> None:
        self.log(Kind.START, pid=os.getpid())
        self._steps = steps
        address = self.cfg.address or self.sidecar.node_host()
        self.rendezvous = Rendezvous(self.sidecar, self.cfg.node_id, address, self.cfg.timeout_s)
        if not self.cfg.founding:
            self.log(Kind.JOIN_REQUESTED)
        self.sidecar.join()  # a standby sidecar asks for admission only now that we are ready
        self.sidecar.start_watching()
        try:
            if self.cfg.join_mode == "overlap" and self.step < 0:
                self._overlap_catch_up()
            while self._group_position() < steps:
                if self.regroup_needed:
                    self._regroup()
                try:
                    self._train_step()
                except RuntimeError as exc:  # a collective failed: someone died, or timed out
                    self.log(Kind.COLLECTIVE_FAILED, step=self.step, error=str(exc)[:200])
                    self.regroup_needed = True
                    if not self._await_newer_view(patience_s=RETRY_PATIENCE_S):
                        self._retry_epoch()  # nobody left the view: form the same group afresh
                # a SIGTERM is announced in the next step's all-reduce; the whole group then
                # regroups after that step, and this member leaves instead of regrouping
            while self._replay_one():  # an entering joiner still behind at the last step
                pass
            self.log(Kind.DONE, step=self.step, digest=snapshot_state.digest(self.replica))
            self.sidecar.report(finished_step=self.step)  # a member that comes back later stops
            self._finish()
        except LeftGroup:
            self.log(Kind.LEFT, step=self.step)
        except JobFinished:
            self.log(Kind.JOB_FINISHED, step=self.step)
        except NoState as exc:
            self.log(Kind.NO_STATE, error=str(exc))
            raise
        except SidecarLost as exc:  # the node is gone from the group; the pod restarts it
            self.log(Kind.SIDECAR_LOST, step=self.step, error=str(exc))
            raise
        except (UserCodeError, InputError) as exc:  # the user's code or input: leave cleanly, end with it
            self.log(Kind.USER_ERROR, step=self.step, error=str(exc)[:500])
            with contextlib.suppress(Exception):
                self.sidecar.leave()
            raise
        finally:
            self._writer.shutdown(wait=True)
            self.sidecar.stop()
            self._close_group(wait=True)
            self._drain_frees()

    def _finish(self) -> None:
        """All members reach the last step together; a final barrier keeps the group up until then."""
        with contextlib.suppress(RuntimeError):
            wait_for(self.group.barrier(), self._lost)

    def _close_group(self, wait: bool = False) -> None:
        """Drop this view's group. Freeing a gloo group takes 20-45 ms (it closes every
        connection, with the GIL released), so unless ``wait`` a thread holds the last reference."""
        closing = [e for e in self._posted if e[0] is self.group]  # their work ends with the group
        self._posted = collections.deque(e for e in self._posted if e[0] is not self.group)
        last = [self.group, self._store, closing, self._unchecked]
        self.group = self._store = self._unchecked = None
        if not wait and last[0] is not None:
            self._to_free.put(last)
            last = []

    def _free_closed(self) -> None:
        while True:
            closed = self._to_free.get()
            if closed is None:
                return
            # the last references: the group is freed here (a build still running: by its thread)
            closed.clear()

    def _drain_frees(self) -> None:
        """Wait until the groups closed earlier are freed. A gloo group is freed with the GIL
        released; if the interpreter finalizes meanwhile, the freeing thread is ended as it
        takes the GIL back, unwinding through a C++ destructor, and the process aborts
        ("terminate called without an active exception", exit -6) after a clean leave."""
        self._to_free.put(None)
        self._freeing.join(timeout=self.cfg.timeout_s)

    def _write_later(self, write, *args: Any, **kwargs: Any) -> None:
        def logged() -> None:
            try:
                write(*args, **kwargs)
            except Exception as exc:  # a joiner then waits for the view to move on
                self.log(Kind.WRITE_FAILED, what=getattr(write, "__name__", str(write)), error=str(exc)[:200])

        self._writer.submit(logged)

    def _apply_averaged(self, step: int, flat: torch.Tensor) -> torch.Tensor:
        """Apply the group's averaged gradient of ``step`` (the next one this replica is
        missing); returns what followed it in the all-reduce (loss and flags, if any)."""
        tail = self.work.apply(flat)
        self.sampler.advance()
        self.step = step
        self._lineage = FOLLOWS  # the members' own gradient
        return tail
