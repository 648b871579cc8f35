"""What to do about a job's pods: a pure decision from (spec, observed pods).

The group, not the operator, chooses who leaves on scale-in: the operator only asks for a
smaller size (status) and deletes pods whose sidecar reported ``released`` in its report
annotation. Failed pods are replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from chaos_operator.domain.builders import INDEX_LABEL, REPORT_ANNOTATION
from chaos_operator.domain.spec import JobSpec


@dataclass(frozen=True)
class PodPlan:
    create: list[int] = field(default_factory=list)  # indices to create
    delete: list[str] = field(default_factory=list)  # pod names to delete (released or failed)
    waiting_for_release: int = 0  # scale-in the group has not carried out yet
    failed: list[str] = field(default_factory=list)
    failures: int = 0  # failed pods over the job's life, this reconcile's included
    retry_after_s: float = 0.0  # replacements held back by the backoff
    exhausted: bool = False  # more failures than runPolicy.backoffLimit: give up


BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0


def backoff_s(failures: int) -> float:
    """Delay before replacing pods after the ``failures``-th failure (doubling, capped)."""
    return 0.0 if failures <= 0 else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))


def report_of(pod: dict[str, Any]) -> dict[str, Any]:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(REPORT_ANNOTATION)
    if not raw:
        return {}
    try:
        report = json.loads(raw)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def _index(pod: dict[str, Any]) -> int:
    try:
        return int(pod["metadata"]["labels"][INDEX_LABEL])
    except (KeyError, ValueError, TypeError):
        return -1


def plan_pods(
    job: JobSpec,
    pods: list[dict[str, Any]],
    *,
    failures: int = 0,
    last_failure_at: float = 0.0,
    now: float = 0.0,
) -> PodPlan:
    """Decide creations and deletions. ``failures``/``last_failure_at`` come from the job's
    status (failed pods seen before), ``now`` from the caller's clock."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    failed = [p["metadata"]["name"] for p in live if (p.get("status") or {}).get("phase") == "Failed"]
    released = [p["metadata"]["name"] for p in live if report_of(p).get("released")]
    gone = set(failed) | set(released)
    active = [p for p in live if p["metadata"]["name"] not in gone]
    total_failures = failures + len(failed)
    if failed:
        last_failure_at = now
    delete = sorted(gone)
    if total_failures > job.backoff_limit:
        return PodPlan(delete=delete, failed=failed, failures=total_failures, exhausted=True)
    desired = job.desired
    if len(active) > desired:
        return PodPlan(delete=delete, failed=failed, failures=total_failures,
                       waiting_for_release=len(active) - desired)  # fmt: skip
    wait = last_failure_at + backoff_s(total_failures) - now if total_failures else 0.0
    if wait > 0:
        return PodPlan(delete=delete, failed=failed, failures=total_failures, retry_after_s=wait)
    used = {_index(p) for p in live}
    create: list[int] = []
    index = 0
    while len(create) < desired - len(active):
        if index not in used:
            create.append(index)
        index += 1
    return PodPlan(create=create, delete=delete, failed=failed, failures=total_failures)


def build_status(job: JobSpec, pods: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold the sidecars' reports into the job's status (the newest view wins)."""
    reports = [report_of(p) for p in pods]
    views = [r["view"] for r in reports if isinstance(r.get("view"), dict) and "epoch" in r["view"]]
    view = max(views, key=lambda v: v["epoch"], default=None)
    ready = sum(
        1
        for p in pods
        if (p.get("status") or {}).get("phase") == "Running"
        and all(c.get("ready") for c in (p.get("status") or {}).get("containerStatuses") or [{}])
    )
    steps = [r["step"] for r in reports if isinstance(r.get("step"), int)]
    failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
    active = len(pods) - failed
    if failed:
        phase = "Degraded"
    elif active != job.desired:
        phase = "Scaling"
    elif ready == job.desired and job.desired:
        phase = "Running"
    else:
        phase = "Pending"
    status: dict[str, Any] = {
        "phase": phase,
        "replicas": active,
        "readyReplicas": ready,
        "selector": f"chaostraining.io/job={job.name}",
    }
    if view is not None:
        status["view"] = {k: view[k] for k in ("epoch", "members", "coordinator") if k in view}
    if steps:
        status["step"] = max(steps)
    return status
