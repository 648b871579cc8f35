"""Reconciling a ChaosTrainingJob: shared objects, pods up to the clamped size, status."""

from __future__ import annotations

import datetime
import secrets
import time
from typing import Any

import kopf

from chaos_operator import kube, metrics
from chaos_operator.domain.builders import (
    JOB_LABEL,
    AddressPending,
    advertise_url,
    build_configmap,
    build_join_secret,
    build_pod,
    build_pod_role,
    build_pod_service,
    build_role_binding,
    build_service,
    build_service_account,
    pod_name,
)
from chaos_operator.domain.reconcile import bad_reports, build_status, outside_members, plan_pods
from chaos_operator.domain.security import (
    build_network_policy,
    join_secret_problem,
    network_policy_warnings,
    pod_security_warnings,
)
from chaos_operator.domain.spec import JobSpec, SpecError, parse_job
from chaos_operator.settings import CONFIG

# (namespace, pod) -> the refused report last warned about: one Event per bad report, not per timer
_WARNED: dict[tuple[str, str], str] = {}


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _count_error(namespace: str, name: str, reason: str) -> None:
    metrics.RECONCILE_ERRORS.labels(namespace, name, reason).inc()
    metrics.RECONCILES.labels(namespace, name, "error").inc()


async def _shared_objects(job: JobSpec) -> None:
    for obj in (build_service(job), build_configmap(job), build_network_policy(job)):
        if obj is not None:  # the NetworkPolicy, when spec.networkPolicy.enabled is false
            await kube.apply(obj)
    if job.join_secret_name is None:  # else the user's own Secret (federation.joinSecretRef)
        await kube.create_once(build_join_secret(job, secrets.token_urlsafe(32)))


async def _create_pod(job: JobSpec, index: int, founding: bool, *, seed: bool) -> str | None:
    """With ``spec.federation.expose``, the pod's own Service first: the pod advertises its
    address, so it waits (returns why, creating nothing more) until the Service has the port or
    ingress address the template needs; then the pod's identity and permissions, then the pod
    that runs as it."""
    advertise = None
    service = build_pod_service(job, index)
    if service is not None:
        try:
            advertise = advertise_url(job, index, await kube.ensure(service))
        except AddressPending as exc:
            return str(exc)
    for obj in (
        build_service_account(job, index),
        build_pod_role(job, index),
        build_role_binding(job, index),
    ):
        await kube.apply(obj)
    await kube.apply(build_pod(job, index, founding=founding, seed=seed, sidecar_image=CONFIG.sidecar_image,
                               advertise=advertise))  # fmt: skip
    return None


def _warn_bad_reports(body: kopf.Body, job: JobSpec, pods: list[dict[str, Any]]) -> None:
    for pod, problem in bad_reports(pods).items():
        if _WARNED.get((job.namespace, pod)) != problem:
            _WARNED[(job.namespace, pod)] = problem
            metrics.BAD_REPORTS.labels(job.namespace, job.name).inc()
            kopf.warn(body, reason="BadReport", message=f"pod {pod}: report ignored: {problem}")


async def reconcile(
    body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, pods_by_job: kopf.Index, **_: Any
) -> None:
    key = (body.metadata.namespace or "default", body.metadata.name or "")  # the job's metric labels
    if body.metadata.get("deletionTimestamp"):
        return  # being deleted: creating pods now would only feed the garbage collector
    metrics.track_job(*key)
    try:
        job = parse_job(dict(body))
    except SpecError as exc:
        _count_error(*key, "InvalidSpec")
        patch.status["phase"] = "Failed"
        patch.status["conditions"] = [_condition("Valid", False, "InvalidSpec", str(exc))]
        raise kopf.PermanentError(str(exc)) from None
    try:
        await _shared_objects(job)
        pods = await kube.list_pods(job.namespace, f"{JOB_LABEL}={job.name}")
        previous = body.get("status") or {}
        plan = plan_pods(
            job, pods, failures=int(previous.get("failures") or 0),
            last_failure_at=float(previous.get("lastFailureAt") or 0.0), now=time.time(),
            view_reported=bool(previous.get("view")), outside=outside_members(job, previous.get("view")),
        )  # fmt: skip
        if plan.create and plan.rejoin_through_peers:
            others = plan.rejoin_through_peers
            logger.info(f"no pod of the job is left; the new pods join {others} (other parties' "
                        "members of the last view) through spec.federation.peers")  # fmt: skip
        for pod in plan.delete:
            logger.info(f"deleting {pod} ({'failed' if pod in plan.failed else 'released by the group'})")
            await kube.delete_pod(job.namespace, pod)
            metrics.PODS_DELETED.labels(*key, "failed" if pod in plan.failed else "released").inc()
        # a first view's pods (none reported yet, or every member gone) found the group, the
        # lowest seeds; later pods join and pull the state
        pending = []
        for index in plan.create:
            waiting = await _create_pod(job, index, plan.founding, seed=index == plan.seed)
            if waiting is not None:  # the timer tries again
                pending.append(waiting)
                continue
            logger.info(f"created {pod_name(job, index)}{' (founding)' if plan.founding else ''}")
            metrics.PODS_CREATED.labels(*key).inc()
    except kube.Forbidden as exc:
        _count_error(*key, "Forbidden")
        kopf.warn(body, reason="Forbidden", message=str(exc))
        patch.status["conditions"] = [_condition("Reconciled", False, "Forbidden", str(exc))]
        return  # RBAC must change first; the timer tries again
    except kube.ApiError as exc:
        _count_error(*key, "APIError")
        kopf.warn(body, reason="APIError", message=str(exc))
        patch.status["conditions"] = [_condition("Reconciled", False, "APIError", str(exc))]
        return
    # status folds the reports of the pods the index has seen (advisory, may lag a moment)
    indexed = [dict(p) for p in pods_by_job.get((job.namespace, job.name), [])]
    indexed = [p for p in indexed if p["metadata"]["name"] not in plan.delete]
    _warn_bad_reports(body, job, indexed)
    status = build_status(job, indexed)
    status["scaleIn"] = {"requested": plan.waiting_for_release}
    status["failures"] = plan.failures
    if plan.failed:
        status["lastFailureAt"] = time.time()
    if plan.exhausted:
        status["phase"] = "Failed"
        kopf.warn(body, reason="BackoffLimitExceeded",
                  message=f"{plan.failures} failed pods > backoffLimit {job.backoff_limit}")  # fmt: skip
    status["conditions"] = [
        _condition("Reconciled", True, "Reconciled", f"{len(pods)} pods for {job.desired}"),
        _pod_security_condition(body, job, previous),
        _network_policy_condition(body, job, previous),
    ]
    if job.expose.outside:  # False while pods wait for their Service's address
        status["conditions"].append(
            _condition("Exposed", not pending, "WaitingForAddress" if pending else "Addressed",
                       "; ".join(pending) or f"every pod has its {job.expose.type} Service's address")
        )  # fmt: skip
    status["conditions"] += await _join_secret_condition(body, job, previous)
    patch.status.update(status)
    metrics.RECONCILES.labels(*key, "ok").inc()
    metrics.DESIRED.labels(*key).set(job.desired)


def _warning_condition(
    body: kopf.Body,
    previous: dict[str, Any],
    kind: str,
    warnings: list[str],
    reasons: tuple[str, str],
    ok: str,
    event: str | None = None,
) -> dict[str, Any]:
    """Condition ``kind``: False while there are ``warnings``, with a Warning Event (reason
    ``event``, else ``kind``) when they first appear or change, not at every reconcile;
    ``reasons`` is (when fine, when not)."""
    message = "; ".join(warnings) or ok
    before = next((c for c in previous.get("conditions") or [] if c.get("type") == kind), {})
    if warnings and before.get("message") != message[:1000]:
        kopf.warn(body, reason=event or kind, message=message[:1000])
    return _condition(kind, not warnings, reasons[bool(warnings)], message)


def _pod_security_condition(body: kopf.Body, job: JobSpec, previous: dict[str, Any]) -> dict[str, Any]:
    """``PodSecurity``: what the template sets against the restricted Pod Security Standard (its
    pods keep what the user set)."""
    return _warning_condition(body, previous, "PodSecurity", pod_security_warnings(job),
                              ("Restricted", "TemplateNotRestricted"),
                              "pods pass the restricted Pod Security Standard")  # fmt: skip


def _network_policy_condition(body: kopf.Body, job: JobSpec, previous: dict[str, Any]) -> dict[str, Any]:
    """``NetworkPolicy``: federation peers named by host name with no ``federationCIDRs`` (the
    policy cannot admit them)."""
    return _warning_condition(body, previous, "NetworkPolicy", network_policy_warnings(job),
                              ("Complete", "PeersUnmatched"),
                              "the policy admits every declared contact point")  # fmt: skip


async def _join_secret_condition(
    body: kopf.Body, job: JobSpec, previous: dict[str, Any]
) -> list[dict[str, Any]]:
    """``JoinSecret``: False (with an Event when it turns so) while the job's Secret holds a key
    the sidecars refuse (empty, too short): they keep the old one, so a rotation did not happen."""
    try:
        secret = await kube.get("Secret", job.namespace, job.secret_name)
    except (kube.Forbidden, kube.ApiError) as exc:
        return [_condition("JoinSecret", False, "Unreadable", str(exc))]
    if secret is None:
        return []
    problem = join_secret_problem(secret, job.join_secret_key)
    usable = f"Secret {job.secret_name} holds a usable key"
    warnings = [problem] if problem else []
    return [_warning_condition(body, previous, "JoinSecret", warnings, ("Valid", "Refused"), usable,
                               event="JoinSecretRefused")]  # fmt: skip


async def deleted(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """Nothing to undo by hand: every object carries an owner reference, so the garbage
    collector removes pods, Service, ConfigMap and RBAC with the job. Its series go too."""
    metrics.forget_job(body.metadata.namespace or "default", body.metadata.name or "")
    logger.info("job deleted; its objects go with it (owner references)")
