"""Overlap joins: the members keep training while a joiner pulls snapshot S and replays the
averaged gradients they log; the joined view's group is built meanwhile."""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import time
from typing import Any

from chaos_sidecar.eventlog import Kind
from chaos_sidecar.protocol.messages import View
from chaos_train import state as snapshot_state
from chaos_train.engine_config import (
    DECLINED,
    NOTE_KEY,
    NOTE_WAIT_S,
    OVERLAP_SNAPSHOT,
    REPLAY_SHARE_OF_STEP,
    log_keeper,
    progress_key,
)
from chaos_train.groups import GroupBuild
from chaos_train.lineage import FOLLOWS


class OverlapJoin:
    """Part of chaos_train.sdk.ElasticTrainer (a mixin: it uses the engine's attributes, set in
    ElasticTrainer.__init__)."""

    # --- overlap joins ----------------------------------------------------------------------------

    def _start_overlap(self, view: View) -> None:
        """Members: publish snapshot S at this step and keep training; log averaged gradients
        until every joiner has posted the joined group's all-gather. That group is built
        meanwhile, so changing groups costs the members no wait (see _predicted_gather)."""
        started = time.monotonic()
        joiners = [m for m in view.members if m not in self.members]
        self._build_ahead(view)  # first: starting a thread waits for the GIL, which the copy takes
        epoch, cursor = self.sampler.state()
        # copied on the writer thread while the next step computes; the step waits for it
        # before its optimizer update (_await_capture)
        self._capture = self._writer.submit(
            snapshot_state.capture, self.replica, step=self.step, extra=[epoch, cursor]
        )
        self.pending = {"epoch": view.epoch, "joiners": joiners, "from_step": self.step}
        note = None
        if self.rank == 0:
            step_s = statistics.median(self._step_times) if self._step_times else None
            note = {"snapshot_step": self.step, "sources": self.members, "step_s": step_s,
                    "grad_bytes": self.grad_bytes}  # fmt: skip
        self._write_later(self._publish_snapshot, view.epoch, self.step, self._capture, note, self._next)
        self.log(Kind.OVERLAP_START, step=self.step, joiners=joiners, epoch=view.epoch,
                 pause_ms=round((time.monotonic() - started) * 1000, 1))  # fmt: skip

    def _publish_snapshot(
        self, epoch: int, step: int, captured, note: dict[str, Any] | None, build: GroupBuild
    ) -> None:
        """Write snapshot S; then (rank 0) leave the note that tells the joiners where it is in
        the joined view's store, once its members met there."""
        state = captured.result()
        name = f"{OVERLAP_SNAPSHOT}{step}"
        directory = self.cfg.snapshot_dir
        snapshot_state.write(directory, name, state, step=step, epoch=epoch, replaces=OVERLAP_SNAPSHOT)
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
            self.log(Kind.CAPTURE_WAIT, epoch=epoch, wait_ms=round((time.monotonic() - began) * 1000, 1))

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
        return [
            [self.step, 0, self._lineage] if m in self.members else [self.step - 1, 1, FOLLOWS]
            for m in members
        ]

    def _check_switch(self) -> None:
        """After the first step in a group whose all-gather was predicted: compare."""
        gather, predicted = self._unchecked
        self._unchecked = None
        outcome = gather.result(self._lost)
        for (step, can_replay, _), (expected, joiner, _) in zip(outcome, predicted, strict=True):
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
            built.gather([self.step, int(self._can_replay), self._lineage])
            # the group's first step follows; the members do at least one (they regroup only
            # before the job's last step), so posting it cannot meet their final barrier
            group = built.result()[0]
            self._post_entering(group, built.members.index(self.cfg.node_id), len(built.members),
                                [0.0, 0.0], final=False)  # fmt: skip
            self.log(Kind.POSTED_AHEAD, step=self.step, epoch=built.epoch)
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
            if time.monotonic() > deadline or self.sidecar.latest_epoch > view.epoch:
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
            self.log(Kind.OVERLAP_DECLINED, replay_s=round(replay_s, 4), step_s=round(info["step_s"], 4),
                     bandwidth_Bps=round(bandwidth))  # fmt: skip
            return
        started = time.monotonic()
        self._pull_state(
            f"{OVERLAP_SNAPSHOT}{info['snapshot_step']}", info["sources"], replaces=OVERLAP_SNAPSHOT
        )
        self._can_replay = True
        pulled = time.monotonic()
        # replay what the members log; once level with it (and the joined group is built) post
        # that group's all-gather, then say so, and keep replaying until they open the group.
        # Entering level keeps the replay off the members' first steps in the group: on shared
        # cores, each of its milliseconds there is waited for by all of them
        level = False
        said = False
        while time.monotonic() < deadline + 600 and not self._members_opened(view.epoch, level):
            if self._next is not None and self._next.posted() is not None and not said:
                store.set(progress, str(self.step))  # after posting: see _predicted_gather
                said = True
            level = not self._apply_logged(self.step + 1, info["sources"])
            if level:
                time.sleep(0.005)
        self.log(Kind.OVERLAP_CAUGHT_UP, step=self.step, snapshot_step=info["snapshot_step"],
                 sources=info["sources"],
                 transfer_ms=round((pulled - started) * 1000, 1),
                 replay_ms=round((time.monotonic() - pulled) * 1000, 1))  # fmt: skip
