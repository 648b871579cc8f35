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
class PartySpec:
    """``spec.federation.party``: the party the job's pods belong to (docs/federation.md)."""

    key_secret_name: str  # keySecretRef: the party's private key file (chaos-train party keygen)
    key_secret_key: str
    policy_configmap_name: str  # policyConfigMapRef: the job's admission policy
    policy_configmap_key: str
    allow_cleartext_collectives: bool = False


EXPOSE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
# the placeholders of spec.federation.expose.advertise (domain.builders.advertise_url fills them)
ADVERTISE_FIELDS = ("pod", "index", "job", "namespace", "podIP", "hostIP", "node", "port", "address")
DEFAULT_ADVERTISE = {
    "ClusterIP": "http://{podIP}:{port}",  # the pod's own address: in-cluster (or a routed pod network)
    "NodePort": "http://{hostIP}:{port}",  # the pod's node and the Service's nodePort
    "LoadBalancer": "http://{address}:{port}",  # the Service's ingress address and port
}


@dataclass(frozen=True)
class ExposeSpec:
    """``spec.federation.expose``: how other sites reach the job's pods."""

    type: str = "ClusterIP"  # not ClusterIP: one Service of this type per pod
    advertise: str | None = None  # the URL template each sidecar advertises; None: the type's default

    @property
    def outside(self) -> bool:
        return self.type != "ClusterIP"

    @property
    def template(self) -> str:
        return self.advertise or DEFAULT_ADVERTISE[self.type]


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
    party: PartySpec | None = None  # spec.federation.party
    expose: ExposeSpec = ExposeSpec()  # spec.federation.expose

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


CONFIG_KEY_NAME = re.compile(r"^[-._a-zA-Z0-9]+$")  # a Secret's or ConfigMap's data key


def _unknown(raw: dict, known: set[str], path: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}", "unknown field")


def _object_ref(raw: Any, path: str, kind: str, default_key: str) -> tuple[str, str]:
    """A ``{name, key}`` reference to a Secret or ConfigMap in the job's namespace."""
    if not isinstance(raw, dict):
        raise SpecError(path, f"expected {{name, key}} naming a {kind}")
    _unknown(raw, {"name", "key"}, path)
    name = raw.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        raise SpecError(f"{path}.name", f"expected a {kind}'s name (a DNS subdomain), got {name!r}")
    key = raw.get("key", default_key)
    if not isinstance(key, str) or len(key) > 253 or not CONFIG_KEY_NAME.match(key) or key in (".", ".."):
        raise SpecError(
            f"{path}.key", f"expected a key of the {kind} (letters, digits, '-', '_', '.'), got {key!r}"
        )
    return name, key


def _party(raw: Any) -> PartySpec | None:
    """``federation.party``: ``keySecretRef``, ``policyConfigMapRef`` (both required),
    ``allowCleartextCollectives``."""
    if raw is None:
        return None
    path = "federation.party"
    if not isinstance(raw, dict):
        raise SpecError(path, "expected an object")
    _unknown(raw, {"keySecretRef", "policyConfigMapRef", "allowCleartextCollectives"}, path)
    key = _object_ref(raw.get("keySecretRef"), f"{path}.keySecretRef", "Secret", "party.key")
    policy = _object_ref(
        raw.get("policyConfigMapRef"), f"{path}.policyConfigMapRef", "ConfigMap", "policy.yaml"
    )
    cleartext = raw.get("allowCleartextCollectives", False)
    if not isinstance(cleartext, bool):
        raise SpecError(f"{path}.allowCleartextCollectives", f"expected true or false, got {cleartext!r}")
    return PartySpec(*key, *policy, allow_cleartext_collectives=cleartext)


PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
ADVERTISE = re.compile(r"^https?://[^\s/,@?#]+/?$")  # scheme://host:port, no path, no comma (--peers)


def _expose(raw: Any) -> ExposeSpec:
    """``federation.expose``: ``type`` (default ClusterIP) and ``advertise`` (a URL template)."""
    path = "federation.expose"
    if raw is None:
        return ExposeSpec()
    if not isinstance(raw, dict):
        raise SpecError(path, "expected an object")
    _unknown(raw, {"type", "advertise"}, path)
    kind = raw.get("type", "ClusterIP")
    if kind not in EXPOSE_TYPES:
        raise SpecError(f"{path}.type", f"expected one of {', '.join(EXPOSE_TYPES)}, got {kind!r}")
    advertise = raw.get("advertise")
    if advertise is None:
        return ExposeSpec(type=kind)
    where = f"{path}.advertise"
    if not isinstance(advertise, str) or len(advertise) > 253:
        raise SpecError(
            where, f"expected a URL template such as http://{{pod}}.example.org:{{port}}, got {advertise!r}"
        )
    for name in PLACEHOLDER.findall(advertise):
        if name not in ADVERTISE_FIELDS:
            raise SpecError(where, f"unknown placeholder {{{name}}}; known: {', '.join(ADVERTISE_FIELDS)}")
        if name == "address" and kind != "LoadBalancer":
            raise SpecError(where, "{address} is a LoadBalancer's ingress address: needs type LoadBalancer")
    sample = PLACEHOLDER.sub("x1", advertise)
    if not ADVERTISE.match(sample) or "{" in sample or "}" in sample:
        raise SpecError(where, f"expected http(s)://HOST[:PORT] with placeholders, got {advertise!r}")
    return ExposeSpec(type=kind, advertise=advertise)


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
        party=_party(federation.get("party")),
        expose=_expose(federation.get("expose")),
    )
