"""A ChaosTrainingJob's spec as a typed object (defaults applied, bounds enforced).

The CRD's schema rejects bad specs at admission; this parser is the operator's own guard (a
spec edited while the CRD was older, or a missing field in a hand-made object) and raises
:class:`SpecError` naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


class SpecError(ValueError):
    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"spec.{field_path}: {message}")
        self.field = field_path


@dataclass(frozen=True)
class CheckpointSpec:
    """``spec.checkpoint``: durable checkpoints on a PersistentVolumeClaim every pod mounts."""

    claim_name: str  # the PVC (ReadWriteMany: every member reaches it; one writes at a time)
    sub_path: str  # the directory inside the claim (default: the job's name)
    every_steps: int = 100
    keep: int = 3


@dataclass(frozen=True)
class JobSpec:
    name: str
    namespace: str
    uid: str
    replicas: int
    min_replicas: int
    max_replicas: int
    template: dict[str, Any]
    join: str = "blocking"
    probe_interval_s: float = 0.1
    failure_timeout_s: float = 1.0
    peers: tuple[str, ...] = ()
    join_secret_name: str | None = None
    join_secret_key: str = "join-secret"
    backoff_limit: int = 6
    labels: dict[str, str] = field(default_factory=dict)
    network_policy: Any = None  # domain.security.NetworkPolicySettings (spec.networkPolicy)
    checkpoint: CheckpointSpec | None = None  # spec.checkpoint

    @property
    def desired(self) -> int:
        """Replicas clamped to the owner's bounds."""
        return max(self.min_replicas, min(self.max_replicas, self.replicas))

    @property
    def secret_name(self) -> str:
        return self.join_secret_name or f"{self.name}-join"


def _int(spec: dict, key: str, default: int, low: int = 1, high: int = 1024, path: str = "") -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(path or key, f"expected an integer in {low}..{high}, got {value!r}")
    return value


PEER = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?=https?://[^\s/,]+(:[0-9]+)?/?$")


def _peers(peers: Any) -> tuple[str, ...]:
    """``federation.peers``: "id=URL" contact points outside the cluster (the sidecar's --peers)."""
    if not isinstance(peers, list):
        raise SpecError("federation.peers", "expected a list")
    for i, peer in enumerate(peers):
        if not isinstance(peer, str) or not PEER.match(peer):
            raise SpecError(f"federation.peers[{i}]", f"expected id=http(s)://host:port, got {peer!r}")
    return tuple(peers)


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SUB_PATH = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")  # no ".."


def _checkpoint(raw: Any, job_name: str) -> CheckpointSpec | None:
    """``spec.checkpoint``: ``claimName`` (required), ``subPath``, ``everySteps``, ``keep``."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("checkpoint", "expected an object")
    unknown = sorted(set(raw) - {"claimName", "subPath", "everySteps", "keep"})
    if unknown:
        raise SpecError(f"checkpoint.{unknown[0]}", "unknown field")
    claim = raw.get("claimName")
    if not isinstance(claim, str) or len(claim) > 253 or not DNS_SUBDOMAIN.match(claim):
        raise SpecError("checkpoint.claimName", f"expected a PersistentVolumeClaim's name, got {claim!r}")
    sub_path = raw.get("subPath", job_name)
    if not isinstance(sub_path, str) or len(sub_path) > 253 or not SUB_PATH.match(sub_path):
        problem = f"expected a relative path, no component starting with '.', got {sub_path!r}"
        raise SpecError("checkpoint.subPath", problem)
    return CheckpointSpec(
        claim_name=claim,
        sub_path=sub_path,
        every_steps=_int(raw, "everySteps", 100, high=1_000_000, path="checkpoint.everySteps"),
        keep=_int(raw, "keep", 3, high=100, path="checkpoint.keep"),
    )


def parse_job(body: dict[str, Any]) -> JobSpec:
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise SpecError("", "missing")
    template = spec.get("template")
    if not isinstance(template, dict) or not (template.get("spec") or {}).get("containers"):
        raise SpecError("template.spec.containers", "a pod template with at least one container is required")
    replicas = _int(spec, "replicas", 3)
    low = _int(spec, "minReplicas", 1)
    high = _int(spec, "maxReplicas", 64)
    if not low <= high:
        raise SpecError("minReplicas", "must not exceed maxReplicas")
    monitor = spec.get("monitor") or {}
    federation = spec.get("federation") or {}
    secret = federation.get("joinSecretRef") or {}
    probe = float(monitor.get("probeIntervalSeconds", 0.1))
    timeout = float(monitor.get("failureTimeoutSeconds", 1.0))
    if not 0 < probe < timeout:
        raise SpecError("monitor.probeIntervalSeconds", "must be positive and below failureTimeoutSeconds")
    join = spec.get("join", "blocking")
    if join not in ("blocking", "overlap"):
        raise SpecError("join", f"expected blocking or overlap, got {join!r}")
    from chaos_operator.domain.security import parse_network_policy  # it raises SpecError

    return JobSpec(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        uid=meta.get("uid", ""),
        replicas=replicas,
        min_replicas=low,
        max_replicas=high,
        template=template,
        join=join,
        probe_interval_s=probe,
        failure_timeout_s=timeout,
        peers=_peers(federation.get("peers") or []),
        join_secret_name=secret.get("name"),
        join_secret_key=secret.get("key", "join-secret"),
        backoff_limit=int((spec.get("runPolicy") or {}).get("backoffLimit", 6)),
        labels=dict(meta.get("labels") or {}),
        network_policy=parse_network_policy(spec.get("networkPolicy")),
        checkpoint=_checkpoint(spec.get("checkpoint"), meta["name"]),
    )
