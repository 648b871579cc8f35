"""End-to-end against a real Kubernetes cluster (KUBECONFIG); skipped without one.

Runs the operator in-process against the cluster, applies the CRD and the minimal example,
waits for its pods, scales through the scale subresource, deletes a pod and watches it come
back, then deletes the job. Pods need not become Ready (the images may not be pullable
there): the operator's side of the contract is what is checked. Set CHAOS_E2E_NAMESPACE to
choose the namespace (default: default).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest
import yaml

KUBECONFIG = os.environ.get("KUBECONFIG")
pytestmark = [
    pytest.mark.skipif(
        not KUBECONFIG, reason="e2e: KUBECONFIG is not set; these tests need a real Kubernetes cluster"
    ),
    pytest.mark.timeout(600),
]
ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = os.environ.get("CHAOS_E2E_NAMESPACE", "default")
GROUP, VERSION, PLURAL = "chaostraining.io", "v1alpha1", "chaostrainingjobs"


async def _until(what: str, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(1.0)


async def test_operator_on_a_real_cluster() -> None:
    import kopf
    from kubernetes import client, config, utils

    import chaos_operator.main  # noqa: F401 - registers the handlers
    from chaos_operator import kube

    config.load_kube_config(config_file=KUBECONFIG)
    api = client.ApiClient()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    with contextlib.suppress(utils.FailToCreateError):
        utils.create_from_yaml(api, str(ROOT / "crds" / "chaostrainingjobs.yaml"))
    kube.connect()
    stop = asyncio.Event()
    task = asyncio.create_task(kopf.operator(namespaces=[NAMESPACE], standalone=True, stop_flag=stop))
    job = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    job["metadata"]["name"] = name = f"e2e-{int(time.time())}"
    selector = f"{GROUP}/job={name}"

    def pods() -> list:
        return core.list_namespaced_pod(NAMESPACE, label_selector=selector).items

    try:
        await asyncio.sleep(3)  # let the operator start watching (it catches up either way)
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, job)
        await _until("3 pods", lambda: len(pods()) == 3)
        status = await _until(
            "status",
            lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name).get(
                "status"
            ),
        )
        assert status.get("selector") == selector
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, NAMESPACE, PLURAL, name, {"spec": {"replicas": 5}}
        )
        await _until("5 pods after kubectl-scale", lambda: len(pods()) == 5)
        victim = pods()[0].metadata.name
        core.delete_namespaced_pod(victim, NAMESPACE)
        await _until(
            "the deleted pod replaced",
            lambda: len([p for p in pods() if not p.metadata.deletion_timestamp]) == 5,
        )
    finally:
        with contextlib.suppress(client.ApiException):
            custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        stop.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
