"""The pod's contract: what the operator's pod builder writes and the sidecar reads.

One module imported by both sides (``chaos_operator.domain.builders`` and the sidecar's
``--kube-job`` mode), so the sidecar's command line, the names of the labels, the report
annotation and its format are never string literals repeated on each side:

- :func:`sidecar_args` builds the sidecar container's arguments; the tests feed its output,
  through ``build_pod`` for every example manifest, to the real ``chaos-train sidecar`` parser.
- :func:`encode_report` / :func:`parse_report` are the ``chaostraining.io/report`` annotation a
  sidecar writes on its own pod and the operator folds into the job's status.

The trainer container's environment is the other half of the contract:
:mod:`chaos_sidecar.trainer_env`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chaos_sidecar.errors import InputError

GROUP = "chaostraining.io"
JOB_LABEL = f"{GROUP}/job"  # on every object of a job; pods are listed by it
INDEX_LABEL = f"{GROUP}/index"  # the pod's index in <job>-<index>
REPORT_ANNOTATION = f"{GROUP}/report"  # written by the pod's own sidecar only
CONFIG_KEY = "job.json"  # the key of the job's ConfigMap <job>-config (carries "replicas")

PEER_PORT = 7070
SNAPSHOT_MOUNT = "/var/run/chaos/snapshots"  # the emptyDir{medium: Memory} both containers share
SECRET_MOUNT = "/var/run/chaos/secret"
# the sidecar's durable membership state (--state-dir): an emptyDir of the pod, on the node's
# disk. It outlives the sidecar container (a container restarted in place finds its promises),
# not the pod; a replacement pod is a new object with a fresh volume, so its sidecar starts as
# a new incarnation (docs/membership.md), which is safe by construction
STATE_MOUNT = "/var/run/chaos/state"
# spec.checkpoint's volume in the trainer containers (CHAOS_CHECKPOINT_DIR)
CHECKPOINT_MOUNT = "/var/run/chaos/checkpoints"
SECRET_FILE = f"{SECRET_MOUNT}/join-secret"
# spec.federation.party: the party's private key (a Secret) and the job's admission policy (a
# ConfigMap), each mounted read-only in the sidecar container alone
PARTY_MOUNT = "/var/run/chaos/party"
PARTY_KEY_FILE = f"{PARTY_MOUNT}/party.key"
POLICY_MOUNT = "/var/run/chaos/policy"
POLICY_FILE = f"{POLICY_MOUNT}/policy.yaml"

# the sidecar container's environment (downward API), referenced by its arguments as $(NAME)
POD_IP = "CHAOS_POD_IP"  # status.podIP: the address the sidecar advertises
POD_NAMESPACE = "CHAOS_POD_NAMESPACE"  # metadata.namespace: where its job's pods are listed
# spec.federation.expose's advertised address may name the pod's node (a NodePort's address)
HOST_IP = "CHAOS_HOST_IP"  # status.hostIP
NODE_NAME = "CHAOS_NODE_NAME"  # spec.nodeName
# optional: the Kubernetes API's base URL; without it the sidecar uses the in-cluster service
# (https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT with the service account's CA).
# Test harnesses point it at an API emulator.
KUBE_API = "CHAOS_KUBE_API"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

REPORT_MAX_BYTES = 8192  # a larger annotation is refused by the operator (and never written)
MAX_REPORT_EVENTS = 8
EVENT_KINDS = ("join", "leave", "change", "transfer")


@dataclass(frozen=True)
class SidecarPod:
    """What the sidecar of one pod is told on its command line."""

    job: str
    node_id: str  # the pod's name
    seed: bool = False  # founds the group (the first view's lowest index)
    heartbeat_s: float = 0.1
    suspect_timeout_s: float = 1.0
    peers: tuple[str, ...] = ()  # federation contact points, "id=URL"
    state_dir: str | None = STATE_MOUNT  # --state-dir: the pod's volume for the durable state
    # --advertise: the URL other nodes reach this one at (None: the pod's IP, in-cluster only);
    # may refer to the container's downward-API env as $(NAME)
    advertise: str | None = None
    party: bool = False  # --party-key PARTY_KEY_FILE --admission-policy POLICY_FILE
    allow_cleartext_collectives: bool = False  # with party: --allow-cleartext-collectives


def sidecar_args(pod: SidecarPod) -> list[str]:
    """The sidecar container's arguments (after ``chaos-train sidecar``).

    It listens on every interface and advertises the pod's IP (``$(CHAOS_POD_IP)``, expanded
    by the kubelet from the container's downward-API env) or, for a job reached from other
    sites, ``pod.advertise``; ``--kube-job`` makes it find its
    job's pods through the API (read-only, with the pod's own service account) as contacts,
    and report its view on its own pod; ``--state-dir`` keeps its membership state on the
    pod's volume across container restarts. A member of the first view other than the seed joins
    at once; a later pod joins when its trainer asks (``--defer-join``)."""
    args = [
        "--node-id", pod.node_id,
        "--host", "0.0.0.0",
        "--port", str(PEER_PORT),
        "--advertise", pod.advertise or f"http://$({POD_IP}):{PEER_PORT}",
        "--secret-file", SECRET_FILE,
        "--snapshot-dir", SNAPSHOT_MOUNT,
        "--heartbeat-s", _number(pod.heartbeat_s),
        "--suspect-timeout-s", _number(pod.suspect_timeout_s),
        "--kube-job", pod.job,
    ]  # fmt: skip
    if pod.state_dir:
        args += ["--state-dir", pod.state_dir]
    if pod.seed:
        args.append("--seed")
    if pod.peers:
        args += ["--peers", ",".join(pod.peers)]
    if pod.party:
        args += ["--party-key", PARTY_KEY_FILE, "--admission-policy", POLICY_FILE]
        if pod.allow_cleartext_collectives:
            args.append("--allow-cleartext-collectives")
    return args


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def encode_report(
    *,
    job: str,
    pod: str,
    epoch: int | None,
    members: list[str],
    coordinator: str | None,
    step: int | None,
    released: bool,
    events: list[dict[str, Any]],
) -> str:
    """The annotation's value (compact JSON, at most REPORT_MAX_BYTES: oldest events dropped)."""
    report: dict[str, Any] = {"job": job, "pod": pod, "released": released}
    report["events"] = events[-MAX_REPORT_EVENTS:]
    if epoch is not None:
        report["view"] = {"epoch": epoch, "members": members, "coordinator": coordinator}
    if step is not None:
        report["step"] = step
    text = json.dumps(report, separators=(",", ":"), sort_keys=True)
    while len(text.encode()) > REPORT_MAX_BYTES and report["events"]:
        report["events"] = report["events"][1:]
        text = json.dumps(report, separators=(",", ":"), sort_keys=True)
    return text


def parse_report(text: str, *, job: str, pod: str) -> dict[str, Any]:
    """A pod's report, checked: JSON object, size, this job's and this pod's, typed fields.

    Raises :class:`InputError` naming the field; the operator ignores such a report (with a
    warning Event and a metric) instead of folding it."""
    if len(text.encode()) > REPORT_MAX_BYTES:
        raise InputError("report", f"{len(text.encode())} bytes, more than {REPORT_MAX_BYTES}")
    try:
        report = json.loads(text)
    except ValueError as exc:
        raise InputError("report", f"not JSON: {exc}") from None
    if not isinstance(report, dict):
        raise InputError("report", "expected a JSON object")
    if report.get("job") != job:
        raise InputError("report.job", f"names job {report.get('job')!r}, the pod belongs to {job!r}")
    if report.get("pod") != pod:
        raise InputError("report.pod", f"names pod {report.get('pod')!r}, written on {pod!r}")
    if not isinstance(report.get("released", False), bool):
        raise InputError("report.released", "expected a boolean")
    step = report.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise InputError("report.step", f"expected a non-negative integer, got {step!r}")
    view = report.get("view")
    if view is not None:
        if not isinstance(view, dict):
            raise InputError("report.view", "expected an object")
        epoch = view.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InputError("report.view.epoch", f"expected a non-negative integer, got {epoch!r}")
        members = view.get("members")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise InputError("report.view.members", "expected a list of pod names")
        if not isinstance(view.get("coordinator"), str | None):
            raise InputError("report.view.coordinator", "expected a string")
    events = report.get("events", [])
    if not isinstance(events, list) or not all(
        isinstance(e, dict) and e.get("kind") in EVENT_KINDS and isinstance(e.get("epoch"), int)
        for e in events
    ):
        raise InputError("report.events", f"expected a list of {{kind in {EVENT_KINDS}, epoch}}")
    return report
