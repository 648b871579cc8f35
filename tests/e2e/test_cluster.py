"""End-to-end against a real Kubernetes cluster (KUBECONFIG); skipped without one.

The scenario of ``tests/e2e_local`` on a cluster, with the operator in-process: apply the CRD
and a 3-replica job -> pods become Ready and train -> scale to 5 through the scale subresource
-> the joiners pull from several members -> scale to 3 -> exactly the two released pods are
deleted -> crash a pod (force-deleted with no grace: its processes die at once) -> the group
heals and the operator replaces it -> stop the operator, crash a member and add a pod by hand
-> restart the operator, status catches up -> delete the job, every pod goes. The trainers'
event logs (``CHAOS_EVENT_LOG=/dev/stdout``, read through the pods' logs while they live) show
identical replicas and no sample lost or duplicated.

The images must be pullable by the cluster: ``CHAOS_E2E_TRAINER_IMAGE`` (default the
Dockerfile's ``trainer`` target, ``ghcr.io/chaos-training/trainer:0.1.0``) and
``CHAOS_SIDECAR_IMAGE`` (the operator's setting). ``CHAOS_E2E_NAMESPACE`` chooses the namespace
(default: default). Not run on these machines (no cluster); written to the same steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaos_sidecar import eventlog
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import Kind, Record
from polling import until

KUBECONFIG = os.environ.get("KUBECONFIG")
pytestmark = [
    pytest.mark.skipif(
        not KUBECONFIG, reason="e2e: KUBECONFIG is not set; these tests need a real Kubernetes cluster"
    ),
    pytest.mark.timeout(900),
]
ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = os.environ.get("CHAOS_E2E_NAMESPACE", "default")
TRAINER_IMAGE = os.environ.get("CHAOS_E2E_TRAINER_IMAGE", "ghcr.io/chaos-training/trainer:0.1.0")
GROUP, VERSION, PLURAL = "chaostraining.io", "v1alpha1", "chaostrainingjobs"


def _until(what: str, check):
    """A real cluster's pods take their time: three minutes, looked at every second."""
    return until(what, check, timeout=180.0, every_s=1.0)


class Logs:
    """Collects the trainers' event logs (JSON lines on stdout) while their pods live."""

    def __init__(self, core, selector: str) -> None:
        self.core, self.selector = core, selector
        self.by_pod: dict[str, str] = {}  # pod uid -> its trainer's log so far
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(2.0):
            with contextlib.suppress(Exception):
                self.collect()

    def collect(self) -> None:
        for pod in self.core.list_namespaced_pod(NAMESPACE, label_selector=self.selector).items:
            with contextlib.suppress(Exception):
                text = self.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE, container="trainer")
                self.by_pod[pod.metadata.uid] = text

    def records(self) -> list[Record]:
        out = []
        for text in list(self.by_pod.values()):
            for line in text.splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(InputError):  # the user's script may print JSON too
                        out.append(eventlog.parse(line, "trainer log"))
        return sorted(out, key=lambda r: r.t)


async def test_operator_on_a_real_cluster() -> None:
    import kopf
    from kubernetes import client, config, utils

    import chaos_operator.main  # noqa: F401 - registers the handlers
    from chaos_lab.jobreport import check_replicas, check_samples
    from chaos_operator import kube
    from chaos_operator.domain import builders
    from chaos_operator.domain.spec import parse_job

    config.load_kube_config(config_file=KUBECONFIG)
    api = client.ApiClient()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    with contextlib.suppress(utils.FailToCreateError):
        utils.create_from_yaml(api, str(ROOT / "crds" / "chaostrainingjobs.yaml"))
    kube.connect()
    job = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    job["metadata"]["name"] = name = f"e2e-{int(time.time())}"
    job["spec"].update(replicas=3, minReplicas=1, maxReplicas=8)
    trainer = job["spec"]["template"]["spec"]["containers"][0]
    trainer["image"] = TRAINER_IMAGE
    trainer["command"] += ["--steps", "1000000"]
    trainer["env"] = [
        {"name": "CHAOS_EVENT_LOG", "value": "/dev/stdout"},
        {"name": "CHAOS_DIGEST_EVERY", "value": "5"},
    ]
    selector = f"{GROUP}/job={name}"
    logs = Logs(core, selector)

    def status() -> dict[str, Any]:
        return (
            custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name).get("status") or {}
        )

    def pods() -> dict[str, Any]:
        items = core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        return {p.metadata.name: p for p in items if not p.metadata.deletion_timestamp}

    def view_is(members: set[str], after: int = 0):
        def check():
            s = status()
            view = s.get("view") or {}
            ready = {
                n for n, p in pods().items()
                if p.status.phase == "Running" and all(c.ready for c in p.status.container_statuses or [])
            }  # fmt: skip
            ok = set(view.get("members") or []) == members and view.get("epoch", 0) > after
            return s if ok and s.get("phase") == "Running" and members <= ready else None

        return _until(f"a view of {sorted(members)}", check)

    def scale(n: int) -> None:
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, NAMESPACE, PLURAL, name, {"spec": {"replicas": n}}
        )

    def operator() -> tuple[asyncio.Task, asyncio.Event]:
        stop = asyncio.Event()
        return asyncio.create_task(
            kopf.operator(namespaces=[NAMESPACE], standalone=True, stop_flag=stop)
        ), stop

    async def halt(task: asyncio.Task, stop: asyncio.Event) -> None:
        stop.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 30)

    task, stop = operator()
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, job)
        founders = {f"{name}-{i}" for i in range(3)}
        s = await view_is(founders)
        assert s["selector"] == selector and s["members"] == 3
        scale(5)
        five = founders | {f"{name}-3", f"{name}-4"}
        await view_is(five)

        def pulled():
            logs.collect()
            got = [r for r in logs.records() if r.kind is Kind.PULLED and r.node in five - founders]
            return got if {r.node for r in got} == five - founders else None

        pulls = await _until("the joiners' pulls", pulled)
        assert all(len([b for b in r["per_source"].values() if b > 0]) >= 2 for r in pulls), pulls
        before = set(pods())
        scale(3)

        def three() -> set[str] | None:
            names = set(pods())
            return names if len(names) == 3 else None

        remaining = await _until("3 pods", three)
        assert len(before - remaining) == 2
        s = await view_is(remaining)
        victim = sorted(remaining - {s["view"]["coordinator"]})[0]
        core.delete_namespaced_pod(victim, NAMESPACE, grace_period_seconds=0)
        s = await view_is(remaining, after=s["view"]["epoch"] + 1)
        await halt(task, stop)
        frozen = status()
        crashed = sorted(remaining - {s["view"]["coordinator"]})[-1]
        core.delete_namespaced_pod(crashed, NAMESPACE, grace_period_seconds=0)
        spec = parse_job(custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name))
        for obj in (builders.build_service_account(spec, 7), builders.build_pod_role(spec, 7),
                    builders.build_role_binding(spec, 7), builders.build_pod(spec, 7)):  # fmt: skip
            utils.create_from_dict(api, obj, namespace=NAMESPACE)
        members = (remaining - {crashed}) | {f"{name}-7"}

        def joined():
            logs.collect()
            return any(r.kind is Kind.REGROUP and set(r["members"]) == members for r in logs.records())

        await _until("the hand-made pod to join with the operator down", joined)
        assert status() == frozen
        task, stop = operator()
        s = await view_is(members, after=frozen["view"]["epoch"])
        assert s["step"] > frozen.get("step", 0)
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        await _until(
            "every pod gone", lambda: not core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        )
    finally:
        logs.stop.set()
        with contextlib.suppress(client.ApiException):
            custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        await halt(task, stop)
    records = logs.records()
    identical, compared, problems = check_replicas(records)
    assert identical and compared >= 1, problems
    last = max(r["step"] for r in records if r.kind is Kind.STEP)
    samples = check_samples(records, last)
    assert samples["samples_lost"] == 0 and samples["samples_duplicated"] == 0, samples
