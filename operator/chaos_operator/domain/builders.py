"""Desired Kubernetes objects for a job: pure ``build_*`` functions returning plain dicts."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from chaos_operator.domain.security import SECRET_FILE_MODE, harden_pod
from chaos_operator.domain.spec import JobSpec
from chaos_sidecar import trainer_env
from chaos_sidecar.pod_contract import (
    CHECKPOINT_MOUNT,
    CONFIG_KEY,
    GROUP,
    INDEX_LABEL,
    JOB_LABEL,
    PEER_PORT,
    POD_IP,
    POD_NAMESPACE,
    REPORT_ANNOTATION,
    SECRET_MOUNT,
    STATE_MOUNT,
    SidecarPod,
    sidecar_args,
)
from chaos_sidecar.pod_contract import SNAPSHOT_MOUNT as SNAPSHOT_DIR

__all__ = [
    "GROUP", "INDEX_LABEL", "JOB_LABEL", "PEER_PORT", "REPORT_ANNOTATION", "SNAPSHOT_DIR", "STATE_MOUNT",
]  # fmt: skip
SIDECAR_IMAGE = "ghcr.io/chaos-training/sidecar:0.1.0"  # the Dockerfile's target "sidecar"


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
        "heartbeatSeconds": job.probe_interval_s,
        "failureTimeoutSeconds": job.failure_timeout_s,
        "federationPeers": list(job.peers),
        "replicas": job.desired,  # the size the owner asked for: the sidecars scale in to it
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(job, f"{job.name}-config"),
            "data": {CONFIG_KEY: json.dumps(config, sort_keys=True)}}  # fmt: skip


def build_join_secret(job: JobSpec, secret: str) -> dict[str, Any]:
    """The job's join secret (the caller draws ``secret`` at random; created once, never
    overwritten); not built when ``federation.joinSecretRef`` names the user's own Secret."""
    value = base64.b64encode(secret.encode()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": _meta(job, job.secret_name),
            "data": {job.join_secret_key: value}}  # fmt: skip


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
            # the size the owner asked for (scale-in), from the job's ConfigMap only
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [f"{job.name}-config"],
                "verbs": ["get"],
            },
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


def trainer_environment(job: JobSpec, *, founding: bool) -> list[dict[str, Any]]:
    """The trainer's configuration (:mod:`chaos_sidecar.trainer_env`): its node id is the pod's
    name (downward API), its sidecar is on loopback, the snapshot volume is shared; with
    ``spec.checkpoint``, where and how often it keeps checkpoints."""
    env = [
        {"name": trainer_env.NODE_ID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": trainer_env.SIDECAR_URL, "value": f"http://127.0.0.1:{PEER_PORT}"},
        {"name": trainer_env.SNAPSHOT_DIR, "value": SNAPSHOT_DIR},
        {"name": trainer_env.FOUNDING, "value": "1" if founding else "0"},
        {"name": trainer_env.JOIN_MODE, "value": job.join},
    ]
    if job.checkpoint is not None:
        env += [
            {"name": trainer_env.CHECKPOINT_DIR, "value": CHECKPOINT_MOUNT},
            {"name": trainer_env.CHECKPOINT_EVERY, "value": str(job.checkpoint.every_steps)},
            {"name": trainer_env.CHECKPOINT_KEEP, "value": str(job.checkpoint.keep)},
        ]
    return env


CHECKPOINT_VOLUME = "chaos-checkpoints"
STATE_VOLUME = "chaos-state"


def build_pod(
    job: JobSpec,
    index: int,
    *,
    founding: bool = False,
    seed: bool | None = None,
    sidecar_image: str = SIDECAR_IMAGE,
) -> dict[str, Any]:
    """The user's template plus the injected sidecar, the shared snapshot volume and env.

    ``founding``: the pod belongs to a first view (created before any sidecar reported a view,
    or after every pod of the job was gone): its trainer starts from the script's initial
    state or the newest checkpoint; ``seed`` (default: founding index 0) founds the group. Any
    later pod joins and pulls the state from the members."""
    seed = founding and index == 0 if seed is None else seed

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
    env = trainer_environment(job, founding=founding)
    checkpoints = job.checkpoint
    for container in pod_spec.get("containers", []):
        # ours first: the template's own env may refer to them as $(CHAOS_NODE_ID)
        container["env"] = copy.deepcopy(env) + list(container.get("env") or [])
        container.setdefault("volumeMounts", []).append(dict(mount))
        if checkpoints is not None:
            container["volumeMounts"].append(
                {"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_MOUNT, "subPath": checkpoints.sub_path}
            )
    contract = SidecarPod(
        job=job.name, node_id=name, seed=seed, heartbeat_s=job.probe_interval_s,
        suspect_timeout_s=job.failure_timeout_s, peers=job.peers,
    )  # fmt: skip
    sidecar = {
        "name": "chaos-sidecar",
        "image": sidecar_image,
        "command": ["chaos-train", "sidecar"],
        "args": sidecar_args(contract),
        "env": [
            {"name": POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": POD_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [{"name": "peer", "containerPort": PEER_PORT}],
        "volumeMounts": [
            mount,
            {"name": "chaos-secret", "mountPath": SECRET_MOUNT, "readOnly": True},
            {"name": STATE_VOLUME, "mountPath": STATE_MOUNT},
        ],
        # a busy node answers slower than the kubelet's default of 1 s
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": PEER_PORT},
            "periodSeconds": 2,
            "timeoutSeconds": 3,
        },
        # a sidecar still looking for a peer is not listening yet: NotReady (with a log line)
        # generous delay: a sidecar still discovering its first peer does not listen yet
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": PEER_PORT},
            "periodSeconds": 10,
            "initialDelaySeconds": 600,
        },
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    pod_spec.setdefault("containers", []).append(sidecar)
    pod_spec.setdefault("volumes", []).extend([
        volume,
        {"name": "chaos-secret", "secret": {"secretName": job.secret_name, "defaultMode": SECRET_FILE_MODE,
                                            "items": [{"key": job.join_secret_key, "path": "join-secret"}]}},
        # the sidecar's durable membership state: on the node's disk, it outlives a restarted
        # container (not the pod: a replacement pod's sidecar is a new incarnation); a few KiB
        {"name": STATE_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
    ])  # fmt: skip
    if checkpoints is not None:  # every member reaches it (ReadWriteMany); one writes at a time
        pod_spec["volumes"].append(
            {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": checkpoints.claim_name}}
        )
    pod_spec["serviceAccountName"] = service_account_name(job, index)
    pod_spec["hostname"] = name
    pod_spec["subdomain"] = job.name
    pod_spec.setdefault("restartPolicy", "Never")  # a failed member is replaced, not restarted in place
    pod_spec, _ = harden_pod(pod_spec)  # restricted Pod Security Standard; warnings: pod_security_warnings
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
