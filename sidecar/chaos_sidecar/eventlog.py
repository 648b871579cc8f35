"""The event log: the contract between the processes that write it and the lab that reads it.

A sidecar started with ``--log`` and a trainer given an event log append one JSON object a
line: ``{"v": VERSION, "t": wall-clock seconds, "node": id, "type": kind, ...fields}``. The
kinds are :class:`Kind`; adding one is one line there. Every writer is an :class:`EventLog`;
every reader parses through :func:`parse` (or :func:`read`), which rejects a record of another
version or of a kind this code does not know, naming the field, rather than misreading it.
"""

from __future__ import annotations

import enum
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from chaos_sidecar.errors import InputError

VERSION = 1  # raise when a field changes meaning; readers refuse other versions


class Kind(enum.StrEnum):
    """Every kind of record, grouped by the process that writes it."""

    # the sidecar: its durable state, membership (adapters.runtime), its trainer's lease, its
    # secret file
    RECOVERED = "recovered"
    STATE_LOST = "state_lost"
    OBSERVED = "observed"
    DECIDED = "decided"
    VOTED = "voted"
    INSTALLED = "installed"
    TOPOLOGY = "topology"
    NO_MAJORITY = "no_majority"
    NO_MAJORITY_OVER = "no_majority_over"
    ERROR = "error"
    TRAINER_LOST = "trainer_lost"
    SECRET_ROTATION = "secret_rotation"
    SECRET_FILE_LOOSE = "secret_file_loose"
    CLOCK_SKEW = "clock_skew"  # a peer's clock off by more than the signatures' window
    PARTY_KEY_REFUSED = "party_key_refused"  # a peer refused our party key for its window
    PARTY_RELOAD = "party_reload"  # a changed party key file or admission policy, taken or not
    ADVERTISE_CHECK = "advertise_check"  # whether the advertised URL reaches this sidecar
    # the trainer, on its own or in the elastic engine: the job and its steps
    JOB = "job"
    START = "start"
    JOIN_REQUESTED = "join_requested"
    SHARE = "share"
    STEP = "step"
    DIGEST = "digest"
    DONE = "done"
    LEFT = "left"
    LEAVING = "leaving"
    JOB_FINISHED = "job_finished"
    NO_STATE = "no_state"
    SIDECAR_LOST = "sidecar_lost"
    USER_ERROR = "user_error"
    COLLECTIVE_FAILED = "collective_failed"
    WRITE_FAILED = "write_failed"
    # the elastic engine: regroups, transfers, overlap joins
    WAITING_FOR_VIEW = "waiting_for_view"
    RENDEZVOUS_FAILED = "rendezvous_failed"
    RECONCILE_FAILED = "reconcile_failed"
    WARNING = "warning"
    REGROUP = "regroup"
    POSTED_GROUP_SKIPPED = "posted_group_skipped"
    RESUMED = "resumed"
    PULLED = "pulled"
    OVERLAP_START = "overlap_start"
    CAPTURE_WAIT = "capture_wait"
    POSTED_AHEAD = "posted_ahead"
    OVERLAP_DECLINED = "overlap_declined"
    OVERLAP_CAUGHT_UP = "overlap_caught_up"
    ENTERED = "entered"
    # the start of a transfer, a regroup or a checkpoint write (the chaos harness aims kills at them)
    PULL_STARTED = "pull_started"
    REGROUP_STARTED = "regroup_started"
    CHECKPOINT_STARTED = "checkpoint_started"
    CHECKPOINT_SKIPPED = "checkpoint_skipped"
    # checkpoints
    CHECKPOINT = "checkpoint"
    CHECKPOINT_FAILED = "checkpoint_failed"
    CHECKPOINT_REFUSED = "checkpoint_refused"
    # the lab's fixed-group baseline worker
    LOADED = "loaded"
    GROUP_READY = "group_ready"
    STOPPED = "stopped"


class Record(Mapping[str, Any]):
    """One checked record: its header typed (``kind``, ``t``, ``node``), a kind's own fields
    by name (``record["step"]``); as a mapping it is the object as written."""

    __slots__ = ("_raw", "kind", "node", "t")

    def __init__(self, raw: Mapping[str, Any], where: str = "event log") -> None:
        """``raw`` as :class:`EventLog` writes it; ``where`` names it in errors."""
        if raw.get("v") != VERSION:
            raise InputError(
                f"{where}.v", f"version {raw.get('v')!r}; this reader knows version {VERSION} only"
            )
        try:
            self.kind = Kind(raw.get("type"))
        except ValueError:
            raise InputError(f"{where}.type", f"unknown record kind {raw.get('type')!r}") from None
        t, node = raw.get("t"), raw.get("node")
        if not isinstance(t, int | float) or isinstance(t, bool):
            raise InputError(f"{where}.t", f"a time in seconds, not {t!r}")
        if not isinstance(node, str):
            raise InputError(f"{where}.node", f"a node id, not {node!r}")
        self.t = float(t)
        self.node = node
        self._raw = dict(raw)

    def __getitem__(self, name: str) -> Any:
        return self._raw[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"Record({self._raw!r})"


class EventLog:
    """Appends this process's records to ``path`` (nothing when it is None). Thread-safe: the
    trainer writes from its loop and from its writer and group-building threads."""

    def __init__(self, path: Path | None, node: str) -> None:
        self._file: IO[str] | None = path.open("a", buffering=1) if path else None
        self.node = node
        self._lock = threading.Lock()

    def write(self, kind: Kind, **fields: Any) -> None:
        if self._file is None:
            return
        line = json.dumps(
            {"v": VERSION, "t": time.time(), "node": self.node, "type": Kind(kind).value, **fields},
            separators=(",", ":"),
        )
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def parse(line: str, where: str = "event log") -> Record:
    """One line as written by :class:`EventLog`; ``where`` names it in errors."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(where, f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InputError(where, "a record is a JSON object")
    return Record(raw, where)


def read(paths: Iterable[Path]) -> list[Record]:
    """Every record of the files that exist, in time order. A last line without its newline
    is still being written (the lab reads logs of running processes): it is left out."""
    records = []
    for path in paths:
        if path.exists():
            complete = path.read_text().split("\n")[:-1]
            records += [parse(line, f"{path}:{n}") for n, line in enumerate(complete, 1) if line.strip()]
    records.sort(key=lambda r: r.t)
    return records
