"""The operator (Kopf, in-process, against kmock) creates each job's NetworkPolicy, builds restricted
pods, and reports a template that breaks "restricted" as a PodSecurity condition and an Event."""

from __future__ import annotations

import base64

import pytest
import test_operator_kmock as base
from test_operator_kmock import JOBS, Cluster, _job

pytestmark = pytest.mark.timeout(120)
cluster = base.cluster  # the fixture: Kopf in-process against kmock
POLICY = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/mnist-minimal-members"


async def _condition(cluster: Cluster, kind: str):
    status = (await cluster.get(f"{JOBS}/mnist-minimal")).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


async def test_the_job_gets_its_network_policy_and_restricted_pods(cluster: Cluster) -> None:
    assert await cluster.send("POST", JOBS, _job(2)) in (200, 201)
    condition = await cluster.until("PodSecurity condition", lambda: _condition(cluster, "PodSecurity"))
    assert condition["status"] == "True", condition
    network = await _condition(cluster, "NetworkPolicy")
    assert network["status"] == "True" and network["reason"] == "Complete", network
    policy = await cluster.get(POLICY)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"chaostraining.io/job": "mnist-minimal"}}
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "ChaosTrainingJob"
    pods = await cluster.until("pods", cluster.pods)
    assert pods[0]["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


async def test_a_template_against_restricted_is_kept_and_reported(cluster: Cluster) -> None:
    job = _job(1)
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    job["spec"]["networkPolicy"] = {"enabled": False}
    assert await cluster.send("POST", JOBS, job) in (200, 201)

    async def warned():
        condition = await _condition(cluster, "PodSecurity")
        return condition if condition and condition["status"] == "False" else None

    condition = await cluster.until("PodSecurity=False", warned)
    assert condition["reason"] == "TemplateNotRestricted" and "privileged is true" in condition["message"]

    async def event():
        events = (await cluster.get("/api/v1/namespaces/default/events")).get("items") or []
        return [e for e in events if e.get("reason") == "PodSecurity"]

    found = await cluster.until("a PodSecurity Event", event)
    assert "privileged" in found[0]["message"]
    pods = await cluster.until("a pod", cluster.pods)
    trainer = pods[0]["spec"]["containers"][0]
    assert trainer["securityContext"]["privileged"] is True  # kept as the user set it
    assert (await cluster.get(POLICY)).get("status") == 404  # switched off: none created


async def test_a_join_secret_the_sidecars_would_refuse_gives_an_event(cluster: Cluster) -> None:
    secrets = "/api/v1/namespaces/default/secrets"
    short = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-join", "namespace": "default"},
             "data": {"join-secret": base64.b64encode(b"short").decode()}}  # fmt: skip
    assert await cluster.send("POST", secrets, short) in (200, 201)
    job = _job(1)
    job["spec"]["federation"] = {"joinSecretRef": {"name": "team-join"}}
    assert await cluster.send("POST", JOBS, job) in (200, 201)

    async def join_secret(status: str):
        condition = await _condition(cluster, "JoinSecret")
        return condition if condition and condition["status"] == status else None

    condition = await cluster.until("JoinSecret=False", lambda: join_secret("False"))
    assert "5 bytes, below 16" in condition["message"], condition

    async def event():
        events = (await cluster.get("/api/v1/namespaces/default/events")).get("items") or []
        return [e for e in events if e.get("reason") == "JoinSecretRefused"]

    assert "team-join" in (await cluster.until("a JoinSecretRefused Event", event))[0]["message"]
    rotated = {"data": {"join-secret": base64.b64encode(b"k" * 32).decode()}}
    assert await cluster.send("PATCH", f"{secrets}/team-join", rotated) == 200
    await cluster.until("JoinSecret=True after a good rotation", lambda: join_secret("True"))
