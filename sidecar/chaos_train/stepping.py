"""One step: this member's share, the vote that travels in the step's all-reduce, a joiner
entering by replay, the step log and the periodic checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from chaos_sidecar.eventlog import Kind
from chaos_train import state as snapshot_state
from chaos_train.engine_config import (
    POST_AHEAD,
    REPORT_EVERY_S,
)
from chaos_train.groups import wait_for
from chaos_train.lineage import token as lineage_token
from chaos_train.sampler import ElasticSampler
from chaos_train.workload import Workload


class Stepping:
    """Part of chaos_train.sdk.ElasticTrainer (a mixin: it uses the engine's attributes, set in
    ElasticTrainer.__init__)."""

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
        working = [m for m in self.members if m not in self._entering and m not in self._resting]
        if self.cfg.node_id not in working:
            return None
        return working.index(self.cfg.node_id), len(working)

    def _compute_ahead(self) -> None:
        """Compute this member's gradient of the next step now (a blocking joiner is pulling
        the state meanwhile and takes no share of that step, see ``_resting``): the first step
        after the regroup then only waits for its all-reduce. The parameters do not change
        until that step, so the gradient is the one the step would compute; it is used only
        if the step is the same (step, group and samples)."""
        self._ahead = None
        share = self._share()
        if share is None:
            return
        batch = self.sampler.batch()
        mine = ElasticSampler.split(batch, *share)
        flat = self.work.gradients(mine, len(batch), [0.0] * (2 + self.world))
        self._ahead = (self.step, self.group_id, mine, flat)

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
            sums = self._working_step()
        if self._unchecked is not None:
            self._check_switch()
        self._entering = [m for m, slot in zip(self.members, sums[2:], strict=True) if slot > 0]
        if not self._entering:
            self._drop_stale_grads()  # every entering joiner is through the members' log
        if sums[0] > 0:
            if self.pending is None and sums[1] == self.world:
                view = self.sidecar.view().view
                if view is None or view.epoch <= (self.group_epoch or 0):  # the others saw it first
                    view = self.sidecar.wait_view(self.group_epoch or 0, timeout=2.0).view
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
            self.log(Kind.ENTERED, step=self.step)
        self._log_step(loss_sum, epoch, cursor)
        return [float(x) for x in flags]

    def _working_step(self) -> list[float]:
        batch = self.sampler.batch()
        timings: dict[str, float] = {}
        share = self._share()
        mine = ElasticSampler.split(batch, *share) if share is not None else []
        ahead, self._ahead = self._ahead, None
        computed = ahead[3] if ahead is not None and ahead[:3] == (self.step, self.group_id, mine) else None
        self._resting = []  # from the next step the joiners take their share
        # before the all-reduce: once any member completes it, this share is in the update,
        # even if this member dies before it could log the step (per-sample accounting)
        self.log(Kind.SHARE, step=self.step + 1, epoch=self.group_epoch, group=self.group_id, ids=mine)
        loss_sum, sums = data_parallel_step(
            self.work, mine, len(batch), self.group, flags=[0.0] * (2 + self.world), vote=self._vote,
            fence=self._await_capture, timings=timings, lost=self._lost, computed=computed,
        )  # fmt: skip
        epoch, cursor = self.sampler.state()
        self.sampler.advance()
        self.step += 1
        self._lineage = lineage_token(self.group_id)
        now = time.monotonic()
        if self._last_step_end is not None and not self._just_regrouped:
            self._step_times.append(now - self._last_step_end)
        self._last_step_end = now
        if self.pending is not None:
            self._log_gradient()
        self._checkpoint_if_due()
        self._log_step(loss_sum, epoch, cursor, allreduce_ms=round(timings["allreduce_s"] * 1000, 2))
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
        self.log(Kind.STEP, **record)
        if self.after_step is not None:
            self.after_step(self.step, record["loss"], self.rank, self.world)
        now = time.monotonic()
        if now - self._reported_at >= REPORT_EVERY_S or self._just_regrouped:
            self.sidecar.report(step=self.step, idle_s=self._idle_s)
            self._just_regrouped, self._idle_s, self._reported_at = False, 0.0, now

    def _only_joins(self) -> bool:
        view = self.sidecar.view().view
        return view is not None and set(self.members) < set(view.members)


def data_parallel_step(
    work: Workload, mine: list[int], global_size: int, group, flags: Sequence[float] = (),
    fence=None, timings=None, lost=None, vote: Callable[[], Sequence[float]] | None = None,
    computed: torch.Tensor | None = None,
) -> tuple[float, list[float]]:  # fmt: skip
    """One synchronous data-parallel step on ``mine``, this member's share of a global batch of
    ``global_size`` samples (possibly none: it then only takes part in the all-reduce). One
    all-reduce on ``group`` carries the gradients, the summed loss and ``flags`` (each summed
    over ranks); see chaos_train.workload for why the sum is the exact global mean gradient.
    ``fence`` is called before the parameters change (a copy of them may still be in
    progress). ``timings`` (a dict) receives ``allreduce_s``: how long the all-reduce took,
    waiting for the slowest member included. ``lost``: see chaos_train.groups.wait_for.
    ``vote``, if given, is called once the gradient is computed, right before the all-reduce:
    its values replace the first of ``flags`` (a step's vote to regroup, taken as late as it
    can be: a view change that arrives while the gradient is computed is voted on in this
    step, not one whole step later). ``computed``: what ``work.gradients(mine, global_size,
    flags)`` returned ahead, with the parameters as they are now. Returns (global loss sum,
    flag sums).
    """
    flat = computed if computed is not None else work.gradients(mine, global_size, flags)
    if vote is not None:
        late = list(vote())
        if late:
            start = len(flat) - len(flags)
            flat[start : start + len(late)] = torch.tensor(late, dtype=flat.dtype, device=flat.device)
    posted = time.monotonic()
    wait_for(group.allreduce([flat]), lost)
    if timings is not None:
        timings["allreduce_s"] = time.monotonic() - posted
    if fence is not None:
        fence()
    tail = work.apply(flat)
    return float(tail[0]), [float(x) for x in tail[1:]]
