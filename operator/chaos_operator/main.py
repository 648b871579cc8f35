"""Kopf registrations only: every handler lives in ``chaos_operator.handlers``."""

from __future__ import annotations

from typing import Any

import kopf

from chaos_operator import settings as operator_settings
from chaos_operator.domain.builders import JOB_LABEL
from chaos_operator.handlers import jobs

RESOURCE = ("chaostraining.io", "v1alpha1", "chaostrainingjobs")


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    operator_settings.configure(settings)


@kopf.index("pods", labels={JOB_LABEL: kopf.PRESENT})
def pods_by_job(
    namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any
) -> dict[tuple[str, str], Any]:
    """(namespace, job) -> pod bodies: the sidecars' reports are folded from these."""
    return {(namespace, labels[JOB_LABEL]): body}


kopf.on.create(*RESOURCE)(jobs.reconcile)
kopf.on.update(*RESOURCE, field="spec")(jobs.reconcile)
kopf.on.resume(*RESOURCE)(jobs.reconcile)
kopf.on.delete(*RESOURCE, optional=True)(jobs.deleted)  # optional: no finalizer blocks deletion
kopf.timer(*RESOURCE, interval=operator_settings.CONFIG.status_interval_s, idle=1.0)(jobs.reconcile)
