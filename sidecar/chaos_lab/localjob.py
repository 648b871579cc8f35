"""``chaos-train local``: the main job on one machine, with real processes.

Each node is a sidecar process plus a trainer process (``python -m chaos_train.worker``);
trainers rendezvous per view epoch through a shared directory and pull state through their
sidecars. The churn script is applied at training steps; progress is read from the
trainers' logs. At the end the logs are checked (identical replicas, every sample exactly
once) and summarised.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_lab.churn import HEALING, ChurnEvent
from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.membership.machine import Settings

EXIT_NO_STATE = 4  # chaos_train.worker: a joiner found no member holding state (the job was done)
STRAGGLER_S = 20.0  # after the group's last step, how long a late trainer may take to finish
POLL_S = 0.1  # how often the trainers' logs are read: churn lands within about 3 steps
# A group that has not stepped for this long may be waiting for a link to heal: the next
# scripted healing event fires now instead of at a step that may never come. Longer than a
# regroup after a crash (a failure timeout) plus a state transfer on a slowed link.
HEAL_AFTER_S = 5.0


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


def take_due(pending: list[ChurnEvent], step: int, elapsed_s: float, idle_s: float) -> ChurnEvent | None:
    """Pop the next event to apply: the first pending one once it is due; or, when the group
    has not stepped for HEAL_AFTER_S, the first healing one ahead of its turn (its step may
    never come: the group may be waiting for exactly that link)."""
    if pending and pending[0].due(step, elapsed_s):
        return pending.pop(0)
    if idle_s >= HEAL_AFTER_S:
        for i, event in enumerate(pending):
            if event.event in HEALING:
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
    hidden: int | None = None  # the built-in model's width (state size); None: the worker's default
    transfer_policy: str = "planned"
    grad_log: int | None = None  # overlap: the members' gradient log bound; None: the SDK's default
    upload_limits_mbps: dict[str, float] = field(default_factory=dict)  # node -> per-link limit
    deadline_s: float | None = None  # the whole run, from the first start (None: no limit)
    stall_limit_s: float | None = None  # no new step for this long ends the run (None: no limit)


@dataclass
class Injected:
    event: ChurnEvent
    t: float
    step: int


@dataclass
class LocalJob:
    cfg: JobConfig
    trainers: dict[str, subprocess.Popen] = field(default_factory=dict)
    injected: list[Injected] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    stragglers: list[str] = field(default_factory=list)
    finished_at: float | None = None
    no_majority: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> its sidecar's record
    _last_line: dict[str, str] = field(default_factory=dict)  # trainer logs: parsed only on a stall
    _sidecar_offsets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        out = self.cfg.out
        if out.exists():
            shutil.rmtree(out)
        (out / "rendezvous").mkdir(parents=True)
        (out / "logs").mkdir()
        # trainers load the CPU: a failure timeout of 1 s avoids false suspicion on 2 cores,
        # and five heartbeats per timeout are plenty (each costs the trainers' cores)
        self.cluster = LocalCluster(out / "sidecars", settings=Settings(0.2, 1.0, 0.05))
        self._offsets: dict[str, int] = {}
        self.progress: dict[str, dict[str, Any]] = {}
        self.done: set[str] = set()  # trainers that logged the last step

    # --- processes ------------------------------------------------------------------------------

    async def start_node(self, node: str, *, seed: bool = False, founding: bool = False) -> None:
        snapshots = self.cfg.out / "snapshots" / node
        snapshots.mkdir(parents=True, exist_ok=True)
        extra = ["--snapshot-dir", str(snapshots)] + ([] if founding else ["--defer-join"])
        if node in self.cfg.upload_limits_mbps:
            extra += ["--upload-limit-mbps", str(self.cfg.upload_limits_mbps[node])]
        sidecar = await self.cluster.start(node, seed=seed, extra=extra)
        cmd = [
            sys.executable, "-m", "chaos_train.worker", "--node-id", node,
            "--sidecar-url", sidecar.local_url, "--snapshot-dir", str(snapshots),
            "--rendezvous-dir", str(self.cfg.out / "rendezvous"),
            "--log", str(self.trainer_log(node)), "--steps", str(self.cfg.steps),
            "--seed", str(self.cfg.seed), "--samples", str(self.cfg.samples),
            "--global-batch", str(self.cfg.global_batch), "--digest-every", str(self.cfg.digest_every),
            "--join-mode", self.cfg.join_mode, "--transfer-policy", self.cfg.transfer_policy,
        ]  # fmt: skip
        if self.cfg.hidden is not None:
            cmd += ["--hidden", str(self.cfg.hidden)]
        if self.cfg.grad_log is not None:
            cmd += ["--grad-log", str(self.cfg.grad_log)]
        if founding:
            cmd.append("--founding")
        stderr = (self.cfg.out / "logs" / f"{node}.trainer.stderr").open("ab")
        self.trainers[node] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)

    def trainer_log(self, node: str) -> Path:
        return self.cfg.out / "logs" / f"{node}.trainer.jsonl"

    def crash(self, node: str) -> None:
        self.trainers[node].send_signal(signal.SIGKILL)
        self.trainers[node].wait()
        self.cluster.kill(node)
        self.gone.add(node)

    def crash_trainer(self, node: str) -> None:
        """Only the trainer dies; its sidecar notices the silence and leaves for it."""
        self.trainers[node].send_signal(signal.SIGKILL)
        self.trainers[node].wait()
        self.gone.add(node)

    def crash_sidecar(self, node: str) -> None:
        """Only the sidecar dies; the group removes the node and its trainer stops."""
        self.cluster.kill(node)
        self.gone.add(node)

    def leave(self, node: str) -> None:
        self.trainers[node].send_signal(signal.SIGTERM)  # the trainer leaves through its sidecar
        self.gone.add(node)

    # --- progress -------------------------------------------------------------------------------

    def poll_logs(self) -> None:
        for node in self.trainers:
            last_step = None  # only the newest step record is shown: parse just that one
            for line in new_lines(self.trainer_log(node), self._offsets, node):
                self._last_line[node] = line
                if '"type": "step"' in line:
                    last_step = line
                elif '"type": "done"' in line:
                    self.done.add(node)
            if last_step is not None:
                self.progress[node] = json.loads(last_step)

    def poll_majority(self) -> None:
        """Which sidecars reach no majority of their view, from their event logs."""
        for node_id, node in self.cluster.nodes.items():
            for line in new_lines(node.log_path, self._sidecar_offsets, node_id):
                if '"type":"no_majority"' in line:
                    self.no_majority[node_id] = json.loads(line)
                elif '"type":"no_majority_over"' in line:
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
            return await self._run()
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
            await self.cluster.wait_agreed(set(names), 60)
            pending = list(self.cfg.churn)
            note = "training"
            last_print = 0.0
            # the stall clocks start at the first step: before it the trainers are starting up
            agreed_at = progress_at = healed_at = time.monotonic()
            progress_step = 0
            while True:
                self.poll_logs()
                step = self.current_step()
                now = time.monotonic()
                if step > progress_step or progress_step == 0:
                    progress_step, progress_at = step, now
                idle_s = now - max(progress_at, healed_at)
                while (event := take_due(pending, step, now - agreed_at, idle_s)) is not None:
                    early = not event.due(step, now - agreed_at)
                    await self.apply(event, step)
                    note = ("stalled, healing early: " if early else "event: ") + event.label()
                    if early:
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
                await asyncio.sleep(POLL_S)
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
                last = self._last_line.get(node)
                state["trainer"] = {
                    "step": self.progress.get(node, {}).get("step"),
                    "last_record": json.loads(last)["type"] if last else None,
                }
            out[node] = state
        return out

    async def apply(self, event: ChurnEvent, step: int) -> None:
        self.injected.append(Injected(event, time.time(), step))
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
            case "slow_link":
                if event.node not in self.gone:
                    await self.cluster.set_upload_limit(event.node, event.rate_mbps)
            case "link_down":
                await self.cluster.block(event.node, event.peer)  # type: ignore[arg-type]
            case "link_up":
                await self.cluster.block(event.node, event.peer, unblock=True)  # type: ignore[arg-type]
