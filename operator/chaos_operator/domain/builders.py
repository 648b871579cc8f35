"""Desired Kubernetes objects for a job: pure ``build_*`` functions returning plain dicts."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from chaos_operator.domain.security import SECRET_FILE_MODE, harden_pod
from chaos_operator.domain.spec import PLACEHOLDER, JobSpec
from chaos_sidecar import trainer_env
from chaos_sidecar.pod_contract import (
    CHECKPOINT_MOUNT,
    CONFIG_KEY,
    GROUP,
    HOST_IP,
    INDEX_LABEL,
    JOB_LABEL,
    NODE_NAME,
    PARTY_KEY_FILE,
    PARTY_MOUNT,
    PEER_PORT,
    POD_IP,
    POD_NAMESPACE,
    POLICY_FILE,
    POLICY_MOUNT,
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


def build_pod_service(job: JobSpec, index: int) -> dict[str, Any] | None:
    """``spec.federation.expose``: pod ``index``'s own Service of the chosen type (NodePort,
    LoadBalancer), None for ClusterIP. It selects the one pod by its job and index labels (a
    replacement pod of the same index gets the same Service, so its address survives), lists
    it before it is ready (a joiner must be reached), and keeps the client's source address
    (``externalTrafficPolicy: Local``: the NetworkPolicy matches the outside parties by address,
    and the advertised node is the pod's own)."""
    if not job.expose.outside:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, pod_name(job, index)),
        "spec": {
            "type": job.expose.type,
            "selector": {JOB_LABEL: job.name, INDEX_LABEL: str(index)},
            "publishNotReadyAddresses": True,
            "externalTrafficPolicy": "Local",
            "ports": [{"name": "peer", "protocol": "TCP", "port": PEER_PORT, "targetPort": PEER_PORT}],
        },
    }


class AddressPending(Exception):
    """The advertised address needs what the pod's Service does not have yet (its nodePort, its
    load balancer's ingress address): the pod is created once it has."""


# placeholders the kubelet fills from the sidecar container's downward-API env
_FROM_ENV = {"podIP": (POD_IP, "status.podIP"), "hostIP": (HOST_IP, "status.hostIP"),
             "node": (NODE_NAME, "spec.nodeName")}  # fmt: skip


def advertise_url(job: JobSpec, index: int, service: dict[str, Any] | None = None) -> str:
    """The URL pod ``index``'s sidecar advertises (``--advertise``): ``spec.federation.expose``'s
    template with ``{pod}``, ``{index}``, ``{job}``, ``{namespace}`` filled in, ``{podIP}``,
    ``{hostIP}``, ``{node}`` as the kubelet's ``$(VAR)`` references, ``{port}`` the port other
    sites connect to (the peer port; a NodePort Service's ``nodePort``) and ``{address}`` the
    LoadBalancer's ingress IP or host name. ``service``: the pod's Service as the API has it.
    Raises :class:`AddressPending` when the Service has not got what the template needs."""
    ports = ((service or {}).get("spec") or {}).get("ports") or []
    node_port = next((p.get("nodePort") for p in ports if p.get("name") == "peer"), None)
    ingress = ((((service or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress")) or [{}]
    values = {"pod": pod_name(job, index), "index": str(index), "job": job.name,
              "namespace": job.namespace, "port": str(PEER_PORT),
              "address": ingress[0].get("ip") or ingress[0].get("hostname")}  # fmt: skip
    values |= {name: f"$({env})" for name, (env, _) in _FROM_ENV.items()}
    if job.expose.type == "NodePort":
        values["port"] = str(node_port) if node_port else None

    def fill(match) -> str:
        value = values[match.group(1)]
        if value is None:
            missing = {"port": "nodePort", "address": "load balancer ingress address"}[match.group(1)]
            raise AddressPending(f"Service {pod_name(job, index)} has no {missing} yet")
        return value

    return PLACEHOLDER.sub(fill, job.expose.template)


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


def is_pod_name(job: JobSpec, name: str) -> bool:
    """Whether ``name`` is one :func:`pod_name` gives this job (for some index)."""
    prefix = f"{job.name}-"
    index = name.removeprefix(prefix)
    return name.startswith(prefix) and index.isascii() and index.isdigit()


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
    if job.expose.template != "http://{podIP}:{port}":  # gloo binds the pod's IP, not the advertised host
        env.append({"name": trainer_env.ADDRESS, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    if job.checkpoint is not None:
        env += [
            {"name": trainer_env.CHECKPOINT_DIR, "value": CHECKPOINT_MOUNT},
            {"name": trainer_env.CHECKPOINT_EVERY, "value": str(job.checkpoint.every_steps)},
            {"name": trainer_env.CHECKPOINT_KEEP, "value": str(job.checkpoint.keep)},
        ]
    return env


CHECKPOINT_VOLUME = "chaos-checkpoints"
STATE_VOLUME = "chaos-state"
PARTY_VOLUME = "chaos-party-key"
POLICY_VOLUME = "chaos-admission-policy"


def build_pod(
    job: JobSpec,
    index: int,
    *,
    founding: bool = False,
    seed: bool | None = None,
    sidecar_image: str = SIDECAR_IMAGE,
    advertise: str | None = None,
) -> dict[str, Any]:
    """The user's template plus the injected sidecar, the shared snapshot volume and env.

    ``founding``: the pod belongs to a first view (created before any sidecar reported a view,
    or after every pod of the job was gone): its trainer starts from the script's initial
    state or the newest checkpoint; ``seed`` (default: founding index 0) founds the group. Any
    later pod joins and pulls the state from the members. ``advertise``: what the sidecar
    advertises (:func:`advertise_url` with the pod's Service), by default the template filled
    without one (raises :class:`AddressPending` when it needs the Service)."""
    seed = founding and index == 0 if seed is None else seed
    advertise = advertise_url(job, index) if advertise is None else advertise

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
        suspect_timeout_s=job.failure_timeout_s, peers=job.peers, advertise=advertise,
        party=job.party is not None,
        allow_cleartext_collectives=job.party is not None and job.party.allow_cleartext_collectives,
    )  # fmt: skip
    referenced = {name for name in PLACEHOLDER.findall(job.expose.template) if name in _FROM_ENV}
    sidecar = {
        "name": "chaos-sidecar",
        "image": sidecar_image,
        "command": ["chaos-train", "sidecar"],
        "args": sidecar_args(contract),
        "env": [
            {"name": POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": POD_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]
        + [
            {"name": env, "valueFrom": {"fieldRef": {"fieldPath": path}}}
            for name, (env, path) in _FROM_ENV.items()
            if name in referenced and env != POD_IP
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
    if job.party is not None:  # read-only, the sidecar's alone
        sidecar["volumeMounts"] += [
            {"name": PARTY_VOLUME, "mountPath": PARTY_MOUNT, "readOnly": True},
            {"name": POLICY_VOLUME, "mountPath": POLICY_MOUNT, "readOnly": True},
        ]
    pod_spec.setdefault("containers", []).append(sidecar)
    pod_spec.setdefault("volumes", []).extend([
        volume,
        {"name": "chaos-secret", "secret": {"secretName": job.secret_name, "defaultMode": SECRET_FILE_MODE,
                                            "items": [{"key": job.join_secret_key, "path": "join-secret"}]}},
        # the sidecar's durable membership state: on the node's disk, it outlives a restarted
        # container (not the pod: a replacement pod's sidecar is a new incarnation); a few KiB
        {"name": STATE_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
    ])  # fmt: skip
    if job.party is not None:  # the private key: owner and fsGroup (the sidecar) only, as the join secret
        pod_spec["volumes"] += [
            {"name": PARTY_VOLUME, "secret": {"secretName": job.party.key_secret_name,
             "defaultMode": SECRET_FILE_MODE,
             "items": [{"key": job.party.key_secret_key, "path": PARTY_KEY_FILE.rsplit("/", 1)[1]}]}},
            {"name": POLICY_VOLUME, "configMap": {"name": job.party.policy_configmap_name,
             "defaultMode": 0o444,
             "items": [{"key": job.party.policy_configmap_key, "path": POLICY_FILE.rsplit("/", 1)[1]}]}},
        ]  # fmt: skip
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
