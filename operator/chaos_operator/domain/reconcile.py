"""What to do about a job's pods: a pure decision from (spec, observed pods).

The group, not the operator, chooses who leaves on scale-in: the operator only asks for a
smaller size (status) and deletes pods whose sidecar reported ``released`` in its report
annotation. Failed pods are replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chaos_operator.domain.builders import INDEX_LABEL, JOB_LABEL, REPORT_ANNOTATION, is_pod_name
from chaos_operator.domain.spec import JobSpec
from chaos_sidecar.errors import InputError
from chaos_sidecar.pod_contract import parse_report

MAX_LAST_EVENTS = 32


@dataclass(frozen=True)
class PodPlan:
    create: list[int] = field(default_factory=list)  # indices to create
    delete: list[str] = field(default_factory=list)  # pod names to delete (released or failed)
    waiting_for_release: int = 0  # scale-in the group has not carried out yet
    failed: list[str] = field(default_factory=list)
    failures: int = 0  # failed pods over the job's life, this reconcile's included
    retry_after_s: float = 0.0  # replacements held back by the backoff
    exhausted: bool = False  # more failures than runPolicy.backoffLimit: give up
    # the pods to create found a group (CHAOS_FOUNDING=1, the lowest of them seeds): no view was
    # reported yet, or no pod of the job is left to join (every member died: the new group
    # starts from the newest checkpoint, if spec.checkpoint keeps any)
    founding: bool = False
    # no pod of the job is left, but the last view held other parties' nodes: the pods to
    # create join them through spec.federation.peers instead of founding a second group
    rejoin_through_peers: list[str] = field(default_factory=list)

    @property
    def seed(self) -> int | None:
        return min(self.create) if self.founding and self.create else None


BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0


def backoff_s(failures: int) -> float:
    """Delay before replacing pods after the ``failures``-th failure (doubling, capped)."""
    return 0.0 if failures <= 0 else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))


def checked_report(pod: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The pod's report and, when it is refused, why (not JSON, too large, another job's or
    another pod's, badly typed): a refused report counts as none."""
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(REPORT_ANNOTATION)
    if not raw:
        return {}, None
    try:
        job = (meta.get("labels") or {}).get(JOB_LABEL, "")
        return parse_report(raw, job=job, pod=meta.get("name", "")), None
    except InputError as exc:
        return {}, str(exc)


def report_of(pod: dict[str, Any]) -> dict[str, Any]:
    return checked_report(pod)[0]


def bad_reports(pods: list[dict[str, Any]]) -> dict[str, str]:
    """Pod name -> why its report is refused."""
    out = {}
    for pod in pods:
        problem = checked_report(pod)[1]
        if problem is not None:
            out[pod["metadata"]["name"]] = problem
    return out


def _index(pod: dict[str, Any]) -> int:
    try:
        return int(pod["metadata"]["labels"][INDEX_LABEL])
    except (KeyError, ValueError, TypeError):
        return -1


def outside_members(job: JobSpec, view: dict[str, Any] | None) -> list[str]:
    """The members of a reported view (``status.view``) that are not this job's pods: other
    parties' nodes of a multi-party job."""
    members = (view or {}).get("members") or []
    return sorted(m for m in members if isinstance(m, str) and not is_pod_name(job, m))


def plan_pods(
    job: JobSpec,
    pods: list[dict[str, Any]],
    *,
    failures: int = 0,
    last_failure_at: float = 0.0,
    now: float = 0.0,
    view_reported: bool = False,
    outside: list[str] | None = None,
) -> PodPlan:
    """Decide creations and deletions. ``failures``/``last_failure_at`` come from the job's
    status (failed pods seen before), ``now`` from the caller's clock, ``view_reported``:
    whether a sidecar has reported a view yet (``status.view``), ``outside``: that view's
    members of other parties (:func:`outside_members`).

    With every pod of the job gone, the new pods found a group, unless the last view held
    other parties' nodes and ``spec.federation.peers`` says where to reach them: those may
    train on, and a second group of the same job would split it in two. The new pods join
    them instead (and pull the state). Without peers there is no one to ask, so they found."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    released = [p["metadata"]["name"] for p in live if report_of(p).get("released")]
    # a released member's pod is deleted, not counted as a failure, however its processes ended
    failed = [
        p["metadata"]["name"]
        for p in live
        if (p.get("status") or {}).get("phase") == "Failed" and p["metadata"]["name"] not in released
    ]
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
    rejoin = sorted(outside or []) if view_reported and not active and job.peers else []
    founding = not view_reported or (not active and not rejoin)
    return PodPlan(create=create, delete=delete, failed=failed, failures=total_failures, founding=founding,
                   rejoin_through_peers=rejoin)  # fmt: skip


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
    events: dict[tuple[int, str], dict[str, Any]] = {}
    for report in reports:
        for event in report.get("events", []):
            key = (event["epoch"], event["kind"])
            events.setdefault(key, {"kind": event["kind"], "epoch": event["epoch"]})
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
        status["members"] = len(view.get("members") or [])
    if events:
        status["lastEvents"] = [events[k] for k in sorted(events)][-MAX_LAST_EVENTS:]
    if steps:
        status["step"] = max(steps)
    return status
