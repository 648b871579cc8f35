"""Prometheus metrics of the operator (prefix ``chaostrain_operator_``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry()
RECONCILES = Counter(
    "chaostrain_operator_reconciles",
    "Reconciliations of ChaosTrainingJobs, by result",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "chaostrain_operator_reconcile_errors", "Failed reconciliations, by reason", ["reason"], registry=REGISTRY
)
PODS_CREATED = Counter("chaostrain_operator_pods_created", "Pods created for jobs", registry=REGISTRY)
PODS_DELETED = Counter(
    "chaostrain_operator_pods_deleted",
    "Pods deleted (released by the group, or failed)",
    ["why"],
    registry=REGISTRY,
)
DESIRED = Gauge(
    "chaostrain_operator_desired_replicas",
    "Clamped replicas per job",
    ["namespace", "job"],
    registry=REGISTRY,
)


def serve(port: int | None) -> int | None:
    """Expose /metrics on ``port`` (None: do not serve; 0: any free port); returns the port."""
    if port is None:
        return None
    server, _ = start_http_server(port, registry=REGISTRY)
    return server.server_port
