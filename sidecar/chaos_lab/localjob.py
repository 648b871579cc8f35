"""``chaos-train local``: the main job on one machine, with real processes.

Each node is a sidecar process plus a trainer process (a training script on the public SDK,
started by ``chaos-train run`` with the environment the SDK reads; by default the built-in
job ``examples/train/mlp.py``);
trainers meet per view epoch over the network (a store hosted by the view's first member,
found through the sidecars) and pull state through their sidecars. The churn script is
applied at training steps; progress is read from the trainers' logs. At the end the logs
are checked (identical replicas, every sample exactly once) and summarised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_lab import netns
from chaos_lab.baselines import sidecar_command
from chaos_lab.builtin import BUILTIN_SCRIPT
from chaos_lab.churn import HEALING, ChurnEvent
from chaos_lab.kills import WATCHED, Moments
from chaos_lab.localcluster import LocalCluster
from chaos_sidecar import eventlog
from chaos_sidecar.eventlog import Kind, Record
from chaos_sidecar.membership.machine import Settings
from chaos_sidecar.trainer_env import TrainerEnv

EXIT_NO_STATE = 4  # chaos_train.trainer: a joiner found no member holding state (the job was done)
STRAGGLER_S = 20.0  # after the group's last step, how long a late trainer may take to finish
POLL_S = 0.1  # how often the trainers' logs are read: churn lands within about 3 steps
# while a kill waits for a moment (a checkpoint write lasts 50-300 ms on 2 busy cores)
TRIGGER_POLL_S = 0.01
# A group that has not stepped for this long may be waiting for a link to heal: the next
# scripted healing event fires now instead of at a step that may never come. Longer than a
# regroup after a crash (a failure timeout) plus a state transfer on a slowed link.
HEAL_AFTER_S = 5.0
TRAINER_START_S = 120.0  # a trainer's script must write its first log record within this long
TRAINER_NICE = 5


class JobStalled(RuntimeError):
    """The group stopped making progress, or the job ran past its deadline; ``nodes`` says
    where each live node was stuck (its sidecar's view and status, its trainer's last step)."""

    def __init__(self, reason: str, nodes: dict[str, dict[str, Any]]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.nodes = nodes


def new_lines(path: Path | None, offsets: dict[str, int], key: str) -> Iterator[str]:
    """The complete lines appended to ``path`` since ``offsets[key]``, which moves past them."""
    if path is None or not path.exists():
        return
    with path.open() as f:
        f.seek(offsets.get(key, 0))
        for line in f:
            if not line.endswith("\n"):
                break
            offsets[key] = offsets.get(key, 0) + len(line)
            yield line


def take_due(
    pending: list[ChurnEvent],
    step: int,
    elapsed_s: float,
    idle_s: float,
    cut: set[frozenset[str]],
    observed: Callable[[ChurnEvent], bool] = lambda event: False,
) -> ChurnEvent | None:
    """Pop the next event to apply: the first pending one once it is due, or, for a kill with
    ``on``, once ``observed`` says its moment is in progress; or, when the group has not
    stepped for HEAL_AFTER_S, the first healing one ahead of its turn (its step may
    never come: the group may be waiting for exactly that link) for a link that is ``cut``
    now (healing one that is up would leave a later cut of it with no healing)."""
    if pending and (pending[0].due(step, elapsed_s) or (pending[0].on is not None and observed(pending[0]))):
        return pending.pop(0)
    if idle_s >= HEAL_AFTER_S:
        for i, event in enumerate(pending):
            if event.event in HEALING and frozenset((event.node, event.peer)) in cut:
                return pending.pop(i)
    return None


@dataclass
class JobConfig:
    nodes: int
    steps: int
    churn: list[ChurnEvent]
    out: Path
    join_mode: str = "blocking"
    global_batch: int = 256
    samples: int = 16384
    seed: int = 0
    live: bool = True
    digest_every: int = 10
    hidden: int | None = None  # the built-in model's width (state size); None: the script's default
    # the training script every node runs, and its arguments; None: the built-in job, given
    # the samples, global batch, seed and hidden width above
    script: Path | None = None
    script_args: list[str] = field(default_factory=list)
    # durable checkpoints: a directory all nodes reach (storage, not a node's), every N steps
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 100
    transfer_split: str | None = None  # a baseline of chaos_lab.baselines; None: the planner
    grad_log: int | None = None  # overlap: the members' gradient log bound; None: the SDK's default
    upload_limits_mbps: dict[str, float] = field(default_factory=dict)  # node -> per-link limit
    # "loopback": every node on this host's loopback; "netns": each node in its own network
    # namespace with its own address and directory, its link shaped to ``links`` (bytes/s)
    hosts: str = "loopback"
    links: dict[str, float | None] = field(default_factory=dict)

    def node_names(self) -> list[str]:
        """Every node the job may run: the founding ones, then the churn script's joiners."""
        names = [f"n{i}" for i in range(self.nodes)]
        for event in self.churn:
            if event.node not in names:
                names.append(event.node)
        return names

    deadline_s: float | None = None  # the whole run, from the first start (None: no limit)
    stall_limit_s: float | None = None  # no new step for this long ends the run (None: no limit)


@dataclass
class Injected:
    event: ChurnEvent
    t: float  # wall clock, just before the event was applied (a kill: before the signal went out)
    step: int
    fired: str = "due"  # "due" (its step or time), "observed" (its moment, for a kill with on), "early"
    t_done: float | None = None  # once applied (a kill: the killed processes are reaped)


@dataclass
class LocalJob:
    cfg: JobConfig
    trainers: dict[str, subprocess.Popen] = field(default_factory=dict)
    injected: list[Injected] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    stragglers: list[str] = field(default_factory=list)
    finished_at: float | None = None
    star: netns.Star | None = None  # the nodes' namespaces and links (hosts "netns")
    cut: set[frozenset[str]] = field(default_factory=set)  # node pairs whose link is down now
    foreign_opens: list[str] = field(default_factory=list)  # files a node opened in another's directory
    no_majority: dict[str, Record] = field(default_factory=dict)  # node -> its sidecar's record
    _last_kind: dict[str, Kind] = field(default_factory=dict)  # each trainer's latest record
    _sidecar_offsets: dict[str, int] = field(default_factory=dict)
    _background: set[asyncio.Task] = field(default_factory=set)  # renicing trainers once started

    def __post_init__(self) -> None:
        # every process gets absolute paths: sidecars and trainers run in directories of their own
        out = self.cfg.out = self.cfg.out.resolve()
        if out.exists():
            shutil.rmtree(out)
        (out / "logs").mkdir(parents=True)
        # trainers load the CPU: a failure timeout of 1 s avoids false suspicion on 2 cores,
        # and five heartbeats per timeout are plenty (each costs the trainers' cores)
        self.cluster = LocalCluster(out / "sidecars", settings=Settings(0.2, 1.0, 0.05))
        self._offsets: dict[str, int] = {}
        self.progress: dict[str, Record] = {}  # node -> its trainer's latest step record
        self.done: set[str] = set()  # trainers that logged the last step
        self.moments = Moments()  # what each trainer is doing (transfer, regroup, checkpoint)

    # --- processes ------------------------------------------------------------------------------

    def node_dir(self, node: str) -> Path | None:
        """A node's private directory (hosts "netns"); None on loopback."""
        return self.cfg.out / "nodes" / node if self.star is not None else None

    def _wrap(self, node: str):
        """How a node's processes are started: inside its namespace (hosts "netns")."""
        if self.star is None:
            return None
        index = self.cfg.node_names().index(node)
        return lambda cmd: self.star.wrap(index, cmd)

    def snapshot_dir(self, node: str) -> Path:
        private = self.node_dir(node)
        return private / "snapshots" if private else self.cfg.out / "snapshots" / node

    async def start_node(self, node: str, *, seed: bool = False, founding: bool = False) -> None:
        private = self.node_dir(node)
        snapshots = self.snapshot_dir(node)
        snapshots.mkdir(parents=True, exist_ok=True)
        extra = ["--snapshot-dir", str(snapshots)] + ([] if founding else ["--defer-join"])
        if node in self.cfg.upload_limits_mbps:
            extra += ["--upload-limit-mbps", str(self.cfg.upload_limits_mbps[node])]
        wrap = self._wrap(node)
        host = self.star.ip(self.cfg.node_names().index(node)) if self.star else "127.0.0.1"
        program = sidecar_command(self.cfg.transfer_split) if self.cfg.transfer_split else None
        sidecar = await self.cluster.start(
            node, seed=seed, extra=extra, wrap=wrap, host=host, directory=private, program=program
        )
        env = TrainerEnv(
            node_id=node, sidecar_url=sidecar.local_url, snapshot_dir=snapshots,
            event_log=self.trainer_log(node), founding=founding, steps=self.cfg.steps,
            join_mode=self.cfg.join_mode, digest_every=self.cfg.digest_every,
            grad_log=self.cfg.grad_log or TrainerEnv.grad_log,
            checkpoint_dir=self.cfg.checkpoint_dir.resolve() if self.cfg.checkpoint_dir else None,
            checkpoint_every=self.cfg.checkpoint_every,
        )  # fmt: skip
        cmd = [sys.executable, "-m", "chaos_sidecar.cli", "run", *self.script_command()]
        stderr = self.trainer_log(node).with_suffix(".stderr").open("ab")
        cmd = wrap(cmd) if wrap else cmd
        # one thread each: several trainers share the machine's cores
        env_vars = {**os.environ, **env.to_environ(), "OMP_NUM_THREADS": "1"}
        stdout = self.trainer_log(node).with_suffix(".out").open("ab")  # the script's own output
        self.trainers[node] = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=private, env=env_vars)
        task = asyncio.create_task(self._nice_once_started(node, self.trainers[node]))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _nice_once_started(self, node: str, trainer: subprocess.Popen) -> None:
        """The sidecars' heartbeats are latency-critical, the trainers' math is not: a trainer
        runs at a lower priority, but only once its script has started (its first log record),
        so that a joiner's imports are not starved and its join lands when scripted."""
        log = self.trainer_log(node)
        deadline = time.monotonic() + TRAINER_START_S
        while trainer.poll() is None and time.monotonic() < deadline:
            if log.exists() and log.stat().st_size > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.setpriority(os.PRIO_PROCESS, trainer.pid, TRAINER_NICE)
                return
            await asyncio.sleep(POLL_S)

    def script_command(self) -> list[str]:
        """The script every node runs, and its arguments."""
        if self.cfg.script is not None:
            return [str(self.cfg.script.resolve()), *self.cfg.script_args]
        args = ["--samples", str(self.cfg.samples), "--global-batch", str(self.cfg.global_batch),
                "--seed", str(self.cfg.seed)]  # fmt: skip
        if self.cfg.hidden is not None:
            args += ["--hidden", str(self.cfg.hidden)]
        return [str(BUILTIN_SCRIPT), *args]

    def trainer_log(self, node: str) -> Path:
        return (self.node_dir(node) or self.cfg.out / "logs") / f"{node}.trainer.jsonl"

    def trainer_logs(self) -> list[Path]:
        return sorted(self.cfg.out.glob("nodes/*/*.trainer.jsonl")) + sorted(
            self.cfg.out.glob("logs/*.trainer.jsonl")
        )

    def sidecar_logs(self) -> list[Path]:
        return sorted(self.cfg.out.glob("nodes/*/*.events.jsonl")) + sorted(
            self.cfg.out.glob("sidecars/*.events.jsonl")
        )

    def check_privacy(self) -> None:
        """Hosts "netns": record any file a node's process holds open in another node's directory."""
        nodes = self.cfg.out.resolve() / "nodes"
        processes = {n: [p.pid] for n, p in self.trainers.items()}
        for n, sidecar in self.cluster.nodes.items():
            processes.setdefault(n, []).append(sidecar.process.pid)
        for node, pids in processes.items():
            for pid in pids:
                with contextlib.suppress(OSError):
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        with contextlib.suppress(OSError):
                            target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
                            if target.is_relative_to(nodes) and target.relative_to(nodes).parts[0] != node:
                                self.foreign_opens.append(f"{node} (pid {pid}): {target}")

    def link(self, a: str, b: str, *, up: bool) -> None:
        """Hosts "netns": cut or restore the route between two nodes, for all traffic."""
        assert self.star is not None
        names = self.cfg.node_names()
        (self.star.restore if up else self.star.cut)(names.index(a), names.index(b))

    def crash(self, node: str) -> None:
        self.trainers[node].send_signal(signal.SIGKILL)
        self.cluster.kill(node)
        self.trainers[node].wait()
        self.moments.died(node, time.time())
        self.gone.add(node)

    def crash_trainer(self, node: str) -> None:
        """Only the trainer dies; its sidecar notices the silence and leaves for it."""
        self.trainers[node].send_signal(signal.SIGKILL)
        self.trainers[node].wait()
        self.moments.died(node, time.time())
        self.gone.add(node)

    def crash_sidecar(self, node: str) -> None:
        """Only the sidecar dies; the group removes the node and its trainer stops."""
        self.cluster.kill(node)
        self.moments.died(node, time.time())
        self.gone.add(node)

    def leave(self, node: str) -> None:
        self.trainers[node].send_signal(signal.SIGTERM)  # the trainer leaves through its sidecar
        self.gone.add(node)

    # --- progress -------------------------------------------------------------------------------

    def poll_logs(self) -> None:
        for node in self.trainers:
            log = self.trainer_log(node)
            for record in (eventlog.parse(line, str(log)) for line in new_lines(log, self._offsets, node)):
                self._last_kind[node] = record.kind
                if record.kind is Kind.STEP:
                    self.progress[node] = record
                elif record.kind is Kind.DONE:
                    self.done.add(node)
                if record.kind in WATCHED:
                    self.moments.feed(record)

    def poll_majority(self) -> None:
        """Which sidecars reach no majority of their view, from their event logs."""
        for node_id, node in self.cluster.nodes.items():
            for line in new_lines(node.log_path, self._sidecar_offsets, node_id):
                record = eventlog.parse(line, str(node.log_path))
                if record.kind is Kind.NO_MAJORITY:
                    self.no_majority[node_id] = record
                elif record.kind is Kind.NO_MAJORITY_OVER:
                    self.no_majority.pop(node_id, None)

    def current_step(self) -> int:
        live = [r["step"] for n, r in self.progress.items() if n not in self.gone]
        return max(live, default=0)

    def status_line(self, note: str) -> str:
        step = self.current_step()
        latest = max(
            (r for n, r in self.progress.items() if n not in self.gone), key=lambda r: r["step"], default=None
        )
        loss = f"{latest['loss']:.4f}" if latest else "-"
        members = latest["world"] if latest else 0
        stuck = [
            f"{node} reaches {','.join(r['reaches'])} of {r['members']} (needs {r['needed']})"
            for node, r in sorted(self.no_majority.items())
            if node not in self.gone
        ]
        if stuck:
            note = "NO MAJORITY: " + "; ".join(stuck)
        return f"step {step:>5}/{self.cfg.steps}  loss {loss}  members {members}  {note}"

    # --- the run --------------------------------------------------------------------------------

    async def run(self) -> float:
        try:
            if self.cfg.hosts != "netns":
                return await self._run()
            netns.remove_stale()
            names = self.cfg.node_names()
            rates = [self.cfg.links.get(n) for n in names]
            with netns.Star(len(names), rates, subnet=100 + os.getpid() % 100, routed=True) as star:
                self.star = star
                try:
                    return await self._run()
                finally:
                    self.cluster.close()  # every process out of the namespaces before they go
        finally:  # no trainer outlives the job, however it ends (normally, all have exited)
            for process in self.trainers.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()

    async def _run(self) -> float:
        started = time.monotonic()
        async with self.cluster:
            names = [f"n{i}" for i in range(self.cfg.nodes)]
            await self.start_node(names[0], seed=True, founding=True)
            for node in names[1:]:
                await self.start_node(node, founding=True)
            if self.star is None:
                await self.cluster.wait_agreed(set(names), 60)
            else:  # the harness cannot reach a node's local API from outside its namespace
                await self.cluster.wait_members(set(names), 60)
            pending = list(self.cfg.churn)
            note = "training"
            last_print = 0.0
            # the stall clocks start at the first step: before it the trainers are starting up
            agreed_at = progress_at = healed_at = time.monotonic()
            progress_step = 0
            while True:
                self.poll_logs()
                if self.star is not None:
                    self.check_privacy()
                step = self.current_step()
                now = time.monotonic()
                if step > progress_step or progress_step == 0:
                    progress_step, progress_at = step, now
                idle_s = now - max(progress_at, healed_at)
                elapsed, observed = now - agreed_at, self._observed
                while (event := take_due(pending, step, elapsed, idle_s, self.cut, observed)) is not None:
                    early = not event.due(step, elapsed)
                    fired = "due" if not early else "observed" if event.on is not None else "early"
                    if event.on is not None and not await self.safe_to_kill(event.node):
                        pending.insert(0, event)  # the group is not ready for it yet: later
                        break
                    await self.apply(event, step, fired)
                    note = ("stalled, healing early: " if fired == "early" else "event: ") + event.label()
                    if fired == "early":
                        healed_at, idle_s = now, 0.0
                running = [n for n, p in self.trainers.items() if p.poll() is None and n not in self.gone]
                if not running and not pending:
                    break
                if self.finished_at is None and self.done:
                    self.finished_at = time.monotonic()
                if self.finished_at is not None and time.monotonic() - self.finished_at > STRAGGLER_S:
                    for node in running:  # e.g. a joiner whose trainer started after the last step
                        self.trainers[node].kill()
                        self.stragglers.append(node)
                    break
                failed = [
                    n
                    for n, p in self.trainers.items()
                    if p.poll() not in (None, 0)
                    and n not in self.gone
                    and not (self.finished_at is not None and p.returncode == EXIT_NO_STATE)
                ]
                if failed:
                    raise RuntimeError(f"trainer(s) {failed} failed; see {self.cfg.out}/logs")
                reason = self.stall_reason(now - started, now - progress_at, step)
                if reason is not None:
                    raise JobStalled(reason, await self.stuck_nodes())
                if self.cfg.live and now - last_print > 0.5:
                    last_print = now
                    self.poll_majority()
                    print("\r" + self.status_line(note).ljust(100), end="", flush=True)
                waiting = bool(pending) and pending[0].on is not None  # a kill waiting for its moment
                await asyncio.sleep(TRIGGER_POLL_S if waiting else POLL_S)
            self.poll_logs()
            if self.cfg.live:
                print("\r" + self.status_line("done").ljust(100), flush=True)
            for node, process in self.trainers.items():
                if node in self.gone and process.poll() is None:
                    process.wait(timeout=60)
        return time.monotonic() - started

    def stall_reason(self, running_s: float, idle_s: float, step: int) -> str | None:
        """Why the run must end now (past its deadline, or no step for too long), or None."""
        deadline, stall = self.cfg.deadline_s, self.cfg.stall_limit_s
        if deadline is not None and running_s > deadline:
            return f"deadline: still running after {deadline:g} s (step {step} of {self.cfg.steps})"
        if stall is not None and self.finished_at is None and idle_s > stall:
            return f"stalled: no step for {stall:g} s, at step {step} of {self.cfg.steps}"
        return None

    async def stuck_nodes(self) -> dict[str, dict[str, Any]]:
        """Each live node's sidecar (status, view, cut links, majority) and trainer (last step,
        last log record): where a stalled group was stuck."""
        live_sidecars = self.cluster.live()
        live_trainers = [n for n, p in self.trainers.items() if p.poll() is None]
        for node in live_trainers:  # each writes its threads' stacks to its stderr (the SDK)
            self.trainers[node].send_signal(signal.SIGUSR1)
        views = await self.cluster.views(live_sidecars)
        out: dict[str, dict[str, Any]] = {}
        for node in sorted({*live_sidecars, *live_trainers}):
            state: dict[str, Any] = {"sidecar": None, "trainer": None}
            snapshot = views.get(node)
            if snapshot is not None:
                view = snapshot.get("view") or {}
                state["sidecar"] = {
                    "status": snapshot["status"],
                    "epoch": view.get("epoch"),
                    "members": view.get("members"),
                    "down_links": snapshot["topology"]["down"],
                    "majority": snapshot.get("majority"),
                }
            if node in live_trainers:
                state["trainer"] = {
                    "step": self.progress.get(node, {}).get("step"),
                    "last_record": self._last_kind.get(node),
                    "stacks": str(self.trainer_log(node).with_suffix(".stderr")),
                }
            out[node] = state
        return out

    def _observed(self, event: ChurnEvent) -> bool:
        """Whether the moment a kill waits for is in progress now (chaos_lab.kills)."""
        if event.on is None or event.node in self.gone:
            return False
        return self.moments.observed(event.on, event.node)

    async def safe_to_kill(self, node: str) -> bool:
        """A kill that waited for its moment fires only while the rest keep a majority of the
        view (the founder's sidecar's): a step-keyed script is checked before the run
        (chaos_lab.churn.GroupModel), a moment comes when it comes. Hosts "netns": no check
        (the harness cannot reach a node's local API)."""
        if self.star is not None:
            return True
        snapshot = await self.cluster.view(self.cfg.node_names()[0])
        view = (snapshot or {}).get("view") or {}
        members = view.get("members") or []
        live = [m for m in members if m not in self.gone and m != node]
        return bool(members) and len(live) >= len(members) // 2 + 1

    async def apply(self, event: ChurnEvent, step: int, fired: str = "due") -> None:
        if event.event in ("link_down", "link_up"):
            pair = frozenset((event.node, event.peer))
            (self.cut.add if event.event == "link_down" else self.cut.discard)(pair)
        injected = Injected(event, time.time(), step, fired)
        self.injected.append(injected)
        try:
            await self._apply(event)
        finally:
            injected.t_done = time.time()

    async def _apply(self, event: ChurnEvent) -> None:
        match event.event:
            case "join":
                await self.start_node(event.node)
            case "leave":
                self.leave(event.node)
            case "crash":
                self.crash(event.node)
            case "crash_trainer":
                self.crash_trainer(event.node)
            case "crash_sidecar":
                self.crash_sidecar(event.node)
            case "slow_link" if self.star is not None:
                rate = None if event.rate_mbps is None else event.rate_mbps * 1e6
                self.star.set_rate(self.cfg.node_names().index(event.node), rate)
            case "slow_link":
                if event.node not in self.gone:
                    await self.cluster.set_upload_limit(event.node, event.rate_mbps)
            case "link_down" | "link_up" if self.star is not None:
                self.link(event.node, event.peer, up=event.event == "link_up")  # type: ignore[arg-type]
            case "link_down":
                await self.cluster.block(event.node, event.peer)  # type: ignore[arg-type]
            case "link_up":
                await self.cluster.block(event.node, event.peer, unblock=True)  # type: ignore[arg-type]
