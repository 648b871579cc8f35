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
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import math
import os
import queue
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from chaos_sidecar.errors import InputError, TrainingError, UserCodeError
from chaos_train import state as snapshot_state
from chaos_train.checkpoint import CheckpointPolicy, Checkpoints
from chaos_train.groups import BuildThreads, GroupBuild, all_gather_ints, new_process_group, wait_for
from chaos_train.rendezvous import GROUP_KEY, Rendezvous, RoundPassed
from chaos_train.sampler import ElasticSampler
from chaos_train.sidecar_client import SidecarClient, SidecarLost
from chaos_train.workload import Workload

REPORT_EVERY_S = 1.0  # between progress reports to the sidecar (metrics; each is an HTTP call)
# an overlap joiner replays the members' gradients; they never wait for that, but it only
# catches up if one replay takes less than one of their steps, otherwise it declines and joins
# blocking
REPLAY_SHARE_OF_STEP = 1.0
TRANSFER_DEADLINE_S = 3600.0  # a joiner's state transfer; the view changing ends the wait sooner
# a member entering the group by replay keeps this many of its all-reduces posted ahead (it
# adds no gradient), so the others never wait for its replay
POST_AHEAD = 4
RETRY_PATIENCE_S = 5.0  # after a failed collective: wait this long for a view change, then retry


DECLINED = "declined"  # an overlap joiner's catch-up progress when it will join blocking instead
# keys in a view's store (see chaos_train.rendezvous): the note that tells the joiners where
# snapshot S is (or that the members regroup blocking), and each joiner's progress
NOTE_KEY = "overlap-note"
BLOCKING_NOTE = {"blocking": True}
NOTE_WAIT_S = 60.0  # a joiner waits this long for the members' note, then joins blocking


def progress_key(joiner: str) -> str:
    return f"progress/{joiner}"


class LeftGroup(Exception):
    """This member left the group gracefully."""


class JobFinished(Exception):
    """The group already trained every step (a member that was away comes back too late)."""


class NoState(TrainingError):
    """No member of the group holds the training state (the job finished or every holder is
    gone): a group of joiners must not start training from scratch."""


@dataclass
class TrainerConfig:
    node_id: str
    sidecar_url: str
    snapshot_dir: Path
    log_path: Path | None  # the event log (JSON lines); None: none
    seed: int = 0
    timeout_s: float = 15.0
    backend: str = "gloo"
    digest_every: int = 10
    founding: bool = False  # member of the first view: starts from the seeded initial state
    join_mode: str = "blocking"  # or "overlap": members keep training while a joiner catches up
    grad_log: int = 128  # overlap: how many averaged gradients members keep for replay
    transfer_policy: str = "planned"  # or a benchmark baseline: "equal-split", "single-source"
    address: str | None = None  # this node's host for gloo and the stores it hosts; None: the
    # host its sidecar advertises to peers
    checkpoint: CheckpointPolicy | None = None  # durable checkpoints (see chaos_train.checkpoint)


class ElasticTrainer:
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
        self._catch_up: tuple[int, list[str]] | None = None
        self._group_step = 0
        self._backlog: collections.deque[tuple[int, torch.Tensor]] = collections.deque()
        # its all-reduces posted ahead: (group, work, tensor, final: the last one it enters in)
        self._posted: collections.deque[tuple[Any, Any, torch.Tensor, bool]] = collections.deque()
        self._steps = 0  # the job's last step: nothing is posted ahead past it
        self._capture: concurrent.futures.Future | None = None  # overlap: snapshot S being copied
        self._unchecked: tuple[Any, list[list[int]]] | None = None  # see _predicted_gather
        self._can_replay = False  # an overlap joiner holding a snapshot the members' log continues
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
        threading.Thread(target=self._free_closed, name="close-group", daemon=True).start()
        self.sidecar = SidecarClient(config.sidecar_url)
        self._log = config.log_path.open("a", buffering=1) if config.log_path else None
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

    def log(self, kind: str, **fields: Any) -> None:
        if self._log is None:
            return
        self._log.write(
            json.dumps({"t": time.time(), "node": self.cfg.node_id, "type": kind, **fields}) + "\n"
        )

    # --- the loop -------------------------------------------------------------------------------

    def run(self, steps: int) -> None:
        self.log("start", pid=os.getpid())
        self._steps = steps
        address = self.cfg.address or self.sidecar.node_host()
        self.rendezvous = Rendezvous(self.sidecar, self.cfg.node_id, address, self.cfg.timeout_s)
        if not self.cfg.founding:
            self.log("join_requested")
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
                    self.log("collective_failed", step=self.step, error=str(exc)[:200])
                    self.regroup_needed = True
                    if not self._await_newer_view(patience_s=RETRY_PATIENCE_S):
                        self._retry_epoch()  # nobody left the view: form the same group afresh
                # a SIGTERM is announced in the next step's all-reduce; the whole group then
                # regroups after that step, and this member leaves instead of regrouping
            while self._replay_one():  # an entering joiner still behind at the last step
                pass
            self.log("done", step=self.step, digest=snapshot_state.digest(self.replica))
            self.sidecar.report(finished_step=self.step)  # a member that comes back later stops
            self._finish()
        except LeftGroup:
            self.log("left", step=self.step)
        except JobFinished:
            self.log("job_finished", step=self.step)
        except NoState as exc:
            self.log("no_state", error=str(exc))
            raise
        except SidecarLost as exc:  # the node is gone from the group; the pod restarts it
            self.log("sidecar_lost", step=self.step, error=str(exc))
            raise
        except (UserCodeError, InputError) as exc:  # the user's code or input: leave cleanly, end with it
            self.log("user_error", step=self.step, error=str(exc)[:500])
            with contextlib.suppress(Exception):
                self.sidecar.leave()
            raise
        finally:
            self._writer.shutdown(wait=True)
            self.sidecar.stop()
            self._close_group(wait=True)

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
            # the last references: the group is freed here (a build still running: by its thread)
            closed.clear()

    def _await_newer_view(self, epoch: int | None = None, patience_s: float | None = None) -> bool:
        """Wait until the sidecar commits a view newer than ``epoch`` (default: the group's):
        True once it has; False when ``patience_s`` passed without one."""
        epoch = (self.group_epoch or 0) if epoch is None else epoch
        waiting_since = time.monotonic()
        reported = waiting_since
        while True:  # a member cut off from any majority pauses here until the group moves on
            view = self.sidecar.wait_view(epoch, timeout=min(5.0, patience_s or 5.0)).get("view") or {}
            if view.get("epoch", 0) > epoch:
                return True
            if patience_s is not None and time.monotonic() - waiting_since >= patience_s:
                return False
            if time.monotonic() - reported > 60:
                reported = time.monotonic()
                self.log("waiting_for_view", epoch=epoch, waited_s=round(reported - waiting_since))

    # --- regrouping -----------------------------------------------------------------------------

    def _retry_epoch(self) -> None:
        """Regroup in the current view once more, in a fresh rendezvous round: a collective or
        a rendezvous can fail without anyone leaving (a member too slow for the timeout)."""
        self.rendezvous.next_round(self.group_epoch or 0)
        self._same_epoch_again = True

    def _current_member_view(self) -> dict[str, Any]:
        """The newest view this node is a member of, newer than the current group's (or the
        current one again, after ``_retry_epoch``)."""
        after = (self.group_epoch or 0) - (1 if self._same_epoch_again else 0)
        while True:
            snap = self.sidecar.view()
            view = snap.get("view")
            if (
                snap.get("status") == "member"
                and view
                and self.cfg.node_id in view["members"]
                and view["epoch"] > after
            ):
                return view
            if snap.get("status") == "left":
                raise LeftGroup()
            self.sidecar.wait_view((view or {}).get("epoch", 0), timeout=2.0)

    def _regroup(self) -> None:
        if self.leaving:
            self.log("leaving", step=self.step)
            self._close_group()
            self.sidecar.leave()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.sidecar.view().get("status") != "left":
                self.sidecar.wait_view(self.group_epoch or 0, timeout=1.0)
            raise LeftGroup()
        self._await_capture()
        while True:
            view = self._built_view() or self._current_member_view()
            if self.rendezvous.finished_step is not None:
                # the others finished while we were away: training on from our older state
                # would redo steps they already took
                raise JobFinished()
            started = time.monotonic()
            self._close_group()
            members = view["members"]
            epoch = view["epoch"]
            rank = members.index(self.cfg.node_id)
            lost = self._lost_watch(epoch, members)
            built = self._take_built(epoch, members)
            # a joiner waiting for snapshot S: join now
            note = BLOCKING_NOTE if self.cfg.join_mode == "overlap" and self.step >= 0 else None
            try:
                opened = built.result() if built is not None else self._open_group(epoch, members, note)
                if opened is None:
                    continue  # the view moved on while we waited: go for the newer one
                self.group, self._store = opened
                self.group_id = self._store.get(GROUP_KEY).decode()
                # all-reduces a joiner posted ahead in a group the view moved past are dropped
                # (that group is freed on the close-group thread, see _take_built)
                self._posted = collections.deque(e for e in self._posted if e[0] is self.group)
                opened_at = time.monotonic()
                mine = [self.step, int(self._can_replay)]
                # a joiner that replayed during an overlap posted the gather already (with the
                # step it held then; it replays the rest after entering, see _entering_step)
                predicted = self._predicted_gather(built, members)
                if predicted is not None:  # posted, and checked after the first step
                    self._unchecked = (built.gather(mine), predicted)
                    gathered = predicted
                else:
                    gathered = (built.gather(mine).result(lost) if built
                                else all_gather_ints(self.group, mine, lost))  # fmt: skip
            except RuntimeError as exc:  # someone died during the rendezvous, or was too slow
                self.log("rendezvous_failed", epoch=epoch, error=str(exc)[:200])
                self._close_group()
                if (
                    built is None
                    and not isinstance(exc, RoundPassed)  # the others are in the next round already
                    and self._await_newer_view(epoch, patience_s=RETRY_PATIENCE_S)
                ):
                    continue
                self.rendezvous.next_round(epoch)  # same view, next round
                continue
            grouped = time.monotonic()
            previous = self.group_epoch
            self.group_epoch, self.rank, self.world, self.members = epoch, rank, len(members), members
            self._lost = lost
            try:
                transfer = self._reconcile(gathered, epoch)
            except RuntimeError as exc:  # a member died while the state moved
                self.log("reconcile_failed", epoch=epoch, error=str(exc)[:200])
                self.group_epoch = previous
                self._close_group()
                if not self._await_newer_view(epoch, patience_s=RETRY_PATIENCE_S):
                    self.rendezvous.next_round(epoch)
                continue
            if self._unchecked is None and all(g[0] == 0 for g in gathered):
                self._check_same_start(lost)
            self._same_epoch_again = False
            self._end_overlap()
            self.regroup_needed = False
            self.log(
                "regroup", epoch=epoch, members=members, rank=rank, step=self.step,
                pause_ms=round((time.monotonic() - started) * 1000, 1),
                group_ms=round((grouped - started) * 1000, 1), open_ms=round((opened_at - started) * 1000, 1),
                built_ahead=built is not None, gather_predicted=self._unchecked is not None, **transfer,
            )  # fmt: skip
            if self._catch_up is None or self.step == self._catch_up[0]:  # else: once it is
                self._log_digest()
            if self.cfg.node_id not in transfer["needers"]:
                self._idle_s = time.monotonic() - started  # reported after the next step
            self._just_regrouped = True
            return

    def _check_same_start(self, lost) -> None:
        """Founding members start from the script's initial state: it must be the same on all
        of them (a model built without a fixed seed is not), or their replicas drift apart."""
        mine = int(snapshot_state.digest(self.replica)[:12], 16)
        theirs = all_gather_ints(self.group, [mine], lost)
        if len({d for (d,) in theirs}) > 1:
            differ = [m for m, (d,) in zip(self.members, theirs, strict=True) if d != mine]
            raise InputError("model", f"the initial state differs between members ({self.cfg.node_id} vs "
                             f"{differ}): seed the model (torch.manual_seed) before building it")  # fmt: skip

    def _lost_watch(self, epoch: int, members: list[str]) -> Callable[[], bool] | None:
        """For wait_for: whether the agreed view dropped one of ``members`` (the group of
        ``epoch``), so that a collective waiting for it is given up once the view says so,
        not at gloo's timeout. A view that only adds joiners keeps the group (overlap). None
        on NCCL (see wait_for)."""
        if self.cfg.backend != "gloo":
            return None

        def lost() -> bool:
            view = self.sidecar.latest_view
            return view.get("epoch", 0) > epoch and not set(members) <= set(view.get("members", ()))

        return lost

    def _meet(self, epoch: int, members: list[str]) -> dist.Store | None:
        """The store of ``epoch``'s current round once every member arrived in it; None when the
        view moves past ``epoch`` first (see chaos_train.rendezvous)."""
        meeting = self.rendezvous.meet(epoch, members, moved_on=lambda: self.sidecar.latest_epoch > epoch)
        return None if meeting is None else meeting.store

    def _group_in(self, store: dist.Store, epoch: int, members: list[str]):
        """The process group of ``epoch`` in the store its members met in, and that store."""
        rank = members.index(self.cfg.node_id)
        # a connection of its own: the group's set-up waits on the store, and must not hold up
        # the notes and progress other threads exchange there meanwhile
        own = dist.PrefixStore("group", store.clone())
        group = new_process_group(self.cfg.backend, own, rank, len(members), self.cfg.timeout_s,
                                  self.rendezvous.address)  # fmt: skip
        return group, store

    def _open_group(self, epoch: int, members: list[str], note: dict[str, Any] | None = None):
        """This epoch's process group and store, once every member arrived; None when the view
        moves past ``epoch`` first. ``note`` is left for the view's overlap joiners first."""
        store = self._meet(epoch, members)
        if store is None:
            return None
        if note is not None:
            store.set(NOTE_KEY, json.dumps(note))
        return self._group_in(store, epoch, members)

    def _build_ahead(self, view: dict[str, Any]) -> None:
        """Start building the group of ``view`` on a thread (overlap joins: members and joiner)."""
        epoch, members = view["epoch"], list(view["members"])
        self._next = GroupBuild(
            epoch, members, lambda: self._meet(epoch, members),
            lambda store: self._group_in(store, epoch, members), self._builders,
        )  # fmt: skip

    def _built_view(self) -> dict[str, Any] | None:
        """The view whose group was built ahead, while it is still the newest: no need to ask
        the sidecar at the step where the members change groups."""
        built = self._next
        if built is None or not built.usable() or self.sidecar.latest_epoch != built.epoch:
            return None
        return {"epoch": built.epoch, "members": built.members}

    def _take_built(self, epoch: int, members: list[str]) -> GroupBuild | None:
        """The group built ahead for exactly this view, if any. One for another view is freed,
        off this thread: a collective posted in it waits until every member frees its copy
        (the connections close), and a member that kept its copy would hold the others
        there until gloo's timeout."""
        built, self._next = self._next, None
        if built is None:
            return None
        if built.epoch == epoch and built.members == members:
            return built
        if built.posted() is not None:
            # the members may have trained in that group with this joiner's posted all-reduces:
            # those steps are not in their log, so replaying cannot reach them; pull instead
            self._can_replay = False
            self.log("posted_group_skipped", epoch=built.epoch, for_epoch=epoch)
        self._to_free.put([built])
        return None

    def _log_digest(self) -> None:
        """The replica check after a view change (off with ``digest_every`` 0, as in benchmarks:
        hashing the state takes tens of ms; the final digest is always logged)."""
        if self.cfg.digest_every:
            self.log("digest", step=self.step, digest=snapshot_state.digest(self.replica))

    def _reconcile(self, gathered: list[list[int]], epoch: int) -> dict[str, Any]:
        """Members behind the newest state get it: an overlap joiner enters and replays the
        members' logged gradients while they train (see _entering_step); any other pulls the
        newest state from every member that has it while the others wait."""
        held = [g[0] for g in gathered]
        newest = max(held)
        if self.checkpoints is not None and newest <= 0 and not any(replay for _, replay in gathered):
            resumed = self._resume(newest)
            if resumed is not None:
                return resumed
        if newest < 0:
            raise NoState(f"no member of epoch {epoch} holds the state: {self.members}")
        providers = [self.members[r] for r, s in enumerate(held) if s == newest]
        needers = [self.members[r] for r, s in enumerate(held) if s < newest]
        # an overlap joiner enters even when level: it may have posted its first all-reduces
        # ahead, with no share of the batch (see _post_entering); if the members' log no
        # longer reaches back to its step, its replay fails and it pulls the state next round
        entering = [self.members[r] for r, (_, can_replay) in enumerate(gathered) if can_replay]
        pulling = [n for n in needers if n not in entering]
        self._entering = entering
        self._catch_up = (newest, providers) if self.cfg.node_id in entering else None
        self._group_step = newest
        # an entering joiner caught in a later regroup pulls the state: what it received in
        # this group is not in the members' log
        self._backlog.clear()
        self._can_replay = False
        if not pulling:
            return {"transfer_ms": 0.0, "sources": providers if needers else [], "needers": needers,
                    "entering": entering}  # fmt: skip
        name = f"state-e{epoch}"
        began = time.monotonic()
        if self.cfg.node_id in providers:
            epoch_, cursor = self.sampler.state()
            snapshot_state.save(self.cfg.snapshot_dir, name, self.replica, step=self.step,
                                extra=[epoch_, cursor], epoch=epoch)  # fmt: skip
            self._store.set(f"saved-{self.cfg.node_id}", "1")
        saved = time.monotonic()
        if self.cfg.node_id in pulling:
            # no collective here: a member entering by replay may have posted all-reduces ahead
            self._await_keys([f"saved-{p}" for p in providers], "the providers' snapshot", epoch)
        timings = {
            "save_ms": round((saved - began) * 1000, 1),
            "save_wait_ms": round((time.monotonic() - saved) * 1000, 1),
        }
        transfer_ms = 0.0
        if self.cfg.node_id in pulling:
            started = time.monotonic()
            self._pull_state(name, providers)
            transfer_ms = (time.monotonic() - started) * 1000
            self._store.set(f"transferred-{self.cfg.node_id}", "1")
        self._await_keys([f"transferred-{n}" for n in pulling], f"the state transfer to {pulling}", epoch)
        return {
            "transfer_ms": round(transfer_ms, 1),
            "sources": providers,
            "needers": needers,
            "entering": entering,
            **timings,
        }

    def _resume(self, newest: int) -> dict[str, Any] | None:
        """No member holds more than the initial state (every node died, or a new job points
        at old checkpoints): every member loads the newest checkpoint they all see, if any."""
        assert self.checkpoints is not None
        mine = self.checkpoints.newest_valid()
        target = min(s for (s,) in all_gather_ints(self.group, [-1 if mine is None else mine], self._lost))
        while target > newest:
            step = self.checkpoints.newest_valid(at_most=target)
            extra = self.checkpoints.load(self.replica, step) if step is not None and step > newest else None
            results = all_gather_ints(
                self.group, [-1 if step is None else step, int(extra is not None)], self._lost
            )
            if extra is not None and all(r == [step, 1] for r in results):
                self.step = extra[0]
                self.sampler.load(extra[1], extra[2])
                self.log("resumed", step=self.step, checkpoint=step)
                return {
                    "transfer_ms": 0.0,
                    "sources": [],
                    "needers": [],
                    "entering": [],
                    "resumed_from": step,
                }
            target = min(r[0] for r in results) - 1  # below the oldest one tried, all together
        return None

    def _await_keys(self, keys: list[str], what: str, epoch: int) -> None:
        """Wait until ``keys`` are set in the epoch's store. A transfer on a slow link takes
        longer than any collective timeout, so this polls the store, and gives up when the
        group's view moves past ``epoch`` (a member died meanwhile)."""
        deadline = time.monotonic() + TRANSFER_DEADLINE_S
        while not self._store.check(keys):
            if self.sidecar.latest_epoch > epoch or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not finish in epoch {epoch}")
            time.sleep(0.005)

    def _pull_state(self, name: str, providers: list[str]) -> None:
        began = time.monotonic()
        result = self.sidecar.pull(name, providers, self.cfg.transfer_policy)
        if "error" in result:
            raise RuntimeError(f"state transfer failed: {result['error']}")
        pulled = time.monotonic()
        extra = snapshot_state.load(self.cfg.snapshot_dir, name, self.replica)
        self.step, sampler_epoch, cursor = extra[0], extra[1], extra[2]
        self.sampler.load(sampler_epoch, cursor)
        sources = result.get("per_source", [])
        self.log("pulled", name=name, seconds=result.get("seconds"), call_s=round(pulled - began, 4),
                 load_s=round(time.monotonic() - pulled, 4), bytes=sum(s["bytes"] for s in sources),
                 per_source={s["id"]: s["bytes"] for s in sources})  # fmt: skip

    # --- overlap joins ----------------------------------------------------------------------------

    def _start_overlap(self, view: dict[str, Any]) -> None:
        """Members: publish snapshot S at this step and keep training; log averaged gradients
        until every joiner has posted the joined group's all-gather. That group is built
        meanwhile, so changing groups costs the members no wait (see _predicted_gather)."""
        started = time.monotonic()
        joiners = [m for m in view["members"] if m not in self.members]
        self._build_ahead(view)  # first: starting a thread waits for the GIL, which the copy takes
        epoch, cursor = self.sampler.state()
        # copied on the writer thread while the next step computes; the step waits for it
        # before its optimizer update (_await_capture)
        self._capture = self._writer.submit(
            snapshot_state.capture, self.replica, step=self.step, extra=[epoch, cursor]
        )
        self.pending = {"epoch": view["epoch"], "joiners": joiners, "from_step": self.step}
        note = None
        if self.rank == 0:
            step_s = statistics.median(self._step_times) if self._step_times else None
            note = {"snapshot_step": self.step, "sources": self.members, "step_s": step_s,
                    "grad_bytes": self.grad_bytes}  # fmt: skip
        self._write_later(self._publish_snapshot, view["epoch"], self.step, self._capture, note, self._next)
        self.log("overlap_start", step=self.step, joiners=joiners, epoch=view["epoch"],
                 pause_ms=round((time.monotonic() - started) * 1000, 1))  # fmt: skip

    def _publish_snapshot(
        self, epoch: int, step: int, captured, note: dict[str, Any] | None, build: GroupBuild
    ) -> None:
        """Write snapshot S; then (rank 0) leave the note that tells the joiners where it is in
        the joined view's store, once its members met there."""
        state = captured.result()
        snapshot_state.write(self.cfg.snapshot_dir, f"state-s{step}", state, step=step, epoch=epoch)
        if note is not None:
            store = build.store(wait_s=NOTE_WAIT_S)
            if store is None:
                raise RuntimeError(f"the members of epoch {epoch} did not meet: no note for its joiners")
            store.set(NOTE_KEY, json.dumps(note))

    def _await_capture(self) -> None:
        """Snapshot S is being copied from the live state: wait before changing it."""
        if self._capture is not None:
            began = time.monotonic()
            concurrent.futures.wait([self._capture])  # a failed copy is logged by its writer
            self._capture = None
            epoch = self.pending["epoch"] if self.pending else None
            self.log("capture_wait", epoch=epoch, wait_ms=round((time.monotonic() - began) * 1000, 1))

    def _write_later(self, write, *args: Any, **kwargs: Any) -> None:
        def logged() -> None:
            try:
                write(*args, **kwargs)
            except Exception as exc:  # a joiner then waits for the view to move on
                self.log("write_failed", what=getattr(write, "__name__", str(write)), error=str(exc)[:200])

        self._writer.submit(logged)

    @staticmethod
    def _joiner_progress(build: GroupBuild | None, joiner: str) -> int | str | None:
        """An overlap joiner's progress in the joined view's store (per view: a node that joins
        again later does not look ready from the last time): the step it held when it posted
        the joined group's all-gather, DECLINED, or None (nothing yet)."""
        store = build.store() if build is not None else None
        if store is None or not store.check([progress_key(joiner)]):
            return None
        text = store.get(progress_key(joiner)).decode()
        return text if text == DECLINED else int(text)

    def _joiners_ready(self) -> bool:
        assert self.pending is not None
        if self._next is not None and not self._next.done():
            return False  # changing groups now would wait for the joined view's group
        # a joiner posts its all-gather once level with the log; the steps the members take
        # before they switch it replays while they train (see _entering_step)
        return all(self._joiner_progress(self._next, j) is not None for j in self.pending["joiners"])

    def _predicted_gather(self, built: GroupBuild | None, members: list[str]) -> list[list[int]] | None:
        """Members changing to the group built during an overlap, when every joiner has posted
        its all-gather (its marker is a step): the outcome is known, the members at this step
        and the joiners able to replay, so the members need not wait for it (and for the
        slowest of them) before their first step; the all-reduce of that step absorbs their
        skew as in any step, and _check_switch compares the real outcome afterwards. Members
        that read a marker a moment earlier wait for the gather and reach the same outcome."""
        if built is None or self.pending is None or self.step < 0:
            return None
        joiners = self.pending["joiners"]
        if set(members) != {*self.members, *joiners}:
            return None
        if any(not isinstance(self._joiner_progress(built, j), int) for j in joiners):
            return None
        return [[self.step, 0] if m in self.members else [self.step - 1, 1] for m in members]

    def _check_switch(self) -> None:
        """After the first step in a group whose all-gather was predicted: compare."""
        gather, predicted = self._unchecked
        self._unchecked = None
        outcome = gather.result(self._lost)
        for (step, can_replay), (expected, joiner) in zip(outcome, predicted, strict=True):
            if can_replay != joiner or (step != expected if not joiner else step > expected + 1):
                raise RuntimeError(f"the group's all-gather {outcome} differs from {predicted}")

    def _log_gradient(self) -> None:
        """Every member holds the same averaged gradient, so one logs it: the members take
        turns (see log_keeper), each doing a 1/n share of the writing and of serving the
        joiners."""
        directory = self.cfg.snapshot_dir
        if log_keeper(self.members, self.step) == self.cfg.node_id:
            flat = self.work.averaged.clone()  # the writer owns the copy
            name = f"grads-s{self.step}"
            self._write_later(snapshot_state.save_tensor, directory, name, flat, step=self.step)
        # whoever logged that step
        self._write_later(snapshot_state.remove, directory, f"grads-s{self.step - self.cfg.grad_log}")

    def _end_overlap(self) -> None:
        """Any overlap ends with a regroup; its gradient log is kept until every entering joiner
        has replayed it (their flags in the all-reduce say so, see _train_step)."""
        if self.pending is not None:
            first = self.pending["from_step"]
            if self._stale_grads is not None:  # a retried regroup: that log is not dropped yet
                first = min(first, self._stale_grads[0])
            self._stale_grads = (first, self.step)
        self.pending = None

    def _drop_stale_grads(self) -> None:
        if self._stale_grads is not None:
            first, last = self._stale_grads
            for step in range(first, last + 1):
                self._write_later(snapshot_state.remove, self.cfg.snapshot_dir, f"grads-s{step}")
        self._stale_grads = None

    def _apply_logged(self, step: int, sources: list[str], wait_s: float = 0.0) -> bool:
        """Replay the averaged gradient of ``step`` (pulled from the member that logged it);
        False if absent (after ``wait_s``: its writer thread may still be writing it)."""
        name = f"grads-s{step}"
        deadline = time.monotonic() + wait_s
        while "error" in self.sidecar.pull(name, [log_keeper(sources, step)]):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        self._apply_averaged(step, snapshot_state.load_tensor(self.cfg.snapshot_dir, name))
        snapshot_state.remove(self.cfg.snapshot_dir, name)
        return True

    def _apply_averaged(self, step: int, flat: torch.Tensor) -> torch.Tensor:
        """Apply the group's averaged gradient of ``step`` (the next one this replica is
        missing); returns what followed it in the all-reduce (loss and flags, if any)."""
        tail = self.work.apply(flat)
        self.sampler.advance()
        self.step = step
        return tail

    def _members_opened(self, epoch: int, level: bool) -> bool:
        """Joiner holding a state: the members opened the joined view's group (or it cannot be
        opened). Once the group is built and this joiner is ``level`` with the members' log,
        the group's first all-gather (with the step held now) and first all-reduce are posted."""
        built = self._next
        if built is None or self.sidecar.latest_epoch > epoch:
            return True
        if not built.done():
            return False
        if not built.usable():
            return True
        if built.posted() is None:
            if not level:
                return False
            built.gather([self.step, int(self._can_replay)])
            # the group's first step follows; the members do at least one (they regroup only
            # before the job's last step), so posting it cannot meet their final barrier
            group = built.result()[0]
            self._post_entering(group, built.members.index(self.cfg.node_id), len(built.members),
                                [0.0, 0.0], final=False)  # fmt: skip
            self.log("posted_ahead", step=self.step, epoch=built.epoch)
        gather = built.posted()
        return gather is not None and gather.is_completed()

    def _overlap_catch_up(self) -> None:
        """Joiner: pull snapshot S while the members train on, replay their gradients, and say
        how far it got; when the members change groups it enters and replays the rest while
        they train (see _entering_step)."""
        view = self._current_member_view()
        # the members build the joined view's group too: meet them in its store, where they
        # leave the note (started before anything slow)
        self._build_ahead(view)
        deadline = time.monotonic() + NOTE_WAIT_S
        store = self._next.store(wait_s=NOTE_WAIT_S)
        while store is not None and not store.check([NOTE_KEY]):
            if time.monotonic() > deadline or self.sidecar.latest_epoch > view["epoch"]:
                return  # no word from the members, or they regroup into a newer view: join blocking
            time.sleep(0.01)
        if store is None:
            return  # no meeting (the view moved on, or the job finished): the regroup tells which
        info = json.loads(store.get(NOTE_KEY))
        if info.get("blocking"):
            return  # the members regroup blocking (not only joins, or the join came mid-regroup)
        progress = progress_key(self.cfg.node_id)
        links = self.sidecar.links(info["sources"])
        # each step's gradient comes from one member, in turns (see log_keeper): the mean of
        # the links' times for one gradient
        measured = [link.get("bandwidth_Bps") for link in links.values() if isinstance(link, dict)]
        times = [info["grad_bytes"] / b for b in measured if b]
        replay_s = statistics.fmean(times) if times else float("inf")
        bandwidth = info["grad_bytes"] / replay_s if times else 0.0
        if info.get("step_s") and replay_s > REPLAY_SHARE_OF_STEP * info["step_s"]:
            # replaying would fall further behind every step: let the members regroup now
            store.set(progress, DECLINED)
            self.log("overlap_declined", replay_s=round(replay_s, 4), step_s=round(info["step_s"], 4),
                     bandwidth_Bps=round(bandwidth))  # fmt: skip
            return
        started = time.monotonic()
        self._pull_state(f"state-s{info['snapshot_step']}", info["sources"])
        self._can_replay = True
        pulled = time.monotonic()
        # replay what the members log; once level with it (and the joined group is built) post
        # that group's all-gather, then say so, and keep replaying until they open the group.
        # Entering level keeps the replay off the members' first steps in the group: on shared
        # cores, each of its milliseconds there is waited for by all of them
        level = False
        said = False
        while time.monotonic() < deadline + 600 and not self._members_opened(view["epoch"], level):
            if self._next is not None and self._next.posted() is not None and not said:
                store.set(progress, str(self.step))  # after posting: see _predicted_gather
                said = True
            level = not self._apply_logged(self.step + 1, info["sources"])
            if level:
                time.sleep(0.005)
        self.log("overlap_caught_up", step=self.step, snapshot_step=info["snapshot_step"],
                 sources=info["sources"],
                 transfer_ms=round((pulled - started) * 1000, 1),
                 replay_ms=round((time.monotonic() - pulled) * 1000, 1))  # fmt: skip

    # --- one step -------------------------------------------------------------------------------

    def _group_position(self) -> int:
        """The group's step: an entering joiner's own state is behind it."""
        return self._group_step if self.cfg.node_id in self._entering else self.step

    def _replay_one(self) -> bool:
        """Entering joiner: apply the next averaged gradient it is missing, from the members'
        log, then from what it received in the group; False when there is none."""
        if self._catch_up is not None:
            target, sources = self._catch_up
            if self.step < target:
                if not self._apply_logged(self.step + 1, sources, wait_s=self.cfg.timeout_s / 3):
                    self._close_group()  # the others' next all-reduce fails at once
                    raise RuntimeError(f"the gradient of step {self.step + 1} is gone; pulling the state")
                if self.step == target:
                    self._log_digest()  # the members logged theirs at this step, in the regroup
                return True
        if self._backlog:
            self._apply_averaged(*self._backlog.popleft())
            return True
        return False

    def _share(self) -> tuple[int, int] | None:
        """This member's slice of the global batch: (index, of how many); None for none.
        Members entering in this step take no share, the others split the batch."""
        working = [m for m in self.members if m not in self._entering]
        if self.cfg.node_id not in working:
            return None
        return working.index(self.cfg.node_id), len(working)

    def _vote(self) -> list[float]:
        """This member's first two flags for the step's all-reduce: [regroup, overlap]; one
        per rank follows (see _post_entering)."""
        latest = self.sidecar.latest_epoch
        entering = self.cfg.node_id in self._entering
        if self.pending is None:
            changed = latest > (self.group_epoch or 0) or self.leaving
            # overlap only if every member sees nothing new or joins alone (summed below), and
            # holds the group's state (a member still entering cannot provide snapshot S)
            overlap = (
                self.cfg.join_mode == "overlap"
                and not self.leaving
                and not entering
                and (not changed or self._only_joins())
            )
            head = [1.0 if changed else 0.0, 1.0 if overlap else 0.0]
        else:
            # the log is bounded: a joiner that cannot replay as fast as we train gets the state
            # in a blocking regroup once the log is full
            # the step this vote is for still logs its gradient, and drops the one grad_log
            # before it: regrouping after it keeps every step since S (grad_log of them)
            log_full = self.step - self.pending["from_step"] >= self.cfg.grad_log - 1
            regroup = self.leaving or latest > self.pending["epoch"] or self._joiners_ready() or log_full
            head = [1.0 if regroup else 0.0, 0.0]
        return head

    def _train_step(self) -> None:
        if self.cfg.node_id in self._entering:
            sums = self._entering_step()
        else:
            sums = self._working_step(self._vote() + [0.0] * self.world)
        if self._unchecked is not None:
            self._check_switch()
        self._entering = [m for m, slot in zip(self.members, sums[2:], strict=True) if slot > 0]
        if not self._entering:
            self._drop_stale_grads()  # every entering joiner is through the members' log
        if sums[0] > 0:
            if self.pending is None and sums[1] == self.world:
                view = self.sidecar.view()["view"]
                if view["epoch"] <= (self.group_epoch or 0):  # the others saw it first
                    view = self.sidecar.wait_view(self.group_epoch or 0, timeout=2.0)["view"]
                self._start_overlap(view)
            else:
                self.regroup_needed = True

    def _post_entering(self, group, rank: int, world: int, vote: list[float], final: bool) -> None:
        """Post an entering member's part of one step's all-reduce: no gradient (it takes no
        share), its vote, and in its own slot whether it still enters in the step after
        (not ``final``)."""
        slots = [0.0] * world
        slots[rank] = 0.0 if final else 1.0
        flat = self.work.gradients([], self.work.global_batch, vote + slots)
        self._posted.append((group, group.allreduce([flat]), flat, final))

    def _entering_step(self) -> list[float]:
        """A joiner that entered behind replays what it is missing while the others compute:
        its all-reduces are posted ahead, so they do not wait for the replay. A step's averaged
        gradient is applied at once when the joiner is level with the group, otherwise it
        waits its turn in the backlog. Level and with nothing posted, it posts its final
        entering step; from the next one it takes a share."""
        level = self.step == self._group_step
        if not self._posted:
            self._post_entering(self.group, self.rank, self.world, self._vote(), final=level)
        while (
            not level
            and len(self._posted) < POST_AHEAD
            and not self._posted[-1][3]
            and self._group_step + len(self._posted) < self._steps
        ):
            self._post_entering(self.group, self.rank, self.world, self._vote(), final=False)
        _, work, flat, final = self._posted[0]
        while not work.is_completed() and self._replay_one():
            pass
        wait_for(work, self._lost)
        self._posted.popleft()
        self._group_step += 1
        flags = flat[-(2 + self.world) :]
        if self.step < self._group_step - 1:
            if len(self._backlog) >= self.cfg.grad_log:
                self._close_group()
                raise RuntimeError("replaying cannot keep up with the group; pulling the state instead")
            self._backlog.append((self._group_step, flat))
            return [float(x) for x in flags]
        epoch, cursor = self.sampler.state()
        loss_sum = float(self._apply_averaged(self._group_step, flat)[0])
        if final:
            self.log("entered", step=self.step)
        self._log_step(loss_sum, epoch, cursor)
        return [float(x) for x in flags]

    def _working_step(self, flags: list[float]) -> list[float]:
        batch = self.sampler.batch()
        timings: dict[str, float] = {}
        share = self._share()
        mine = ElasticSampler.split(batch, *share) if share is not None else []
        # before the all-reduce: once any member completes it, this share is in the update,
        # even if this member dies before it could log the step (per-sample accounting)
        self.log("share", step=self.step + 1, epoch=self.group_epoch, group=self.group_id, ids=mine)
        loss_sum, sums = data_parallel_step(
            self.work, mine, len(batch), self.group, flags=flags, fence=self._await_capture,
            timings=timings, lost=self._lost,
        )  # fmt: skip
        epoch, cursor = self.sampler.state()
        self.sampler.advance()
        self.step += 1
        now = time.monotonic()
        if self._last_step_end is not None and not self._just_regrouped:
            self._step_times.append(now - self._last_step_end)
        self._last_step_end = now
        if self.pending is not None:
            self._log_gradient()
        self._checkpoint_if_due()
        self._log_step(
            loss_sum, epoch, cursor, ids=mine, allreduce_ms=round(timings["allreduce_s"] * 1000, 2)
        )
        return sums

    def _checkpoint_if_due(self) -> None:
        """Every ``every`` steps one working member (in turns) copies the state now and writes
        it durably on the writer thread while training goes on."""
        if self.checkpoints is None or not self.checkpoints.due(self.step):
            return
        working = [m for m in self.members if m not in self._entering]
        if self.checkpoints.writer(working, self.step) != self.cfg.node_id:
            return
        epoch, cursor = self.sampler.state()
        captured = snapshot_state.capture(self.replica, step=self.step, extra=[epoch, cursor])
        self._writer.submit(self.checkpoints.write, captured, self.step)

    def _log_step(self, loss_sum: float, epoch: int, cursor: int, **extra: Any) -> None:
        record = {"step": self.step, "loss": round(loss_sum / self.work.global_batch, 6),
                  "sampler": [epoch, cursor], "epoch": self.group_epoch, "group": self.group_id,
                  "world": self.world,
                  **extra}  # fmt: skip
        if self.cfg.digest_every and self.step % self.cfg.digest_every == 0:
            record["digest"] = snapshot_state.digest(self.replica)
        self.log("step", **record)
        if self.after_step is not None:
            self.after_step(self.step, record["loss"], self.rank, self.world)
        now = time.monotonic()
        if now - self._reported_at >= REPORT_EVERY_S or self._just_regrouped:
            self.sidecar.report(step=self.step, idle_s=self._idle_s)
            self._just_regrouped, self._idle_s, self._reported_at = False, 0.0, now

    def _only_joins(self) -> bool:
        view = (self.sidecar.view() or {}).get("view") or {}
        return set(self.members) < set(view.get("members", ()))


def data_parallel_step(
    work: Workload, mine: list[int], global_size: int, group, flags=(), fence=None, timings=None, lost=None
) -> tuple[float, list[float]]:
    """One synchronous data-parallel step on ``mine``, this member's share of a global batch of
    ``global_size`` samples (possibly none: it then only takes part in the all-reduce). One
    all-reduce on ``group`` carries the gradients, the summed loss and ``flags`` (each summed
    over ranks); see chaos_train.workload for why the sum is the exact global mean gradient.
    ``fence`` is called before the parameters change (a copy of them may still be in
    progress). ``timings`` (a dict) receives ``allreduce_s``: how long the all-reduce took,
    waiting for the slowest member included. ``lost``: see chaos_train.groups.wait_for.
    Returns (global loss sum, flag sums).
    """
    flat = work.gradients(mine, global_size, flags)
    posted = time.monotonic()
    wait_for(group.allreduce([flat]), lost)
    if timings is not None:
        timings["allreduce_s"] = time.monotonic() - posted
    if fence is not None:
        fence()
    tail = work.apply(flat)
    return float(tail[0]), [float(x) for x in tail[1:]]


def log_keeper(members: list[str], step: int) -> str:
    """The member that logs the averaged gradient of ``step`` during an overlap join."""
    ordered = sorted(members)
    return ordered[step % len(ordered)]


def env_backend() -> str:
    return "nccl" if torch.cuda.is_available() and os.environ.get("CHAOS_BACKEND") != "gloo" else "gloo"
