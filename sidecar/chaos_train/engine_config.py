"""The elastic engine's settings, its own exceptions and the constants its parts share
(see chaos_train.sdk for how the parts fit together)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from chaos_sidecar.errors import TrainingError
from chaos_train.checkpoint import CheckpointPolicy

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
# snapshot names: a kind (prefix) and a number. One of a kind written or pulled retires the
# older ones of that kind on the node (see chaos_sidecar.transfer.snapshot.retire_snapshots):
# whoever pulled those did so in a regroup or an overlap join that is over
JOIN_SNAPSHOT = "state-e"  # a blocking join's, per epoch
OVERLAP_SNAPSHOT = "state-s"  # an overlap join's, per step
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
    address: str | None = None  # this node's host for gloo and the stores it hosts; None: the
    # host its sidecar advertises to peers
    checkpoint: CheckpointPolicy | None = None  # durable checkpoints (see chaos_train.checkpoint)
    site: str | None = None  # this node's site (see chaos_train.sites); None: its party, if any


def log_keeper(members: list[str], step: int) -> str:
    """The member that logs the averaged gradient of ``step`` during an overlap join."""
    ordered = sorted(members)
    return ordered[step % len(ordered)]


def env_backend() -> str:
    return "nccl" if torch.cuda.is_available() and os.environ.get("CHAOS_BACKEND") != "gloo" else "gloo"
