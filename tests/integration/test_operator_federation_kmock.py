"""The operator (Kopf, in-process, against kmock) builds a party's job reached from other sites:
one NodePort Service per pod, owned by the job; each pod waits for its Service's nodePort and
then advertises its node and that port, with the party's key and policy mounted in the sidecar."""

from __future__ import annotations

import asyncio

import pytest
import test_operator_kmock as base
from test_operator_kmock import JOBS, Cluster, _job

from chaos_sidecar.pod_contract import PARTY_KEY_FILE, PARTY_MOUNT, POLICY_FILE, POLICY_MOUNT

pytestmark = pytest.mark.timeout(120)
cluster = base.cluster  # the fixture: Kopf in-process against kmock
SERVICES = "/api/v1/namespaces/default/services"
NODE_PORTS = {"mnist-minimal-0": 30100, "mnist-minimal-1": 30101}


async def _exposed(cluster: Cluster):
    status = (await cluster.get(f"{JOBS}/mnist-minimal")).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Exposed"), None)


async def test_a_party_job_exposed_by_node_port_gets_per_pod_services_and_advertises_them(
    cluster: Cluster,
) -> None:
    job = _job(2)
    job["spec"]["federation"] = {
        "party": {
            "keySecretRef": {"name": "uni-a-party", "key": "uni-a.key"},
            "policyConfigMapRef": {"name": "shared-policy"},
            "allowCleartextCollectives": True,
        },
        "expose": {"type": "NodePort"},
        "peers": ["b0=http://198.51.100.10:7070"],
    }
    assert await cluster.send("POST", JOBS, job) in (200, 201)

    async def services():
        found = [await cluster.get(f"{SERVICES}/{name}") for name in NODE_PORTS]
        return found if all("metadata" in s for s in found) else None

    for index, service in enumerate(await cluster.until("the per-pod Services", services)):
        assert service["spec"]["type"] == "NodePort"
        assert service["spec"]["selector"] == {"chaostraining.io/job": "mnist-minimal",
                                               "chaostraining.io/index": str(index)}  # fmt: skip
        assert service["spec"]["externalTrafficPolicy"] == "Local"
        owner = service["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("ChaosTrainingJob", "mnist-minimal", "uid-1")

    # the emulator allocates no nodePort: each pod waits for its Service's, and the job says so
    async def waiting():
        condition = await _exposed(cluster)
        return condition if condition and condition["reason"] == "WaitingForAddress" else None

    condition = await cluster.until("Exposed=False while no nodePort", waiting)
    assert condition["status"] == "False" and "nodePort" in condition["message"], condition
    assert await cluster.pods() == []

    # the API server's allocation, played here
    for name, node_port in NODE_PORTS.items():
        port = {"name": "peer", "protocol": "TCP", "port": 7070, "targetPort": 7070, "nodePort": node_port}
        assert await cluster.send("PATCH", f"{SERVICES}/{name}", {"spec": {"ports": [port]}}) == 200

    async def two_pods():
        pods = await cluster.pods()
        return pods if len(pods) == 2 else None

    pods = {p["metadata"]["name"]: p for p in await cluster.until("the pods, once addressed", two_pods)}
    for name, node_port in NODE_PORTS.items():
        trainer, sidecar = pods[name]["spec"]["containers"]
        args = sidecar["args"]
        assert args[args.index("--advertise") + 1] == f"http://$(CHAOS_HOST_IP):{node_port}"
        assert {
            "name": "CHAOS_HOST_IP",
            "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}},
        } in sidecar["env"]
        assert args[args.index("--party-key") + 1] == PARTY_KEY_FILE
        assert args[args.index("--admission-policy") + 1] == POLICY_FILE
        assert "--allow-cleartext-collectives" in args
        assert args[args.index("--peers") + 1] == "b0=http://198.51.100.10:7070"
        mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
        volumes = {v["name"]: v for v in pods[name]["spec"]["volumes"]}
        key = volumes[mounts[PARTY_MOUNT]["name"]]["secret"]
        assert mounts[PARTY_MOUNT]["readOnly"] and mounts[POLICY_MOUNT]["readOnly"]
        assert key["secretName"] == "uni-a-party" and key["items"][0]["key"] == "uni-a.key"
        assert key["defaultMode"] == 0o440
        assert volumes[mounts[POLICY_MOUNT]["name"]]["configMap"]["name"] == "shared-policy"
        assert {m["mountPath"] for m in trainer["volumeMounts"]}.isdisjoint({PARTY_MOUNT, POLICY_MOUNT})
        address = next(e for e in trainer["env"] if e["name"] == "CHAOS_ADDRESS")
        assert address["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"

    async def addressed():
        condition = await _exposed(cluster)
        return condition if condition and condition["status"] == "True" else None

    await cluster.until("Exposed=True", addressed)
    # reconciles go on (the timer, every 0.5 s here): the operator keeps what the API server
    # allocated in its Services instead of writing its own spec over them
    await asyncio.sleep(2.0)
    for name, node_port in NODE_PORTS.items():
        service = await cluster.get(f"{SERVICES}/{name}")
        assert service["spec"]["ports"][0]["nodePort"] == node_port
