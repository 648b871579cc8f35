"""Regrouping: from a new view to a working process group with every member at the newest
state: rendezvous through the sidecars, the group build, reconciling who holds what
(a blocking state transfer to those behind, or a resume from a checkpoint)."""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import Kind
from chaos_sidecar.protocol.messages import View
from chaos_train import state as snapshot_state
from chaos_train.crossparty import CrossPartyGroup, open_cross_party
from chaos_train.engine_config import (
    BLOCKING_NOTE,
    JOIN_SNAPSHOT,
    NOTE_KEY,
    RETRY_PATIENCE_S,
    TRANSFER_DEADLINE_S,
    JobFinished,
    LeftGroup,
    NoState,
)
from chaos_train.groups import GroupBuild, all_gather_ints, new_process_group
from chaos_train.lineage import FOLLOWS, FOUNDING
from chaos_train.lineage import providers as lineage_providers
from chaos_train.rendezvous import GROUP_KEY, RoundPassed
from chaos_train.sidecar_client import SidecarLost
from chaos_train.sites import SITE_KEY, relays


class Regrouping:
    """Part of chaos_train.sdk.ElasticTrainer (a mixin: it uses the engine's attributes, set in
    ElasticTrainer.__init__)."""

    def _await_newer_view(self, epoch: int | None = None, patience_s: float | None = None) -> bool:
        """Wait until the sidecar commits a view newer than ``epoch`` (default: the group's):
        True once it has; False when ``patience_s`` passed without one."""
        epoch = (self.group_epoch or 0) if epoch is None else epoch
        waiting_since = time.monotonic()
        reported = waiting_since
        while True:  # a member cut off from any majority pauses here until the group moves on
            if self.sidecar.wait_view(epoch, timeout=min(5.0, patience_s or 5.0)).epoch > epoch:
                return True
            if patience_s is not None and time.monotonic() - waiting_since >= patience_s:
                return False
            if time.monotonic() - reported > 60:
                reported = time.monotonic()
                self.log(Kind.WAITING_FOR_VIEW, epoch=epoch, waited_s=round(reported - waiting_since))

    # --- regrouping -----------------------------------------------------------------------------

    def _retry_epoch(self) -> None:
        """Regroup in the current view once more, in a fresh rendezvous round: a collective or
        a rendezvous can fail without anyone leaving (a member too slow for the timeout)."""
        self.rendezvous.next_round(self.group_epoch or 0)
        self._same_epoch_again = True

    def _current_member_view(self) -> View:
        """The newest view this node is a member of, newer than the current group's (or the
        current one again, after ``_retry_epoch``)."""
        after = (self.group_epoch or 0) - (1 if self._same_epoch_again else 0)
        while True:
            snap = self.sidecar.view()
            view = snap.view
            if snap.status == "member" and view and self.cfg.node_id in view.members and view.epoch > after:
                return view
            if snap.status == "left":
                raise LeftGroup()
            self.sidecar.wait_view(snap.epoch, timeout=2.0)

    def _regroup(self) -> None:
        if self.leaving:
            self.log(Kind.LEAVING, step=self.step)
            self._close_group()
            self.sidecar.leave()
            deadline = time.monotonic() + 30
            # outside a pod a sidecar that left exits at once (chaos_sidecar.commands.sidecar):
            # its port closing before this loop saw "left" is the leave done, not a lost sidecar
            with contextlib.suppress(SidecarLost):
                while time.monotonic() < deadline and self.sidecar.view().status != "left":
                    self.sidecar.wait_view(self.group_epoch or 0, timeout=1.0)
            raise LeftGroup()
        # from here until the "regroup" record (or the trainer's end) this node is regrouping
        self.log("regroup_started", step=self.step, epoch=self.group_epoch)
        self._await_capture()
        while True:
            view = self._built_view() or self._current_member_view()
            if self.rendezvous.finished_step is not None:
                # the others finished while we were away: training on from our older state
                # would redo steps they already took
                raise JobFinished()
            started = time.monotonic()
            self._close_group()
            members = list(view.members)
            epoch = view.epoch
            rank = members.index(self.cfg.node_id)
            lost = self._lost_watch(epoch, members)
            built = self._take_built(epoch, members)
            # a joiner waiting for snapshot S: join now
            note = BLOCKING_NOTE if self.cfg.join_mode == "overlap" and self.step >= 0 else None
            try:
                opened = (
                    built.result(self._moved_past(epoch))
                    if built is not None
                    else self._open_group(epoch, members, note)
                )
                if opened is None:
                    continue  # the view moved on while we waited: go for the newer one
                self.group, self._store = opened
                self.group_id = self._store.get(GROUP_KEY).decode()
                # all-reduces a joiner posted ahead in a group the view moved past are dropped
                # (that group is freed on the close-group thread, see _take_built)
                self._posted = collections.deque(e for e in self._posted if e[0] is self.group)
                opened_at = time.monotonic()
                mine = [self.step, int(self._can_replay), self._lineage]
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
                self.log(Kind.RENDEZVOUS_FAILED, epoch=epoch, error=str(exc)[:200])
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
            if len(members) > self.work.global_batch and rank == 0:
                # correct, only wasteful: the members beyond the batch take no samples
                idle = len(members) - self.work.global_batch
                message = (f"global_batch {self.work.global_batch} is smaller than the group "
                           f"({len(members)} members): {idle} of them idle each step")  # fmt: skip
                self.log(Kind.WARNING, epoch=epoch, message=message)
                print(f"chaos_train: warning: {message}", file=sys.stderr, flush=True)
            self._lost = lost
            try:
                transfer = self._reconcile(gathered, epoch)
            except RuntimeError as exc:  # a member died while the state moved
                self.log(Kind.RECONCILE_FAILED, epoch=epoch, error=str(exc)[:200])
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
                Kind.REGROUP, epoch=epoch, members=members, rank=rank, step=self.step,
                pause_ms=round((time.monotonic() - started) * 1000, 1),
                group_ms=round((grouped - started) * 1000, 1), open_ms=round((opened_at - started) * 1000, 1),
                built_ahead=built is not None, gather_predicted=self._unchecked is not None, **transfer,
                **({"cross_party": True} if isinstance(self.group, CrossPartyGroup) else {}),
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
            return view is not None and view.epoch > epoch and not set(members) <= set(view.members)

        return lost

    def _moved_past(self, epoch: int) -> Callable[[], bool]:
        """Whether the agreed view has moved past ``epoch``: a wait for its group gives up then."""
        return lambda: self.sidecar.latest_epoch > epoch

    def _meet(self, epoch: int, members: list[str]) -> dist.Store | None:
        """The store of ``epoch``'s current round once every member arrived in it; None when the
        view moves past ``epoch`` first (see chaos_train.rendezvous)."""
        meeting = self.rendezvous.meet(epoch, members, moved_on=self._moved_past(epoch))
        return None if meeting is None else meeting.store

    def _group_in(self, store: dist.Store, epoch: int, members: list[str]):
        """The process group of ``epoch`` in the store its members met in, and that store."""
        rank = members.index(self.cfg.node_id)
        # a connection of its own: the group's set-up waits on the store, and must not hold up
        # the notes and progress other threads exchange there meanwhile
        connection = store.clone()
        own = dist.PrefixStore("group", connection)
        address, timeout_s = self.rendezvous.address, self.cfg.timeout_s
        plan = self.sidecar.collective(members)
        # before the group exists, so every member's site is in the store once anyone's group is
        site = self.cfg.site or (plan.parties[rank] if plan.parties is not None else "")
        connection.set(SITE_KEY.format(self.cfg.node_id), site)
        if plan.parties is not None:
            self._agree_on_collectives(own, members, "cleartext" if plan.cleartext else "sealed")
        if plan.parties is not None and not plan.cleartext:  # clear gloo within each party only
            context = f"chaos-train epoch {epoch} meeting {connection.get(GROUP_KEY).decode()}".encode()
            group = open_cross_party(
                own, rank, list(plan.parties), list(plan.keys), address, context, timeout_s,
                lambda st, r, n: new_process_group(self.cfg.backend, st, r, n, timeout_s, address),
            )  # fmt: skip
            return group, store
        group = new_process_group(self.cfg.backend, own, rank, len(members), timeout_s, address)
        return group, store

    def _agree_on_collectives(self, store: dist.Store, members: list[str], mine: str) -> None:
        """Members of several parties check that they all build the same kind of group: a node
        started with ``--allow-cleartext-collectives`` among nodes without it (or the reverse)
        would wait in a group the others never build."""
        store.set(f"collectives/{self.cfg.node_id}", mine)
        theirs = {m: store.get(f"collectives/{m}").decode() for m in members}
        differ = sorted(m for m, kind in theirs.items() if kind != mine)
        if differ:
            raise RuntimeError(f"--allow-cleartext-collectives differs between members: {mine} here, "
                               f"not on {differ}: start every node of the job the same way")  # fmt: skip

    def _open_group(self, epoch: int, members: list[str], note: dict[str, Any] | None = None):
        """This epoch's process group and store, once every member arrived; None when the view
        moves past ``epoch`` first. ``note`` is left for the view's overlap joiners first."""
        store = self._meet(epoch, members)
        if store is None:
            return None
        if note is not None:
            store.set(NOTE_KEY, json.dumps(note))
        # built on a thread: a member killed during the build would hold this one in gloo's
        # constructor long after the view dropped it (see chaos_train.groups.MOVED_ON_POLL_S)
        build = GroupBuild(epoch, members, lambda: store, lambda met: self._group_in(met, epoch, members),
                           self._builders)  # fmt: skip
        return build.result(moved_on=self._moved_past(epoch))

    def _build_ahead(self, view: View) -> None:
        """Start building the group of ``view`` on a thread (overlap joins: members and joiner)."""
        epoch, members = view.epoch, list(view.members)
        self._next = GroupBuild(
            epoch, members, lambda: self._meet(epoch, members),
            lambda store: self._group_in(store, epoch, members), self._builders,
        )  # fmt: skip

    def _built_view(self) -> View | None:
        """The view whose group was built ahead, while it is still the newest: no need to ask
        the sidecar at the step where the members change groups."""
        built, view = self._next, self.sidecar.latest_view
        if built is None or not built.usable() or view is None or view.epoch != built.epoch:
            return None
        return view

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
            self.log(Kind.POSTED_GROUP_SKIPPED, epoch=built.epoch, for_epoch=epoch)
        self._to_free.put([built])
        return None

    def _log_digest(self) -> None:
        """The replica check after a view change (off with ``digest_every`` 0, as in benchmarks:
        hashing the state takes tens of ms; the final digest is always logged)."""
        if self.cfg.digest_every:
            self.log(Kind.DIGEST, step=self.step, digest=snapshot_state.digest(self.replica))

    def _reconcile(self, gathered: list[list[int]], epoch: int) -> dict[str, Any]:
        """Members behind the newest state get it: an overlap joiner enters and replays the
        members' logged gradients while they train (see _entering_step); any other pulls the
        newest state from every member that has it while the others wait."""
        held = [g[0] for g in gathered]
        newest = max(held)
        if self.checkpoints is not None and newest <= 0 and not any(g[1] for g in gathered):
            resumed = self._resume(newest)
            if resumed is not None:
                return resumed
        if newest < 0:
            raise NoState(f"no member of epoch {epoch} holds the state: {self.members}")
        # a member at the newest step with another lineage is behind too (chaos_train.lineage)
        keep, lineage = lineage_providers(held, [g[2] for g in gathered])
        providers = [self.members[r] for r in keep]
        needers = [self.members[r] for r in range(len(held)) if r not in keep]
        # an overlap joiner enters even when level: it may have posted its first all-reduces
        # ahead, with no share of the batch (see _post_entering); if the members' log no
        # longer reaches back to its step, its replay fails and it pulls the state next round
        entering = [
            self.members[r] for r, g in enumerate(gathered) if g[1] and (held[r] < newest or r in keep)
        ]
        pulling = [n for n in needers if n not in entering]
        self._entering = entering
        self._resting = []
        self._catch_up = (newest, providers) if self.cfg.node_id in entering else None
        self._group_step = newest
        # an entering joiner caught in a later regroup pulls the state: what it received in
        # this group is not in the members' log
        self._backlog.clear()
        self._can_replay = False
        if not pulling:
            return {"transfer_ms": 0.0, "sources": providers if needers else [], "needers": needers,
                    "entering": entering}  # fmt: skip
        name = f"{JOIN_SNAPSHOT}{epoch}"
        began = time.monotonic()
        if self.cfg.node_id in providers:
            epoch_, cursor = self.sampler.state()
            with self._telling_failure():
                snapshot_state.save(self.cfg.snapshot_dir, name, self.replica, step=self.step,
                                    extra=[epoch_, cursor], epoch=epoch, replaces=JOIN_SNAPSHOT)  # fmt: skip
            self._store.set(f"saved-{self.cfg.node_id}", "1")
        saved = time.monotonic()
        relay, sources, nearby = (
            self._site_plan(providers, pulling) if self.cfg.node_id in pulling else (None, providers, [])
        )
        if self.cfg.node_id in pulling:
            # no collective here: a member entering by replay may have posted all-reduces ahead
            self._await_keys([f"saved-{p}" for p in providers], "the providers' snapshot", epoch, providers)
            if relay is not None:  # a neighbour at this site pulls over the WAN first
                self._await_keys([f"transferred-{relay}"], f"{relay}'s pull", epoch, [relay])
        timings = {
            "save_ms": round((saved - began) * 1000, 1),
            "save_wait_ms": round((time.monotonic() - saved) * 1000, 1),
        }
        transfer_ms = 0.0
        if self.cfg.node_id in pulling:
            started = time.monotonic()
            with self._telling_failure():
                self._pull_state(name, sources, relay, nearby, lineage, replaces=JOIN_SNAPSHOT)
            transfer_ms = (time.monotonic() - started) * 1000
            self._store.set(f"transferred-{self.cfg.node_id}", "1")
        self._resting = pulling  # in the first step only: see _compute_ahead
        if self.cfg.node_id not in pulling:
            ahead = time.monotonic()
            self._compute_ahead()
            timings["ahead_ms"] = round((time.monotonic() - ahead) * 1000, 1)
        self._await_keys(
            [f"transferred-{n}" for n in pulling], f"the state transfer to {pulling}", epoch, pulling
        )
        return {
            "transfer_ms": round(transfer_ms, 1),
            "sources": providers,
            "needers": needers,
            "entering": entering,
            **timings,
            **({"relay": relay} if relay is not None else {}),
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
                self._lineage = FOUNDING  # every member loaded this checkpoint
                self.sampler.load(extra[1], extra[2])
                self.log(Kind.RESUMED, step=self.step, checkpoint=step)
                return {
                    "transfer_ms": 0.0,
                    "sources": [],
                    "needers": [],
                    "entering": [],
                    "resumed_from": step,
                }
            target = min(r[0] for r in results) - 1  # below the oldest one tried, all together
        return None

    @contextlib.contextmanager
    def _telling_failure(self):
        """A provider's save or a joiner's pull that fails says so in the store before it
        raises: the others stop waiting for it and meet again in the next round with it,
        instead of waiting out the transfer deadline in this one."""
        try:
            yield
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._store.set(f"failed-{self.cfg.node_id}", str(exc)[:200])
            raise

    def _await_keys(self, keys: list[str], what: str, epoch: int, doers: list[str]) -> None:
        """Wait until ``keys`` are set in the epoch's store by ``doers``. A transfer on a slow
        link takes longer than any collective timeout, so this polls the store, and gives up
        when the group's view moves past ``epoch`` (a member died meanwhile) or one of
        ``doers`` says it failed."""
        deadline = time.monotonic() + TRANSFER_DEADLINE_S
        failures = [f"failed-{d}" for d in doers]
        while not self._store.check(keys):
            if self.sidecar.latest_epoch > epoch or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not finish in epoch {epoch}")
            failed = [f for f in failures if self._store.check([f])]
            if failed:
                raise RuntimeError(f"{what} failed: {self._store.get(failed[0]).decode()}")
            time.sleep(0.005)

    def _site_plan(self, providers: list[str], pulling: list[str]) -> tuple[str | None, list[str], list[str]]:
        """This joiner's view of the sites (chaos_train.sites): the neighbour it pulls through,
        if any, its sources (the providers, and that neighbour first), and those of them at its
        own site. Every member set its site in the store before its group was built, so all are
        there once the group is."""
        nodes = [*providers, *pulling]
        sites = self._store.multi_get([SITE_KEY.format(m) for m in nodes])
        site_of = {m: site.decode() for m, site in zip(nodes, sites, strict=True)}
        relay = relays(providers, pulling, site_of).get(self.cfg.node_id)
        sources = providers if relay is None else [relay, *providers]
        return relay, sources, [m for m in sources if site_of[m] == site_of[self.cfg.node_id]]

    def _pull_state(self, name: str, providers: list[str], relay: str | None = None,
                    nearby: list[str] | None = None, lineage: int = FOLLOWS, *,
                    replaces: str) -> None:  # fmt: skip
        """Pull snapshot ``name`` from ``providers`` and load it; ``lineage``: the providers'
        (chaos_train.lineage; FOLLOWS for the members' own snapshot of an overlap join).
        ``replaces``: its kind, whose older snapshots on this node it retires."""
        # until "pulled" (or "reconcile_failed") this node's state transfer is in progress
        self.log("pull_started", name=name, sources=providers, **({"relay": relay} if relay else {}))
        began = time.monotonic()
        result = self.sidecar.pull(name, providers, nearby)
        if "error" in result:
            raise RuntimeError(f"state transfer failed ({result['error']}): {result.get('message', '')}")
        pulled = time.monotonic()
        extra = snapshot_state.load(self.cfg.snapshot_dir, name, self.replica)
        self.step, sampler_epoch, cursor = extra[0], extra[1], extra[2]
        self._lineage = lineage
        self.sampler.load(sampler_epoch, cursor)
        snapshot_state.retire_older(self.cfg.snapshot_dir, name, replaces)
        sources = result.get("per_source", [])
        self.log(Kind.PULLED, name=name, seconds=result.get("seconds"), call_s=round(pulled - began, 4),
                 load_s=round(time.monotonic() - pulled, 4), bytes=sum(s["bytes"] for s in sources),
                 per_source={s["id"]: s["bytes"] for s in sources},
                 planned=result.get("plan", {}).get("pieces"), steals=result.get("steals"))  # fmt: skip
