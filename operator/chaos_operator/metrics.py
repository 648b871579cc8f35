"""Prometheus metrics of the operator (prefix ``chaostrain_operator_``), one series set per job.

A job is named by ``job_namespace`` and ``job_name``, never ``namespace``/``job``: Prometheus
puts those on every scraped series (the operator's own namespace and scrape job) and would
rename ours to ``exported_namespace``/``exported_job``.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

JOB_LABELS = ("job_namespace", "job_name")
RESULTS = ("ok", "error")
ERROR_REASONS = ("Forbidden", "APIError", "InvalidSpec")
DELETE_REASONS = ("released", "failed")

REGISTRY = CollectorRegistry()
RECONCILES = Counter(
    "chaostrain_operator_reconciles",
    "Reconciliations of a ChaosTrainingJob, by result",
    [*JOB_LABELS, "result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "chaostrain_operator_reconcile_errors",
    "Failed reconciliations of a job, by reason",
    [*JOB_LABELS, "reason"],
    registry=REGISTRY,
)
PODS_CREATED = Counter(
    "chaostrain_operator_pods_created", "Pods created for a job", JOB_LABELS, registry=REGISTRY
)
PODS_DELETED = Counter(
    "chaostrain_operator_pods_deleted",
    "Pods of a job deleted (released by the group, or failed)",
    [*JOB_LABELS, "why"],
    registry=REGISTRY,
)
BAD_REPORTS = Counter(
    "chaostrain_operator_bad_reports",
    "Pod report annotations refused (not JSON, too large, another job's or pod's, badly typed)",
    JOB_LABELS,
    registry=REGISTRY,
)
DESIRED = Gauge(
    "chaostrain_operator_desired_replicas",
    "Replicas of a job clamped to its bounds",
    JOB_LABELS,
    registry=REGISTRY,
)
_BY_EXTRA_LABEL = (
    (RECONCILES, RESULTS),
    (RECONCILE_ERRORS, ERROR_REASONS),
    (PODS_DELETED, DELETE_REASONS),
)


def track_job(namespace: str, name: str) -> None:
    """Create the job's series at zero, so a dashboard shows "no errors" rather than nothing."""
    for family, values in _BY_EXTRA_LABEL:
        for value in values:
            family.labels(namespace, name, value)
    PODS_CREATED.labels(namespace, name)
    BAD_REPORTS.labels(namespace, name)


def forget_job(namespace: str, name: str) -> None:
    """Drop the series of a deleted job (Prometheus keeps their history)."""
    series = [(f, (namespace, name, v)) for f, values in _BY_EXTRA_LABEL for v in values]
    series += [(family, (namespace, name)) for family in (PODS_CREATED, DESIRED, BAD_REPORTS)]
    for family, labels in series:
        with contextlib.suppress(KeyError):  # older prometheus_client raise for a series never set
            family.remove(*labels)


def serve(port: int | None) -> int | None:
    """Expose /metrics on ``port`` (None: do not serve; 0: any free port); returns the port."""
    if port is None:
        return None
    server, _ = start_http_server(port, registry=REGISTRY)
    return server.server_port
