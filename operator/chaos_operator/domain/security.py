"""Least exposure for a job's pods: its NetworkPolicy and the "restricted" Pod Security Standard.

Pure: ``parse_network_policy`` reads ``spec.networkPolicy`` (raising :class:`SpecError` naming
the field), ``build_network_policy`` returns the job's policy, ``harden_pod`` merges the
restricted settings into a pod spec without overwriting what the user's template set (a user
setting that breaks "restricted" is kept and reported as a warning, never silently changed).
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from chaos_operator.domain.spec import SpecError
from chaos_sidecar.security import MIN_SECRET_BYTES  # what every sidecar refuses below

SIDECAR_NAME = "chaos-sidecar"
SIDECAR_UID = 10001  # the images' USER (Dockerfile); also the pod's default fsGroup
SECRET_FILE_MODE = 0o440  # owner and fsGroup only: the sidecar warns about anything looser
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")  # fmt: skip
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class NetworkPolicySettings:
    """``spec.networkPolicy``: on by default."""

    enabled: bool = True
    # where federation peers named by host name (or behind NAT) come from: NetworkPolicy
    # matches addresses, not names
    federation_cidrs: tuple[str, ...] = ()
    # who may scrape /metrics on the peer port (Prometheus): label selectors, None = nobody
    metrics_namespace_selector: dict[str, Any] | None = None
    metrics_pod_selector: dict[str, Any] | None = None
    # non-empty: egress restricted to the job's pods, federation, DNS and these blocks
    egress_cidrs: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def _cidr(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(where, f"expected a CIDR such as 192.0.2.0/24, got {value!r}")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise SpecError(where, f"expected a CIDR such as 192.0.2.0/24, got {value!r}") from None


def _selector(value: Any, where: str) -> dict[str, Any]:
    """A Kubernetes LabelSelector, checked as the API server would."""
    if not isinstance(value, dict) or set(value) - {"matchLabels", "matchExpressions"}:
        raise SpecError(where, "expected a label selector {matchLabels, matchExpressions}")
    labels = value.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise SpecError(f"{where}.matchLabels", "expected a map of label keys to values")
    for key, val in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key) or len(key) > 316:
            raise SpecError(f"{where}.matchLabels", f"{key!r} is not a label key")
        if not isinstance(val, str) or not _LABEL_VALUE.match(val):
            raise SpecError(f"{where}.matchLabels.{key}", f"{val!r} is not a label value")
    expressions = value.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SpecError(f"{where}.matchExpressions", "expected a list")
    for i, expr in enumerate(expressions):
        at = f"{where}.matchExpressions[{i}]"
        key = expr.get("key") if isinstance(expr, dict) else None
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise SpecError(f"{at}.key", "expected a label key")
        if expr.get("operator") not in _OPERATORS:
            raise SpecError(f"{at}.operator", f"expected one of {', '.join(_OPERATORS)}")
        values = expr.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) and _LABEL_VALUE.match(v)
                                                   for v in values):  # fmt: skip
            raise SpecError(f"{at}.values", "expected a list of label values")
        if (expr["operator"] in ("In", "NotIn")) != bool(values):
            raise SpecError(f"{at}.values", "In and NotIn need values; Exists and DoesNotExist take none")
    return copy.deepcopy(value)


def parse_network_policy(raw: Any) -> NetworkPolicySettings:
    if raw is None:
        return NetworkPolicySettings()
    if not isinstance(raw, dict):
        raise SpecError("networkPolicy", "expected an object")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError("networkPolicy.enabled", f"expected true or false, got {enabled!r}")
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise SpecError("networkPolicy.metrics", "expected an object")
    selectors = {
        key: _selector(metrics[key], f"networkPolicy.metrics.{key}") if key in metrics else None
        for key in ("namespaceSelector", "podSelector")
    }

    def cidrs(key: str) -> tuple[str, ...]:
        items = raw.get(key) or []
        if not isinstance(items, list):
            raise SpecError(f"networkPolicy.{key}", "expected a list of CIDRs")
        return tuple(_cidr(v, f"networkPolicy.{key}[{i}]") for i, v in enumerate(items))

    return NetworkPolicySettings(
        enabled=enabled,
        federation_cidrs=cidrs("federationCIDRs"),
        metrics_namespace_selector=selectors["namespaceSelector"],
        metrics_pod_selector=selectors["podSelector"],
        egress_cidrs=cidrs("egressCIDRs"),
    )


def peer_address_blocks(peers: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Federation contact points as address blocks (IP literals), and the ones named by host
    name (a NetworkPolicy cannot match those: they need ``networkPolicy.federationCIDRs``)."""
    blocks, named = [], []
    for peer in peers:
        url = peer.split("=", 1)[1] if "=" in peer else peer  # federation.peers are id=URL
        host = urllib.parse.urlsplit(url).hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            named.append(peer)
            continue
        blocks.append(f"{address}/{address.max_prefixlen}")
    return blocks, named


def build_network_policy(job: Any) -> dict[str, Any] | None:
    """The job's NetworkPolicy (None when switched off). Selected: the job's pods. Ingress, on
    every port (the peer port and the trainers' collective ports: the store and gloo's pairs
    listen on ephemeral ports): the job's own pods and its federation contact points; on the
    peer port only (``/metrics``): the configured Prometheus selector; nothing else. A job
    exposed to other sites (``spec.federation.expose``) is reached through per-pod Services that
    keep the client's address, so the same blocks admit the outside parties there too."""
    from chaos_operator.domain.builders import JOB_LABEL, PEER_PORT, _meta

    settings: NetworkPolicySettings = job.network_policy or NetworkPolicySettings()
    if not settings.enabled:
        return None
    own = {"podSelector": {"matchLabels": {JOB_LABEL: job.name}}}
    blocks, _ = peer_address_blocks(job.peers)
    federation = [{"ipBlock": {"cidr": c}} for c in dict.fromkeys([*blocks, *settings.federation_cidrs])]
    ingress: list[dict[str, Any]] = [{"from": [own]}]
    if federation:
        ingress.append({"from": federation})
    if settings.metrics_namespace_selector is not None or settings.metrics_pod_selector is not None:
        scraper: dict[str, Any] = {}
        if settings.metrics_namespace_selector is not None:
            scraper["namespaceSelector"] = copy.deepcopy(settings.metrics_namespace_selector)
        if settings.metrics_pod_selector is not None:
            scraper["podSelector"] = copy.deepcopy(settings.metrics_pod_selector)
        ingress.append({"from": [scraper], "ports": [{"protocol": "TCP", "port": PEER_PORT}]})
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {JOB_LABEL: job.name}},
        "policyTypes": ["Ingress"],
        "ingress": ingress,
    }
    if settings.egress_cidrs:
        dns = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
        extra = [{"ipBlock": {"cidr": c}} for c in settings.egress_cidrs]
        spec["policyTypes"].append("Egress")
        spec["egress"] = [{"to": [own, *federation, *extra]}, dns]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(job, f"{job.name}-members"),
        "spec": spec,
    }


def network_policy_warnings(job: Any) -> list[str]:
    settings: NetworkPolicySettings = job.network_policy or NetworkPolicySettings()
    blocks, named = peer_address_blocks(job.peers)
    if not settings.enabled or settings.federation_cidrs:
        return []
    warnings = []
    if named:
        warnings.append(f"spec.federation.peers {', '.join(named)} are host names: a NetworkPolicy matches "
                        "addresses, so they cannot reach the pods until spec.networkPolicy.federationCIDRs "
                        "names where they connect from")  # fmt: skip
    expose = getattr(job, "expose", None)
    if expose is not None and expose.outside and not blocks and not named:
        # the per-pod Services keep the client's address (externalTrafficPolicy: Local), so the
        # policy admits exactly the outside parties it names: here, none
        warnings.append(f"spec.federation.expose is {expose.type} but the NetworkPolicy admits no outside "
                        "address: name the other sites' contact points (spec.federation.peers) or where "
                        "their nodes connect from (spec.networkPolicy.federationCIDRs)")  # fmt: skip
    return warnings


# --- restricted Pod Security Standard ----------------------------------------------------------

_ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                    "persistentVolumeClaim", "projected", "secret"}  # fmt: skip
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def _user_violations(spec: dict[str, Any]) -> list[str]:
    """What in ``spec`` breaks "restricted" and cannot be fixed without overriding a setting."""
    out = []
    pod_sc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"spec.{key} is true")
    if pod_sc.get("runAsNonRoot") is False:
        out.append("spec.securityContext.runAsNonRoot is false")
    if pod_sc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser is 0 (root)")
    if (pod_sc.get("seccompProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        out.append("spec.securityContext.seccompProfile.type is not RuntimeDefault or Localhost")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess is true")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"spec.securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if kinds - _ALLOWED_VOLUMES:
            out.append(f"spec.volumes[{volume.get('name')}] is of type {', '.join(sorted(kinds))}")
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(group) or []:
            at = f"spec.{group}[{c.get('name')}]"
            sc = c.get("securityContext") or {}
            if sc.get("privileged"):
                out.append(f"{at}.securityContext.privileged is true")
            if sc.get("allowPrivilegeEscalation") is True:
                out.append(f"{at}.securityContext.allowPrivilegeEscalation is true")
            if sc.get("runAsNonRoot") is False:
                out.append(f"{at}.securityContext.runAsNonRoot is false")
            if sc.get("runAsUser") == 0:
                out.append(f"{at}.securityContext.runAsUser is 0 (root)")
            if (sc.get("seccompProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
                out.append(f"{at}.securityContext.seccompProfile.type is not RuntimeDefault or Localhost")
            caps = sc.get("capabilities") or {}
            if "drop" in caps and "ALL" not in (caps.get("drop") or []):
                out.append(f"{at}.securityContext.capabilities.drop does not include ALL")
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                out.append(f"{at}.securityContext.capabilities.add goes beyond NET_BIND_SERVICE")
            if sc.get("procMount") not in (None, "Default"):
                out.append(f"{at}.securityContext.procMount is not Default")
            if any(p.get("hostPort") for p in c.get("ports") or []):
                out.append(f"{at}.ports sets a hostPort")
    return out


def harden_pod(pod_spec: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``pod_spec`` with the restricted settings merged in where the template left them unset,
    and the warnings for what the template set against "restricted" (kept as set)."""
    spec = copy.deepcopy(pod_spec)
    warnings = _user_violations(spec)
    pod_sc = spec.setdefault("securityContext", {})
    pod_sc.setdefault("runAsNonRoot", True)
    pod_sc.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    if "fsGroup" not in pod_sc:  # the join secret's file (mode 0440) is the sidecar's to read
        pod_sc["fsGroup"] = SIDECAR_UID
        pod_sc.setdefault("fsGroupChangePolicy", "OnRootMismatch")
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            sc = container.setdefault("securityContext", {})
            sc.setdefault("allowPrivilegeEscalation", False)
            sc.setdefault("capabilities", {}).setdefault("drop", ["ALL"])
            if container.get("name") == SIDECAR_NAME:  # ours: writes only to its volumes
                sc.setdefault("readOnlyRootFilesystem", True)
                sc.setdefault("runAsUser", SIDECAR_UID)
                sc.setdefault("runAsGroup", SIDECAR_UID)
                sc.setdefault("runAsNonRoot", True)
                if (pod_sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                    sc.setdefault("seccompProfile", {"type": "RuntimeDefault"})  # not the pod's Unconfined
    return spec, warnings


def pod_security_warnings(job: Any) -> list[str]:
    """What the job's template sets against "restricted" (its pods keep it: the operator merges,
    never overrides): for a warning condition and Event."""
    return _user_violations((job.template or {}).get("spec") or {})


def join_secret_problem(secret: dict[str, Any] | None, key: str) -> str | None:
    """Why the job's join Secret (as read from the API) cannot serve as its key, or None. The
    sidecars refuse such a key and keep the one they have; the operator says so as an Event."""
    if secret is None:
        return None  # not there (yet): nothing to judge
    name = (secret.get("metadata") or {}).get("name", "?")
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return f"Secret {name} has no key {key!r}"
    try:
        value = base64.b64decode(raw, validate=True).strip()
    except (binascii.Error, ValueError):
        return f"Secret {name}: {key} is not base64"
    if len(value) < MIN_SECRET_BYTES:
        return (f"Secret {name}: {key} holds {len(value)} bytes, below {MIN_SECRET_BYTES}: the sidecars "
                "refuse it and keep the key they have")  # fmt: skip
    return None
