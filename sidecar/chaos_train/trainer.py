"""``chaos_train.Trainer``: the public API. A PyTorch training loop becomes elastic by handing
the SDK its model, optimizer, data set and a loss function of one batch; the SDK runs the
steps, averages gradients exactly over whoever is in the group, and moves the state to
joiners. See docs/sdk.md.

Started by ``chaos-train run`` (or in a pod, or by the lab's harness) the trainer reads its
configuration from the environment (``chaos_sidecar.trainer_env``) and trains with its
sidecar's group; started as a plain ``python script.py`` it trains alone, the same steps.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chaos_sidecar import trainer_env
from chaos_sidecar.errors import InputError, UserCodeError
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_sidecar.trainer_env import TrainerEnv
from chaos_train.checkpoint import CheckpointPolicy
from chaos_train.sampler import ElasticSampler
from chaos_train.sdk import ElasticTrainer, NoState, TrainerConfig, env_backend
from chaos_train.sidecar_client import SidecarLost
from chaos_train.state import Replica, digest
from chaos_train.workload import Workload

EXIT_SIDECAR_LOST = 3  # the node's sidecar is gone: its pod (or harness) restarts the node
EXIT_NO_STATE = 4  # no member holds the training state (the job finished, or every holder is gone)


@dataclass(frozen=True)
class StepInfo:
    """What a hook sees after a step: the step just taken (1-based), the global batch's mean
    loss, and this member's rank and the group's size in that step."""

    step: int
    loss: float
    rank: int
    world: int


Hook = Callable[[StepInfo], None]


class Trainer:
    """Elastic data-parallel training of ``model`` with ``optimizer`` on ``dataset``.

    ``loss(batch)`` returns the mean loss of one (micro-)batch: the user's forward pass on
    whatever the data set's samples collate to. ``global_batch`` samples make one step, split
    over the members of the group at that step; ``micro_batch`` bounds how many a member
    feeds through ``loss`` at once (gradient accumulation). ``scheduler`` steps after each
    update; ``scaler`` (an AMP ``GradScaler``) scales the loss and unscales before clipping to
    ``max_grad_norm``. ``state`` names further objects with ``state_dict``/``load_state_dict``
    that travel with the model to joiners (an EMA, a step counter of your own). ``num_workers``
    processes read and collate each step's micro-batches in parallel (as DataLoader workers).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset: Any,
        loss: Callable[[Any], torch.Tensor],
        *,
        global_batch: int,
        micro_batch: int | None = None,
        seed: int = 0,
        scheduler: Any = None,
        scaler: Any = None,
        max_grad_norm: float | None = None,
        state: dict[str, Any] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
    ) -> None:
        objects = dict(state or {})
        for name, obj in (("scheduler", scheduler), ("scaler", scaler)):
            if obj is not None:
                if name in objects:
                    raise InputError(f"state[{name!r}]", f"the name is taken by the {name} argument")
                objects[name] = obj
        self.replica = Replica(model, optimizer, objects)
        self.work = Workload(
            self.replica, dataset, loss, global_batch=global_batch, micro_batch=micro_batch,
            collate_fn=collate_fn, scheduler=scheduler, scaler=scaler, max_grad_norm=max_grad_norm,
            num_workers=num_workers,
        )  # fmt: skip
        self.seed = seed
        self.env = TrainerEnv.from_environ()
        self.step = 0
        self.loss: float | None = None  # the last step's global mean loss; None: no step taken
        self.rank = 0
        self.world = 1
        self._hooks: list[tuple[int, Hook, bool]] = []

    @staticmethod
    def total_steps(default: int) -> int:
        """The step count ``fit`` will train to: ``CHAOS_STEPS`` when the launcher or the lab's
        harness sets it, else ``default``. Size LR schedules with it."""
        return trainer_env.standalone()[0] or default

    @property
    def elastic(self) -> bool:
        """Whether this process trains with a sidecar's group (False: alone)."""
        return self.env is not None

    def every(self, steps: int, hook: Hook, *, on_all: bool = False) -> None:
        """Call ``hook`` after every ``steps``-th step: on one member of the group (rank 0 of
        that step's group), or on every member with ``on_all`` (e.g. to print progress)."""
        if not isinstance(steps, int) or steps <= 0:
            raise InputError("steps", f"expected a positive integer, got {steps!r}")
        self._hooks.append((steps, hook, on_all))

    def fit(self, steps: int) -> int:
        """Train until the group has taken ``steps`` steps (the environment's CHAOS_STEPS, when
        set, overrides it). Returns the step this member ends at. A node that must stop (its
        sidecar is gone, or no member holds the state) exits with a message and a distinct
        status; an exception from the user's code ends it with that traceback."""
        override, alone_log = trainer_env.standalone()
        steps = override or steps
        self.loss = None
        if not isinstance(steps, int) or steps <= 0:
            raise InputError("steps", f"expected a positive integer, got {steps!r}")
        if self.env is None:
            return self._fit_alone(steps, alone_log)
        dump_stacks_on_sigusr1()
        try:
            return self._fit_elastic(self.env, steps)
        except SidecarLost as exc:
            print(f"chaos_train: {exc}; stopping", file=sys.stderr)
            raise SystemExit(EXIT_SIDECAR_LOST) from None
        except NoState as exc:
            print(f"chaos_train: {exc}; stopping", file=sys.stderr)
            raise SystemExit(EXIT_NO_STATE) from None

    def _after_step(self, step: int, loss: float, rank: int, world: int) -> None:
        self.step, self.loss, self.rank, self.world = step, loss, rank, world
        info = StepInfo(step, loss, rank, world)
        for every, hook, on_all in self._hooks:
            if step % every == 0 and (on_all or rank == 0):
                try:
                    hook(info)
                except Exception as exc:
                    raise UserCodeError("hook", f"{getattr(hook, '__name__', hook)} raised {exc!r}") from exc

    def _fit_alone(self, steps: int, log_path: Path | None) -> int:
        """One plain process: the same steps, on the whole global batch each."""
        sampler = ElasticSampler(len(self.work.dataset), self.work.global_batch, self.seed)
        events = EventLog(log_path, "alone")
        try:
            events.write(Kind.JOB, dataset_size=len(self.work.dataset), global_batch=self.work.global_batch,
                   seed=self.seed, steps=steps)  # fmt: skip
            while self.step < steps:
                batch = sampler.batch()
                tail = self.work.apply(self.work.gradients(batch, len(batch), []))
                sampler.advance()
                events.write(Kind.STEP, step=self.step + 1, loss=round(float(tail[0]) / len(batch), 6))
                self._after_step(self.step + 1, float(tail[0]) / len(batch), 0, 1)
            events.write(Kind.DONE, step=self.step, digest=digest(self.replica))
        finally:
            events.close()
        return self.step

    def _fit_elastic(self, env: TrainerEnv, steps: int) -> int:
        config = TrainerConfig(
            node_id=env.node_id,
            sidecar_url=env.sidecar_url,
            snapshot_dir=env.snapshot_dir,
            log_path=env.event_log,
            seed=self.seed,
            backend=env.backend or env_backend(),
            founding=env.founding,
            digest_every=env.digest_every,
            join_mode=env.join_mode,
            grad_log=env.grad_log,
            address=env.address,
            site=env.site,
            checkpoint=CheckpointPolicy(env.checkpoint_dir, env.checkpoint_every, env.checkpoint_keep)
            if env.checkpoint_dir
            else None,
        )
        engine = ElasticTrainer(config, self.work, after_step=self._after_step)
        engine.log(
            Kind.JOB, dataset_size=len(self.work.dataset), global_batch=self.work.global_batch,
            seed=self.seed, steps=steps, state_bytes=self.work.grad_bytes,
        )  # fmt: skip
        engine.run(steps)
        self.step = max(engine.step, 0)
        return self.step


def dump_stacks_on_sigusr1() -> None:
    """``kill -USR1`` makes an elastic trainer write every thread's stack to its stderr (a
    group that stops stepping can then say where each member waits: the lab's harness does it
    before it ends a stalled run). Not when the user's script handles SIGUSR1 itself."""
    if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
