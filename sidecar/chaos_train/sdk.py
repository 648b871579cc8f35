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
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from chaos_train import state as snapshot_state
from chaos_train.groups import GroupBuild, all_gather_ints, new_process_group
from chaos_train.sampler import ElasticSampler
from chaos_train.sidecar_client import SidecarClient, SidecarLost

REPORT_EVERY = 10  # steps between progress reports to the sidecar (metrics)
# an overlap joiner replays the members' gradients; it only catches up if one replay takes
# well under one of their steps, otherwise it declines and joins blocking
REPLAY_SHARE_OF_STEP = 0.5
TRANSFER_DEADLINE_S = 3600.0  # a joiner's state transfer; the view changing ends the wait sooner
# an overlap joiner at most this many steps behind at the switch replays them during its first
# step in the group (members wait for that, if at all, in the step's all-reduce); further
# behind, it pulls the state while the members wait
ENTER_MAX_BEHIND = 8
RETRY_PATIENCE_S = 5.0  # after a failed collective: wait this long for a view change, then retry


DECLINED = "declined"  # an overlap joiner's catch-up marker when it will join blocking instead


class LeftGroup(Exception):
    """This member left the group gracefully."""


class JobFinished(Exception):
    """The group already trained every step (a member that was away comes back too late)."""


class NoState(Exception):
    """No member of the group holds the training state (the job finished or every holder is
    gone): a group of joiners must not start training from scratch."""


@dataclass
class TrainerConfig:
    node_id: str
    sidecar_url: str
    snapshot_dir: Path
    rendezvous_dir: Path
    log_path: Path
    global_batch: int = 256
    seed: int = 0
    timeout_s: float = 15.0
    backend: str = "gloo"
    digest_every: int = 10
    founding: bool = False  # member of the first view: starts from the seeded initial state
    join_mode: str = "blocking"  # or "overlap": members keep training while a joiner catches up
    grad_log: int = 128  # overlap: how many averaged gradients members keep for replay
    transfer_policy: str = "planned"  # or a benchmark baseline: "equal-split", "single-source"


class ElasticTrainer:
    def __init__(self, config: TrainerConfig, model, optimizer, loss_fn, features, labels) -> None:
        self.cfg = config
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.features = features
        self.labels = labels
        self.sampler = ElasticSampler(len(features), config.global_batch, config.seed)
        self.step = 0 if config.founding else -1  # -1: no state yet
        self.group_epoch: int | None = None
        self.rank = 0
        self.world = 1
        self.members: list[str] = []
        self.group = None  # this view's process group (see chaos_train.groups)
        self._store = None
        self._next: GroupBuild | None = None  # overlap: the joined view's group, built ahead
        self._abandoned: list[GroupBuild] = []  # kept: dropping one may wait out a posted all-gather
        # overlap: members that enter the group behind and replay during their first step,
        # taking no share of its batch; a joiner's own catch-up target and gradient sources
        self._entering: list[str] = []
        self._catch_up: tuple[int, list[str]] | None = None
        self._can_replay = False  # an overlap joiner holding a snapshot the members' log continues
        self._stale_grads: tuple[int, int] | None = None  # gradient log to drop after the next step
        # overlap: the snapshot and gradient log are written in order on one thread, so members
        # only pay for copying them (a joiner asking too early finds nothing and asks again)
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self.regroup_needed = True
        self.leaving = False
        self.pending: dict[str, Any] | None = None  # overlap: joiners catching up, see _start_overlap
        self._just_regrouped = False
        self.sidecar = SidecarClient(config.sidecar_url)
        self._log = config.log_path.open("a", buffering=1)
        self.params = [p for p in model.parameters()]
        # optimizer state exists from the start so every replica has the same tensor layout
        for p in self.params:
            p.grad = torch.zeros_like(p)
        snapshot_state.init_optimizer_state(optimizer)
        self.grad_bytes = sum(p.numel() * p.element_size() for p in self.params)
        self._step_times: collections.deque[float] = collections.deque(maxlen=20)
        self._last_step_end: float | None = None
        self._rounds: dict[int, int] = {}  # epoch -> rendezvous round (a failed one is not reused)
        self._same_epoch_again = False
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.leaving = True

    def log(self, kind: str, **fields: Any) -> None:
        self._log.write(
            json.dumps({"t": time.time(), "node": self.cfg.node_id, "type": kind, **fields}) + "\n"
        )

    # --- the loop -------------------------------------------------------------------------------

    def run(self, steps: int) -> None:
        self.log("start", pid=os.getpid())
        if not self.cfg.founding:
            self.log("join_requested")
        self.sidecar.join()  # a standby sidecar asks for admission only now that we are ready
        self.sidecar.start_watching()
        try:
            if self.cfg.join_mode == "overlap" and self.step < 0:
                self._overlap_catch_up()
            while self.step < steps:
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
            self.log("done", step=self.step, digest=snapshot_state.digest(self.model, self.optimizer))
            self._finished_marker().write_text(str(self.step))
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
        finally:
            self._writer.shutdown(wait=True)
            self.sidecar.stop()
            self._close_group(wait=True)

    def _finish(self) -> None:
        """All members reach the last step together; a final barrier keeps the group up until then."""
        with contextlib.suppress(RuntimeError):
            self.group.barrier().wait()

    def _close_group(self, wait: bool = False) -> None:
        """Drop this view's group. Freeing a gloo group takes 20-45 ms (it closes every
        connection, with the GIL released), so unless ``wait`` a thread holds the last reference."""
        last = [self.group, self._store]
        self.group = self._store = None
        if not wait and last[0] is not None:
            threading.Thread(target=last.clear, name="close-group", daemon=True).start()

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
        self._next_round(self.group_epoch or 0)
        self._same_epoch_again = True

    def _next_round(self, epoch: int) -> None:
        self._rounds[epoch] = self._rounds.get(epoch, 0) + 1

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
        while True:
            view = self._built_view() or self._current_member_view()
            if self._finished_marker().exists():
                # the others finished while we were away: training on from our older state
                # would redo steps they already took
                raise JobFinished()
            started = time.monotonic()
            self._close_group()
            members = view["members"]
            epoch = view["epoch"]
            rank = members.index(self.cfg.node_id)
            built = self._take_built(epoch, members)
            if built is None and self.cfg.join_mode == "overlap" and self.step >= 0:
                self._write_note(epoch, {"blocking": True})  # a joiner waiting for S: join now
            try:
                opened = built.result() if built is not None else self._open_group(epoch, members)
                if opened is None:
                    continue  # the view moved on while we waited: go for the newer one
                self.group, self._store = opened
                opened_at = time.monotonic()
                mine = [self.step, int(self._can_replay)]
                # a joiner that replayed during an overlap posted the gather already (with the
                # step it held then; it replays the rest when it enters)
                gathered = built.gather(mine).result() if built else all_gather_ints(self.group, mine)
            except RuntimeError as exc:  # someone died during the rendezvous, or was too slow
                self.log("rendezvous_failed", epoch=epoch, error=str(exc)[:200])
                self._close_group()
                if built is None and self._await_newer_view(epoch, patience_s=RETRY_PATIENCE_S):
                    continue
                self._next_round(epoch)  # same view, next round
                continue
            grouped = time.monotonic()
            previous = self.group_epoch
            self.group_epoch, self.rank, self.world, self.members = epoch, rank, len(members), members
            try:
                transfer = self._reconcile(gathered, epoch)
            except RuntimeError as exc:  # a member died while the state moved
                self.log("reconcile_failed", epoch=epoch, error=str(exc)[:200])
                self.group_epoch = previous
                self._close_group()
                if not self._await_newer_view(epoch, patience_s=RETRY_PATIENCE_S):
                    self._next_round(epoch)
                continue
            self._same_epoch_again = False
            self._end_overlap()
            self.regroup_needed = False
            self.log(
                "regroup", epoch=epoch, members=members, rank=rank, step=self.step,
                pause_ms=round((time.monotonic() - started) * 1000, 1),
                group_ms=round((grouped - started) * 1000, 1), open_ms=round((opened_at - started) * 1000, 1),
                built_ahead=built is not None, **transfer,
            )  # fmt: skip
            if self._catch_up is None:  # an entering joiner logs its digest once caught up
                self._log_digest()
            if self.cfg.node_id not in transfer["needers"]:
                self.sidecar.report(idle_s=time.monotonic() - started)
            self._just_regrouped = True
            return

    def _open_group(self, epoch: int, members: list[str]):
        """This epoch's process group and store, once every member arrived; None when the view
        moves past ``epoch`` first."""
        if not self._all_arrived(epoch, members):
            return None
        store = dist.FileStore(str(self._round_dir(epoch) / "store"), len(members))
        rank = members.index(self.cfg.node_id)
        return new_process_group(self.cfg.backend, store, rank, len(members), self.cfg.timeout_s), store

    def _build_ahead(self, view: dict[str, Any]) -> None:
        """Start building the group of ``view`` on a thread (overlap joins: members and joiner)."""
        epoch, members = view["epoch"], list(view["members"])
        self._next = GroupBuild(epoch, members, lambda: self._open_group(epoch, members))

    def _built_view(self) -> dict[str, Any] | None:
        """The view whose group was built ahead, while it is still the newest: no need to ask
        the sidecar at the step where the members change groups."""
        built = self._next
        if built is None or not built.usable() or self.sidecar.latest_epoch != built.epoch:
            return None
        return {"epoch": built.epoch, "members": built.members}

    def _take_built(self, epoch: int, members: list[str]) -> GroupBuild | None:
        """The group built ahead for exactly this view, if any; one for another view is set aside."""
        built, self._next = self._next, None
        if built is None:
            return None
        if built.epoch == epoch and built.members == members:
            return built
        self._abandoned.append(built)
        return None

    def _log_digest(self) -> None:
        """The replica check after a view change (off with ``digest_every`` 0, as in benchmarks:
        hashing the state takes tens of ms; the final digest is always logged)."""
        if self.cfg.digest_every:
            self.log("digest", step=self.step, digest=snapshot_state.digest(self.model, self.optimizer))

    def _finished_marker(self) -> Path:
        return self.cfg.rendezvous_dir / "finished"

    def _round_dir(self, epoch: int) -> Path:
        """Rendezvous directory of this epoch's current round (a failed round is never reused:
        its store file may be half torn down)."""
        return self.cfg.rendezvous_dir / f"epoch-{epoch}" / f"round-{self._rounds.get(epoch, 0)}"

    def _all_arrived(self, epoch: int, members: list[str]) -> bool:
        """Arrival barrier for one epoch's process group: every member announces itself in the
        shared rendezvous directory, then all initialise together (a fresh store per round).
        False if the group's view moves past ``epoch`` first."""
        # join the newest round anyone has opened: a member too slow for a failed round must
        # not wait in it while the others moved on
        opened = [
            int(p.name.split("-")[1]) for p in (self.cfg.rendezvous_dir / f"epoch-{epoch}").glob("round-*")
        ]
        self._rounds[epoch] = max([self._rounds.get(epoch, 0), *opened])
        directory = self._round_dir(epoch)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"ready-{self.cfg.node_id}").touch()
        deadline = time.monotonic() + 120
        while not all((directory / f"ready-{m}").exists() for m in members):
            if self.sidecar.latest_epoch > epoch or time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _reconcile(self, gathered: list[list[int]], epoch: int) -> dict[str, Any]:
        """Members behind the newest state get it: an overlap joiner a few steps behind replays
        the members' logged gradients during its first step (see _train_step); any other pulls
        the newest state from every member that has it while the others wait."""
        held = [g[0] for g in gathered]
        newest = max(held)
        if newest < 0:
            raise NoState(f"no member of epoch {epoch} holds the state: {self.members}")
        providers = [self.members[r] for r, s in enumerate(held) if s == newest]
        needers = [self.members[r] for r, s in enumerate(held) if s < newest]
        entering = [
            self.members[r]
            for r, (step, can_replay) in enumerate(gathered)
            if step < newest and can_replay and newest - step <= min(self.cfg.grad_log, ENTER_MAX_BEHIND)
        ]
        pulling = [n for n in needers if n not in entering]
        self._entering = entering
        self._catch_up = (newest, providers) if self.cfg.node_id in entering else None
        if not pulling:
            return {"transfer_ms": 0.0, "sources": providers if needers else [], "needers": needers,
                    "entering": entering}  # fmt: skip
        name = f"state-e{epoch}"
        began = time.monotonic()
        if self.cfg.node_id in providers:
            epoch_, cursor = self.sampler.state()
            snapshot_state.save(self.cfg.snapshot_dir, name, self.model, self.optimizer,
                                step=self.step, extra=[epoch_, cursor], epoch=epoch)  # fmt: skip
        saved = time.monotonic()
        self.group.barrier().wait()
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
        self._await_transfers(pulling, epoch)
        return {
            "transfer_ms": round(transfer_ms, 1),
            "sources": providers,
            "needers": needers,
            "entering": entering,
            **timings,
        }

    def _await_transfers(self, needers: list[str], epoch: int) -> None:
        """Wait until every member that was behind holds the state. On a slow link that takes
        longer than any collective timeout, so this polls the epoch's store instead, and gives
        up when the group's view moves past ``epoch`` (a member died meanwhile)."""
        keys = [f"transferred-{n}" for n in needers]
        deadline = time.monotonic() + TRANSFER_DEADLINE_S
        while not self._store.check(keys):
            if self.sidecar.latest_epoch > epoch or time.monotonic() > deadline:
                raise RuntimeError(f"the state transfer to {needers} did not finish in epoch {epoch}")
            time.sleep(0.005)

    def _pull_state(self, name: str, providers: list[str]) -> None:
        began = time.monotonic()
        result = self.sidecar.pull(name, providers, self.cfg.transfer_policy)
        if "error" in result:
            raise RuntimeError(f"state transfer failed: {result['error']}")
        pulled = time.monotonic()
        extra = snapshot_state.load(self.cfg.snapshot_dir, name, self.model, self.optimizer)
        self.step, sampler_epoch, cursor = extra[0], extra[1], extra[2]
        self.sampler.load(sampler_epoch, cursor)
        sources = result.get("per_source", [])
        self.log("pulled", name=name, seconds=result.get("seconds"), call_s=round(pulled - began, 4),
                 load_s=round(time.monotonic() - pulled, 4), bytes=sum(s["bytes"] for s in sources),
                 per_source={s["id"]: s["bytes"] for s in sources})  # fmt: skip

    # --- overlap joins ----------------------------------------------------------------------------

    def _start_overlap(self, view: dict[str, Any]) -> None:
        """Members: publish snapshot S at this step and keep training; log averaged gradients
        until the joiners have replayed up to (nearly) the present. The joined view's group is
        built meanwhile, so the step where the members change groups costs them one all-gather."""
        started = time.monotonic()
        joiners = [m for m in view["members"] if m not in self.members]
        epoch, cursor = self.sampler.state()
        captured = snapshot_state.capture(self.model, self.optimizer, step=self.step, extra=[epoch, cursor])
        self.pending = {"epoch": view["epoch"], "joiners": joiners, "from_step": self.step}
        note = None
        if self.rank == 0:
            step_s = statistics.median(self._step_times) if self._step_times else None
            note = {"snapshot_step": self.step, "sources": self.members, "step_s": step_s,
                    "grad_bytes": self.grad_bytes}  # fmt: skip
        self._write_later(self._publish_snapshot, view["epoch"], self.step, captured, note)
        self._build_ahead(view)
        self.log("overlap_start", step=self.step, joiners=joiners, epoch=view["epoch"],
                 pause_ms=round((time.monotonic() - started) * 1000, 1))  # fmt: skip

    def _publish_snapshot(self, epoch: int, step: int, captured, note: dict[str, Any] | None) -> None:
        """Write snapshot S; then (rank 0) the note that tells the joiners where it is."""
        snapshot_state.write(self.cfg.snapshot_dir, f"state-s{step}", captured, step=step, epoch=epoch)
        if note is not None:
            self._write_note(epoch, note)

    def _write_note(self, epoch: int, note: dict[str, Any]) -> None:
        """Tell the joiners of ``epoch`` where snapshot S is, or that this regroup is blocking."""
        path = self.cfg.rendezvous_dir / f"overlap-e{epoch}.json"
        tmp = path.with_suffix(f".{self.cfg.node_id}.tmp")
        tmp.write_text(json.dumps(note))
        tmp.replace(path)

    def _write_later(self, write, *args: Any, **kwargs: Any) -> None:
        def logged() -> None:
            try:
                write(*args, **kwargs)
            except Exception as exc:  # a joiner then waits for the view to move on
                self.log("write_failed", what=getattr(write, "__name__", str(write)), error=str(exc)[:200])

        self._writer.submit(logged)

    def _joiners_ready(self) -> bool:
        assert self.pending is not None
        if self._next is not None and not self._next.done():
            return False  # changing groups now would wait for the joined view's group
        for joiner in self.pending["joiners"]:
            marker = self.cfg.rendezvous_dir / f"caught-up-{joiner}"
            try:
                text = marker.read_text()
                if text != DECLINED and int(text or -1) < self.step - 2:
                    return False
            except (FileNotFoundError, ValueError):
                return False
        return True

    def _log_gradient(self) -> None:
        flat = torch.cat([p.grad.reshape(-1) for p in self.params])  # a copy: the writer owns it
        directory = self.cfg.snapshot_dir
        self._write_later(snapshot_state.save_tensor, directory, f"grads-s{self.step}", flat, step=self.step)
        self._write_later(snapshot_state.remove, directory, f"grads-s{self.step - self.cfg.grad_log}")

    def _end_overlap(self) -> None:
        """Any overlap ends with a regroup; its gradient log is kept until the first step of
        the new group is through (an entering joiner replays the last of it in that step)."""
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
        """Replay the averaged gradient of ``step`` (pulled from the members); False if absent
        (after ``wait_s``: the members' writer thread may still be writing it)."""
        name = f"grads-s{step}"
        deadline = time.monotonic() + wait_s
        while "error" in self.sidecar.pull(name, sources):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        flat = snapshot_state.load_tensor(self.cfg.snapshot_dir, name)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
        self.optimizer.step()
        self.sampler.advance()
        self.step = step
        snapshot_state.remove(self.cfg.snapshot_dir, name)
        return True

    def _replay_to(self, target: int, sources: list[str], wait_s: float) -> bool:
        while self.step < target:
            if not self._apply_logged(self.step + 1, sources, wait_s):
                return False
        return True

    def _members_opened(self, epoch: int, post: bool) -> bool:
        """Joiner holding a state: the members opened the joined view's group (or it cannot be
        opened). ``post``: at the head of the members' log, post the group's first all-gather
        with the step held now (posted earlier, the step would be too old to choose replay)."""
        built = self._next
        if built is None or self.sidecar.latest_epoch > epoch:
            return True
        if not built.done():
            return False
        if not built.usable():
            return True
        gather = built.gather([self.step, int(self._can_replay)]) if post else built.posted()
        return gather is not None and gather.is_completed()

    def _overlap_catch_up(self) -> None:
        """Joiner: pull snapshot S while the members train on, replay their gradients, and say
        how far it got; when the members change groups it enters and replays the rest during
        its first step."""
        view = self._current_member_view()
        note = self.cfg.rendezvous_dir / f"overlap-e{view['epoch']}.json"
        deadline = time.monotonic() + 60
        while not note.exists():
            if time.monotonic() > deadline:
                return  # no word from the members: join blocking
            if self.sidecar.latest_epoch > view["epoch"]:  # the members will regroup into that one
                view = self._current_member_view()
                note = self.cfg.rendezvous_dir / f"overlap-e{view['epoch']}.json"
            time.sleep(0.01)
        info = json.loads(note.read_text())
        if info.get("blocking"):
            return  # the members regroup blocking (not only joins, or the join came mid-regroup)
        self._build_ahead(view)  # the members are building it too: started before anything slow
        marker = self.cfg.rendezvous_dir / f"caught-up-{self.cfg.node_id}"
        links = self.sidecar.links(info["sources"])
        bandwidth = sum(link.get("bandwidth_Bps") or 0.0 for link in links.values() if isinstance(link, dict))
        replay_s = info["grad_bytes"] / bandwidth if bandwidth > 0 else float("inf")
        if info.get("step_s") and replay_s > REPLAY_SHARE_OF_STEP * info["step_s"]:
            # replaying would fall further behind every step: let the members regroup now
            marker.write_text(DECLINED)
            self.log("overlap_declined", replay_s=round(replay_s, 4), step_s=round(info["step_s"], 4),
                     bandwidth_Bps=round(bandwidth))  # fmt: skip
            return
        started = time.monotonic()
        self._pull_state(f"state-s{info['snapshot_step']}", info["sources"])
        self._can_replay = True
        pulled = time.monotonic()
        # replay what the members log; report progress until they open the joined group
        while time.monotonic() < deadline + 600 and not self._members_opened(view["epoch"], post=False):
            if self._apply_logged(self.step + 1, info["sources"]):
                continue
            marker.write_text(str(self.step))
            if self._members_opened(view["epoch"], post=True):
                break
            time.sleep(0.005)
        self.log("overlap_caught_up", step=self.step, snapshot_step=info["snapshot_step"],
                 sources=info["sources"],
                 transfer_ms=round((pulled - started) * 1000, 1),
                 replay_ms=round((time.monotonic() - pulled) * 1000, 1))  # fmt: skip

    # --- one step -------------------------------------------------------------------------------

    def _enter(self) -> None:
        """An entering joiner replays the steps it is still behind before this step's
        all-reduce (it computes no gradient in this step, see _share)."""
        target, sources = self._catch_up
        self._catch_up, self._can_replay = None, False  # entered now, or it pulls the state next time
        began = time.monotonic()
        if not self._replay_to(target, sources, wait_s=self.cfg.timeout_s / 3):
            self._close_group()  # the members' all-reduce fails at once instead of timing out
            raise RuntimeError(f"the gradients up to step {target} are gone; pulling the state instead")
        self.log("entered", step=self.step, replay_ms=round((time.monotonic() - began) * 1000, 1))
        self._log_digest()

    def _share(self) -> tuple[int, int] | None:
        """This member's slice of the global batch: (index, of how many); None for none.
        Members entering in this step take no share, the others split the batch."""
        working = [m for m in self.members if m not in self._entering]
        if self.cfg.node_id not in working:
            return None
        return working.index(self.cfg.node_id), len(working)

    def _train_step(self) -> None:
        if self._catch_up is not None:
            self._enter()
        batch = self.sampler.batch()
        latest = self.sidecar.latest_epoch
        if self.pending is None:
            changed = latest > (self.group_epoch or 0) or self.leaving
            # overlap only if every member sees nothing new or joins alone (summed below)
            overlap = (
                self.cfg.join_mode == "overlap" and not self.leaving and (not changed or self._only_joins())
            )
            flags = [1.0 if changed else 0.0, 1.0 if overlap else 0.0]
        else:
            # the log is bounded: a joiner that cannot replay as fast as we train gets the state
            # in a blocking regroup once the log is full
            log_full = self.step - self.pending["from_step"] >= self.cfg.grad_log
            regroup = self.leaving or latest > self.pending["epoch"] or self._joiners_ready() or log_full
            flags = [1.0 if regroup else 0.0, 0.0]
        loss_sum, sums = data_parallel_step(
            self.model, self.params, self.optimizer, self.loss_fn, self.features, self.labels,
            batch, self._share(), self.group, flags=flags,
        )  # fmt: skip
        self._entering = []
        self._drop_stale_grads()  # every entering joiner is through its replay
        epoch, cursor = self.sampler.state()
        self.sampler.advance()
        self.step += 1
        now = time.monotonic()
        if self._last_step_end is not None and not self._just_regrouped:
            self._step_times.append(now - self._last_step_end)
        self._last_step_end = now
        if self.pending is not None:
            self._log_gradient()
        record = {"step": self.step, "loss": round(loss_sum / len(batch), 6), "sampler": [epoch, cursor],
                  "epoch": self.group_epoch, "world": self.world}  # fmt: skip
        if self.cfg.digest_every and self.step % self.cfg.digest_every == 0:
            record["digest"] = snapshot_state.digest(self.model, self.optimizer)
        self.log("step", **record)
        if self.step % REPORT_EVERY == 0 or self.step == 1 or self._just_regrouped:
            self.sidecar.report(step=self.step)
            self._just_regrouped = False
        if sums[0] > 0:
            if self.pending is None and sums[1] == self.world:
                view = self.sidecar.view()["view"]
                if view["epoch"] <= (self.group_epoch or 0):  # the others saw it first
                    view = self.sidecar.wait_view(self.group_epoch or 0, timeout=2.0)["view"]
                self._start_overlap(view)
            else:
                self.regroup_needed = True

    def _only_joins(self) -> bool:
        view = (self.sidecar.view() or {}).get("view") or {}
        return set(self.members) < set(view.get("members", ()))


def data_parallel_step(model, params, optimizer, loss_fn, features, labels, batch, share, group, flags=()):
    """One synchronous data-parallel step on this member's slice of the global batch.

    ``share`` is (index, count): the batch is split into ``count`` slices and this member takes
    slice ``index``; None: no slice (it only takes part in the all-reduce). The loss is summed
    and divided by the global batch, so the all-reduced (summed) gradient is the exact average
    whatever the split. One all-reduce on ``group`` carries gradients, the summed loss and
    ``flags`` (each summed over ranks). Returns (global loss sum, flag sums).
    """
    mine = ElasticSampler.split(batch, *share) if share is not None else []
    for p in params:
        p.grad = None
    loss_sum = loss_fn(model(features[mine]), labels[mine]) if mine else torch.zeros(())
    if mine:
        (loss_sum / len(batch)).backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    tail = torch.tensor([float(loss_sum.detach()), *flags])
    flat = torch.cat([g.reshape(-1) for g in grads] + [tail])
    group.allreduce([flat]).wait()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    optimizer.step()
    return float(flat[offset]), [float(x) for x in flat[offset + 1 :]]


def env_backend() -> str:
    return "nccl" if torch.cuda.is_available() and os.environ.get("CHAOS_BACKEND") != "gloo" else "gloo"
