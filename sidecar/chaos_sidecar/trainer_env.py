"""The trainer's environment: the one contract between whoever starts a trainer (the pod the
operator builds, ``chaos-train run``, the lab's harness) and the SDK that reads it.

A trainer gets its whole configuration from these variables; a script needs no flags to
run elastic. Without ``CHAOS_SIDECAR_URL`` the SDK trains as one plain process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from chaos_sidecar.errors import InputError

NODE_ID = "CHAOS_NODE_ID"  # this node's id in the group (in a pod: the pod's name)
SIDECAR_URL = "CHAOS_SIDECAR_URL"  # the local sidecar's base URL (loopback)
SNAPSHOT_DIR = "CHAOS_SNAPSHOT_DIR"  # the snapshot volume shared with the sidecar
EVENT_LOG = "CHAOS_EVENT_LOG"  # optional: where the trainer appends its event log (JSON lines)
ADDRESS = "CHAOS_ADDRESS"  # optional: the host gloo binds to (default: the sidecar's advertised host)
FOUNDING = "CHAOS_FOUNDING"  # "1": member of the first view, starts from the script's initial state
STEPS = "CHAOS_STEPS"  # optional: overrides the step count the script asks for (the lab's harness)
JOIN_MODE = "CHAOS_JOIN_MODE"  # "blocking" (default) or "overlap"
BACKEND = "CHAOS_BACKEND"  # optional: "gloo" or "nccl" (default: nccl where CUDA is present)
DIGEST_EVERY = "CHAOS_DIGEST_EVERY"  # steps between replica digests in the event log (0: off)
GRAD_LOG = "CHAOS_GRAD_LOG"  # overlap joins: averaged gradients the members keep for replay
# durable checkpoints (optional): a directory every member reaches, every N steps, keep K
CHECKPOINT_DIR = "CHAOS_CHECKPOINT_DIR"
CHECKPOINT_EVERY = "CHAOS_CHECKPOINT_EVERY"
CHECKPOINT_KEEP = "CHAOS_CHECKPOINT_KEEP"
# optional: the site this node is at (nodes on one fast network); default: its party, if any
SITE = "CHAOS_SITE"
SITE_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")  # a DNS label; dots allowed

JOIN_MODES = ("blocking", "overlap")
BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class TrainerEnv:
    node_id: str
    sidecar_url: str
    snapshot_dir: Path
    event_log: Path | None = None
    address: str | None = None
    founding: bool = False
    steps: int | None = None
    join_mode: str = "blocking"
    backend: str | None = None
    digest_every: int = 10
    grad_log: int = 128
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 100
    checkpoint_keep: int = 3
    site: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TrainerEnv | None:
        """The trainer's configuration, or None when no sidecar is named (one plain process)."""
        env = os.environ if environ is None else environ
        url = env.get(SIDECAR_URL, "").strip()
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(SIDECAR_URL, f"expected http://HOST:PORT, got {url!r}")
        node = env.get(NODE_ID, "").strip()
        if not node:
            raise InputError(NODE_ID, f"required when {SIDECAR_URL} is set")
        snapshots = env.get(SNAPSHOT_DIR, "").strip()
        if not snapshots:
            raise InputError(SNAPSHOT_DIR, f"required when {SIDECAR_URL} is set")
        join_mode = env.get(JOIN_MODE, "blocking").strip() or "blocking"
        if join_mode not in JOIN_MODES:
            raise InputError(JOIN_MODE, f"expected one of {JOIN_MODES}, got {join_mode!r}")
        backend = env.get(BACKEND, "").strip() or None
        if backend is not None and backend not in BACKENDS:
            raise InputError(BACKEND, f"expected one of {BACKENDS}, got {backend!r}")
        founding = env.get(FOUNDING, "0").strip()
        if founding not in ("0", "1", ""):
            raise InputError(FOUNDING, f"expected 0 or 1, got {founding!r}")
        log = env.get(EVENT_LOG, "").strip()
        grad_log = _count(env, GRAD_LOG, minimum=1)
        checkpoints = env.get(CHECKPOINT_DIR, "").strip()
        every = _count(env, CHECKPOINT_EVERY, minimum=1)
        keep = _count(env, CHECKPOINT_KEEP, minimum=1)
        digest = _count(env, DIGEST_EVERY, minimum=0)
        return cls(
            node_id=node,
            sidecar_url=url.rstrip("/"),
            snapshot_dir=Path(snapshots),
            event_log=Path(log) if log else None,
            address=env.get(ADDRESS, "").strip() or None,
            founding=founding == "1",
            steps=_count(env, STEPS, minimum=1),
            join_mode=join_mode,
            backend=backend,
            digest_every=10 if digest is None else digest,
            grad_log=128 if grad_log is None else grad_log,
            checkpoint_dir=Path(checkpoints) if checkpoints else None,
            checkpoint_every=100 if every is None else every,
            checkpoint_keep=3 if keep is None else keep,
            site=site_name(env.get(SITE, "").strip() or None, SITE),
        )

    def to_environ(self) -> dict[str, str]:
        """The variables that make ``from_environ`` return this configuration."""
        out = {
            NODE_ID: self.node_id,
            SIDECAR_URL: self.sidecar_url,
            SNAPSHOT_DIR: str(self.snapshot_dir),
            FOUNDING: "1" if self.founding else "0",
            JOIN_MODE: self.join_mode,
            DIGEST_EVERY: str(self.digest_every),
            GRAD_LOG: str(self.grad_log),
        }
        if self.event_log is not None:
            out[EVENT_LOG] = str(self.event_log)
        if self.address is not None:
            out[ADDRESS] = self.address
        if self.steps is not None:
            out[STEPS] = str(self.steps)
        if self.backend is not None:
            out[BACKEND] = self.backend
        if self.checkpoint_dir is not None:
            out[CHECKPOINT_DIR] = str(self.checkpoint_dir)
            out[CHECKPOINT_EVERY] = str(self.checkpoint_every)
            out[CHECKPOINT_KEEP] = str(self.checkpoint_keep)
        if self.site is not None:
            out[SITE] = self.site
        return out


def site_name(value: str | None, field: str) -> str | None:
    """A site's name, checked: lower-case letters, digits, '-' and '.', at most 63."""
    if value is not None and not SITE_NAME.fullmatch(value):
        raise InputError(field, f"expected a name of lower-case letters, digits, '-' and '.' "
                                f"(at most 63), got {value!r}")  # fmt: skip
    return value


def standalone(environ: Mapping[str, str] | None = None) -> tuple[int | None, Path | None]:
    """What a trainer with no sidecar still reads: the step override and its event log."""
    env = os.environ if environ is None else environ
    log = env.get(EVENT_LOG, "").strip()
    return _count(env, STEPS, minimum=1), Path(log) if log else None


def _count(env: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise InputError(name, f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise InputError(name, f"expected at least {minimum}, got {value}")
    return value
