"""Desired Kubernetes objects for a job: pure ``build_*`` functions returning plain dicts."""

from __future__ import annotations

import copy
import json
from typing import Any

from chaos_operator.domain.security import SECRET_FILE_MODE, harden_pod
from chaos_operator.domain.spec import JobSpec

GROUP = "chaostraining.io"
JOB_LABEL = f"{GROUP}/job"
INDEX_LABEL = f"{GROUP}/index"
REPORT_ANNOTATION = f"{GROUP}/report"
SIDECAR_IMAGE = "ghcr.io/chaos-training/sidecar:0.1.0"
PEER_PORT = 7070
SNAPSHOT_DIR = "/var/run/chaos/snapshots"


def labels(job: JobSpec) -> dict[str, str]:
    return {JOB_LABEL: job.name, "app.kubernetes.io/managed-by": "chaos-operator"}


def owner(job: JobSpec) -> list[dict[str, Any]]:
    return [{"apiVersion": f"{GROUP}/v1alpha1", "kind": "ChaosTrainingJob", "name": job.name,
             "uid": job.uid, "controller": True, "blockOwnerDeletion": True}]  # fmt: skip


def _meta(job: JobSpec, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": job.namespace, "labels": labels(job), "ownerReferences": owner(job)}


def build_service(job: JobSpec) -> dict[str, Any]:
    """Headless: every pod gets a DNS name, ready or not (peers must find joiners)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, job.name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: job.name},
            "ports": [{"name": "peer", "port": PEER_PORT, "targetPort": PEER_PORT}],
        },
    }


def build_configmap(job: JobSpec) -> dict[str, Any]:
    config = {
        "join": job.join,
        "planner": job.planner,
        "maxSources": job.max_sources,
        "heartbeatSeconds": job.probe_interval_s,
        "failureTimeoutSeconds": job.failure_timeout_s,
        "federationPeers": list(job.peers),
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(job, f"{job.name}-config"),
            "data": {"job.json": json.dumps(config, sort_keys=True)}}  # fmt: skip


def service_account_name(job: JobSpec, index: int) -> str:
    return pod_name(job, index)


def build_service_account(job: JobSpec, index: int) -> dict[str, Any]:
    """Each pod runs as its own identity, so a Role can name the one pod it may patch: with a
    shared identity, the union of every pod's Role would let any sidecar patch any pod."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(job, service_account_name(job, index)),
    }


def build_pod_role(job: JobSpec, index: int) -> dict[str, Any]:
    """Pod ``index``'s sidecar reads pods (of the namespace: RBAC cannot filter by label) and
    patches its own pod (the report annotation); nothing else."""
    name = pod_name(job, index)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(job, name),
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods"], "resourceNames": [name], "verbs": ["patch"]},
        ],
    }


def build_role_binding(job: JobSpec, index: int) -> dict[str, Any]:
    name = pod_name(job, index)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(job, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": service_account_name(job, index), "namespace": job.namespace}
        ],
    }


def pod_name(job: JobSpec, index: int) -> str:
    return f"{job.name}-{index}"


def build_pod(job: JobSpec, index: int) -> dict[str, Any]:
    """The user's template plus the injected sidecar, the shared snapshot volume and env."""
    template = copy.deepcopy(job.template)
    pod_spec = template.get("spec", {})
    name = pod_name(job, index)
    meta = _meta(job, name)
    meta["labels"] = {
        **(template.get("metadata") or {}).get("labels", {}),
        **labels(job),
        INDEX_LABEL: str(index),
    }
    volume = {"name": "chaos-snapshots", "emptyDir": {"medium": "Memory"}}
    mount = {"name": "chaos-snapshots", "mountPath": SNAPSHOT_DIR}
    env = [
        {"name": "CHAOS_JOB", "value": job.name},
        {"name": "CHAOS_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "CHAOS_SNAPSHOT_DIR", "value": SNAPSHOT_DIR},
        {"name": "CHAOS_SIDECAR_URL", "value": f"http://127.0.0.1:{PEER_PORT}"},
    ]
    for container in pod_spec.get("containers", []):
        container.setdefault("env", []).extend(copy.deepcopy(env))
        container.setdefault("volumeMounts", []).append(dict(mount))
    sidecar = {
        "name": "chaos-sidecar",
        "image": SIDECAR_IMAGE,
        "args": [
            "--node-id",
            name,
            "--host",
            "0.0.0.0",
            "--port",
            str(PEER_PORT),
            "--advertise",
            f"http://{name}.{job.name}.{job.namespace}.svc:{PEER_PORT}",
            "--secret-file",
            "/var/run/chaos/secret/join-secret",
            "--snapshot-dir",
            SNAPSHOT_DIR,
            "--heartbeat-s",
            str(job.probe_interval_s),
            "--suspect-timeout-s",
            str(job.failure_timeout_s),
        ],
        "env": env[:2],
        "ports": [{"name": "peer", "containerPort": PEER_PORT}],
        "volumeMounts": [
            mount,
            {"name": "chaos-secret", "mountPath": "/var/run/chaos/secret", "readOnly": True},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": PEER_PORT}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": PEER_PORT}, "periodSeconds": 10},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    if job.peers:
        sidecar["env"].append({"name": "CHAOS_FEDERATION_PEERS", "value": ",".join(job.peers)})
    pod_spec.setdefault("containers", []).append(sidecar)
    pod_spec.setdefault("volumes", []).extend([
        volume,
        {"name": "chaos-secret", "secret": {"secretName": job.secret_name, "defaultMode": SECRET_FILE_MODE,
                                            "items": [{"key": job.join_secret_key, "path": "join-secret"}]}},
    ])  # fmt: skip
    pod_spec["serviceAccountName"] = service_account_name(job, index)
    pod_spec["hostname"] = name
    pod_spec["subdomain"] = job.name
    pod_spec.setdefault("restartPolicy", "Never")  # a failed member is replaced, not restarted in place
    pod_spec, _ = harden_pod(pod_spec)  # restricted Pod Security Standard; warnings: pod_security_warnings
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
