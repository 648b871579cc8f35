"""End-to-end checks against a real Kubernetes cluster (KUBECONFIG); skipped without one.

The operator does not exist yet (issue 8); until then this suite only proves the cluster it
was pointed at is reachable, so a run with KUBECONFIG set fails loudly instead of passing
on nothing.
"""

from __future__ import annotations

import os

import pytest

KUBECONFIG = os.environ.get("KUBECONFIG")
pytestmark = pytest.mark.skipif(
    not KUBECONFIG, reason="e2e: KUBECONFIG is not set; these tests need a real Kubernetes cluster"
)


def test_cluster_is_reachable() -> None:
    from kubernetes import client, config

    config.load_kube_config(config_file=KUBECONFIG)
    namespaces = client.CoreV1Api().list_namespace(limit=1)
    assert namespaces.items is not None
