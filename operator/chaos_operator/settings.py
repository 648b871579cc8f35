"""Operator settings: one documented dataclass, applied to Kopf's settings at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

import kopf

from chaos_operator.domain.builders import SIDECAR_IMAGE


@dataclass(frozen=True)
class OperatorConfig:
    status_interval_s: float = 5.0
    """How often the timer folds the sidecars' pod reports into the job's status."""
    retry_delay_s: float = 2.0
    """Back-off before a handler retries after a retryable API error (5xx, 429)."""
    metrics_port: int = 8080
    """Port of the operator's /metrics (0: off)."""
    sidecar_image: str = SIDECAR_IMAGE
    """The image of the sidecar container injected into every pod (chart: ``sidecar.image``)."""


CONFIG = OperatorConfig(
    status_interval_s=float(os.environ.get("CHAOS_OPERATOR_STATUS_INTERVAL", "5")),
    metrics_port=int(os.environ.get("CHAOS_OPERATOR_METRICS_PORT", "8080")),
    sidecar_image=os.environ.get("CHAOS_SIDECAR_IMAGE", "").strip() or SIDECAR_IMAGE,
)


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = "chaostraining.io/operator"
    settings.posting.level = 20  # INFO and above become Kubernetes Events
    settings.watching.server_timeout = 60
    settings.queueing.error_delays = [1, 2, 5, 10, 30]
