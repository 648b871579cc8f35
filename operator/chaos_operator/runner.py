"""Running the operator: our handlers and settings under ``kopf.operator``."""

from __future__ import annotations

import asyncio

import kopf

import chaos_operator.main  # noqa: F401 - registers the handlers
from chaos_operator import kube, metrics
from chaos_operator.settings import CONFIG


def run_operator(
    *, server: str | None, namespaces: list[str], clusterwide: bool, standalone: bool, liveness: str | None
) -> None:
    kube.connect(server)
    metrics.serve(CONFIG.metrics_port or None)
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide, namespaces=namespaces, standalone=standalone, liveness_endpoint=liveness
        )
    )
