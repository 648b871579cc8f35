"""Kills where it hurts: what a trainer is doing, read from its event log, live and after the run.

A trainer logs the start and the end of the moments a kill can hurt most:

- ``pull_started`` .. ``pulled`` / ``reconcile_failed``: its state transfer (it is the joiner;
  the record names the sources);
- ``regroup_started`` .. ``regroup``: a regroup (``epoch`` None: the node's first one, while it
  starts or waits to be admitted);
- ``checkpoint_started`` .. ``checkpoint`` / ``checkpoint_failed`` / ``checkpoint_skipped``:
  a checkpoint write (on its writer thread).

:class:`Moments` follows those intervals while the job runs (the harness fires a churn event
``{"on": "pull"|"serve"|"regroup"|"checkpoint", ...}`` when it observes its moment), and
:func:`classify` decides afterwards, from the complete logs, what was in progress at the
instant of each kill: the trigger only aims, the logs say where the kill landed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

KILLS = ("crash", "crash_trainer", "crash_sidecar")
PROCESS = {"crash": "both", "crash_trainer": "trainer_only", "crash_sidecar": "sidecar_only"}
# where a kill can land, most specific first (a kill counts in the first that applies)
MOMENTS = ("mid_transfer_joiner", "mid_transfer_source", "mid_checkpoint", "mid_regroup", "mid_start",
           "mid_step")  # fmt: skip
# the categories a chaos run must land (each at least --min-landed times)
REQUIRED = ("mid_transfer_joiner", "mid_transfer_source", "mid_regroup", "mid_checkpoint",
            "sidecar_only", "trainer_only", "both")  # fmt: skip
# what a trigger aims at: "pull" the node's own transfer, "serve" a transfer it is a source of
TARGET = {"pull": "mid_transfer_joiner", "serve": "mid_transfer_source", "regroup": "mid_regroup",
          "checkpoint": "mid_checkpoint"}  # fmt: skip

_ENDS = {
    "pull": ("pulled", "reconcile_failed"),
    "regroup": ("regroup",),
    "checkpoint": ("checkpoint", "checkpoint_failed", "checkpoint_skipped"),
}
_STARTS = {"pull_started": "pull", "regroup_started": "regroup", "checkpoint_started": "checkpoint"}
# records after which a trainer does nothing more (its open moments end there)
_FINAL = ("done", "left", "job_finished", "no_state", "sidecar_lost", "user_error")
WATCHED = tuple(_STARTS) + tuple(e for ends in _ENDS.values() for e in ends) + _FINAL + ("start",)


@dataclass
class Interval:
    kind: str  # "pull", "regroup" or "checkpoint"
    node: str
    start: float
    end: float = math.inf  # inf: still open
    detail: dict[str, Any] = field(default_factory=dict)

    def covers(self, t: float) -> bool:
        return self.start <= t <= self.end


@dataclass
class Moments:
    """Every node's pull, regroup and checkpoint intervals, fed record by record."""

    intervals: list[Interval] = field(default_factory=list)
    _open: dict[tuple[str, str], Interval] = field(default_factory=dict)

    def feed(self, record: dict[str, Any]) -> None:
        kind, node, t = record["type"], record["node"], record["t"]
        if kind in _STARTS:
            moment = _STARTS[kind]
            self._close(node, moment, t)  # a new one starts: the old one is over (never nested)
            detail = {k: v for k, v in record.items() if k not in ("t", "node", "type")}
            interval = Interval(moment, node, t, detail=detail)
            self._open[(node, moment)] = interval
            self.intervals.append(interval)
            return
        for moment, ends in _ENDS.items():
            if kind in ends:
                end = t - record.get("load_s", 0.0) if kind == "pulled" else t  # then it loads
                self._close(node, moment, end)
        if kind in _FINAL or kind == "start":  # "start": a new process of that node
            for moment in _ENDS:
                self._close(node, moment, t)

    def died(self, node: str, t: float) -> None:
        """The node was killed at ``t`` (its trainer, its sidecar or both): whatever it was
        doing ends there (a trainer whose sidecar died may crash without another record)."""
        for moment in _ENDS:
            self._close(node, moment, t)

    def _close(self, node: str, moment: str, t: float) -> None:
        interval = self._open.pop((node, moment), None)
        if interval is not None:
            interval.end = max(interval.start, t)

    def open(self, node: str, moment: str) -> Interval | None:
        return self._open.get((node, moment))

    def observed(self, on: str, node: str) -> bool:
        """Whether ``node`` is in the moment ``on`` now (as far as the logs read so far say)."""
        if on == "pull":
            return self.open(node, "pull") is not None
        if on == "serve":
            pulls = [i for (_, moment), i in self._open.items() if moment == "pull"]
            return any(node in (i.detail.get("sources") or []) for i in pulls)
        if on == "checkpoint":
            return self.open(node, "checkpoint") is not None
        if on == "regroup":  # a regroup of a group it trained in, not a transfer (that is pull/serve)
            regroup = self.open(node, "regroup")
            return (regroup is not None and regroup.detail.get("epoch") is not None
                    and not self.observed("pull", node) and not self.observed("serve", node))  # fmt: skip
        raise ValueError(f"unknown moment {on!r}")


def moment_at(moments: Moments, node: str, t: float, first_record: float = math.inf) -> str:
    """Where a kill of ``node`` at ``t`` landed (one of MOMENTS), from complete intervals
    (``first_record``: when its trainer wrote its first record)."""
    mine = [i for i in moments.intervals if i.node == node and i.covers(t)]
    if any(i.kind == "pull" for i in mine):
        return "mid_transfer_joiner"
    serving = [i for i in moments.intervals if i.kind == "pull" and i.node != node and i.covers(t)]
    if any(node in (i.detail.get("sources") or []) for i in serving):
        return "mid_transfer_source"
    if any(i.kind == "checkpoint" for i in mine):
        return "mid_checkpoint"
    regroups = [i for i in mine if i.kind == "regroup"]
    if any(i.detail.get("epoch") is not None for i in regroups):
        return "mid_regroup"
    if regroups or t < first_record:
        return "mid_start"  # starting, or waiting for its first group
    return "mid_step"


def classify(kills: list[dict[str, Any]], trainer: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each kill (``node``, ``event``, ``t``: when the signal went out) with ``landed`` (a moment
    of MOMENTS) and ``process`` (sidecar_only, trainer_only or both), decided from the
    trainers' complete logs: the intervals in progress at ``t``."""
    moments = Moments()
    deaths = sorted((k["t"], k["node"]) for k in kills)
    records = sorted(trainer, key=lambda r: r["t"])
    di = 0
    for record in records:
        while di < len(deaths) and deaths[di][0] <= record["t"]:
            moments.died(deaths[di][1], deaths[di][0])
            di += 1
        if record["type"] in WATCHED:
            moments.feed(record)
    for t, node in deaths[di:]:
        moments.died(node, t)
    # a trainer that stopped without a final record (its sidecar was killed and it crashed):
    # its open intervals end at its last record
    last: dict[str, float] = defaultdict(float)
    first: dict[str, float] = {}
    for record in records:
        last[record["node"]] = record["t"]
        first.setdefault(record["node"], record["t"])
    for interval in moments.intervals:
        if math.isinf(interval.end):
            interval.end = max(interval.start, last[interval.node])
    return [
        {
            **k,
            "landed": moment_at(moments, k["node"], k["t"], first.get(k["node"], math.inf)),
            "process": PROCESS[k["event"]],
        }
        for k in kills
    ]


def landed_counts(classified: list[dict[str, Any]]) -> dict[str, int]:
    """``kills_landed``: one count per moment and per process kind (every category listed)."""
    counts = dict.fromkeys((*MOMENTS, *PROCESS.values()), 0)
    for kill in classified:
        counts[kill["landed"]] += 1
        counts[kill["process"]] += 1
    return counts


def missing(counts: dict[str, int], at_least: int) -> dict[str, int]:
    """The required categories that landed fewer than ``at_least`` times, with their counts."""
    return {c: counts.get(c, 0) for c in REQUIRED if counts.get(c, 0) < at_least}
