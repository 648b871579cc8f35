"""The job's NetworkPolicy, as the operator renders it, enforced with nftables in the members'
network namespaces while they train: a pod of another app cannot connect to a trainer's
collective ports nor to a sidecar's peer port; Prometheus reaches the peer port (``/metrics``)
and nothing else; the members themselves regroup through the policy (a join after it is in
force builds a new store and gloo mesh) and finish with identical replicas.

Each member is a network namespace (``chaos_lab.netns``) holding its sidecar and trainer; two
more namespaces stand for the outsiders. The rules come from ``chaos_lab.netpolicy.nft_ruleset``
(pod and namespace selectors resolved to the namespaces' addresses), which the test also checks
against ``allows``, the policy's evaluator. Needs root, iproute2 and nft; skipped otherwise."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from chaos_lab import netns
from chaos_lab.churn import ChurnEvent
from chaos_lab.jobreport import summarize
from chaos_lab.localjob import JobConfig, LocalJob
from chaos_lab.netpolicy import NAMESPACE_NAME_LABEL, Endpoint, allows, nft_ruleset
from chaos_operator.domain.builders import JOB_LABEL, PEER_PORT
from chaos_operator.domain.security import build_network_policy
from chaos_operator.domain.spec import parse_job
from chaos_sidecar import eventlog

pytest.importorskip("torch", reason="the trainer needs the 'train' extra (torch)")
REASON = netns.unavailable() or (None if shutil.which("nft") else "nft (nftables) is not installed")
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"netns: {REASON}"), pytest.mark.timeout(300)]
JOB = "policy-test"
MEMBERS = ["n0", "n1", "n2"]  # n2 joins at step JOIN_AT, after the policy is in force
JOIN_AT, STEPS = 150, 600
PROMETHEUS_LABELS = {"app.kubernetes.io/name": "prometheus"}
MONITORING = {NAMESPACE_NAME_LABEL: "monitoring"}
ML = {NAMESPACE_NAME_LABEL: "ml"}
PROBE = """
import json, socket, sys
out = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        out[target] = "connected"
    except ConnectionRefusedError:
        out[target] = "refused"
    except OSError as exc:
        out[target] = type(exc).__name__
    finally:
        s.close()
print(json.dumps(out))
"""


def _policy() -> dict:
    manifest = {
        "metadata": {"name": JOB, "namespace": "ml", "uid": "u-1"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer"}]}},
            "networkPolicy": {"metrics": {"namespaceSelector": {"matchLabels": MONITORING},
                                          "podSelector": {"matchLabels": PROMETHEUS_LABELS}}},
        },
    }  # fmt: skip
    return build_network_policy(parse_job(manifest))


async def _run(*cmd: str, stdin: bytes | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate(stdin)
    assert process.returncode == 0, f"{' '.join(cmd)}: {err.decode()}"
    return out.decode()


async def _until(condition, timeout: float, what: str, task: asyncio.Task):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if task.done():
            task.result()  # the job's own error, if it failed
            raise AssertionError(f"the job ended before {what}")
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)
    return value


async def _listening(namespace: str) -> dict[int, int]:
    """Listening TCP port -> pid, in ``namespace``, on addresses other namespaces can reach."""
    out = await _run("ip", "netns", "exec", namespace, "ss", "-Htlnp")
    ports = {}
    for line in out.splitlines():
        fields = line.split()
        host, port = fields[3].rsplit(":", 1)
        if "pid=" in line and not host.startswith(("127.", "[::1]")):  # loopback: the local API
            ports[int(port)] = int(line.split("pid=")[1].split(",")[0])
    return ports


async def test_outsiders_are_refused_by_the_rendered_policy_while_members_train(tmp_path: Path) -> None:
    policy = _policy()
    netns.remove_stale()
    churn = [ChurnEvent(at_step=JOIN_AT, event="join", node="n2")]
    cfg = JobConfig(nodes=2, steps=STEPS, churn=churn, out=tmp_path / "job", hosts="netns", live=False,
                    hidden=64, stall_limit_s=60)  # fmt: skip
    job = LocalJob(cfg)
    with netns.Star(2, [None, None], subnet=61, routed=True) as outside:
        stranger = Endpoint(outside.ip(0), {"app": "web"}, ML)  # another app's pod, same namespace
        prometheus = Endpoint(outside.ip(1), PROMETHEUS_LABELS, MONITORING)
        task = asyncio.create_task(job.run())
        star = await _until(lambda: job.star, 30, "the members' namespaces", task)
        members = [Endpoint(star.ip(i), {JOB_LABEL: JOB}, ML) for i in range(len(MEMBERS))]
        endpoints = [*members, stranger, prometheus]
        host_ips = tuple(
            star.root_ip(i) for i in range(len(MEMBERS))
        )  # the node: kubelet probes, the harness

        async def enforce(port_map: dict[int, int] | None = None, i: int | None = None) -> None:
            for k in range(len(MEMBERS)) if i is None else [i]:
                rules = nft_ruleset(policy, "ml", endpoints, host_ips=host_ips, port_map=port_map)
                await _run("ip", "netns", "exec", star.name(k), "nft", "-f", "-", stdin=rules.encode())

        await enforce()  # before any member process starts: all job traffic goes through the policy
        sidecar_ports = {}
        for i, node in enumerate(MEMBERS[:2]):
            sidecar = await _until(
                lambda n=node: job.cluster.nodes.get(n) or None, 60, f"{node}'s sidecar", task
            )
            await _until(lambda s=sidecar: s.url, 60, f"{node}'s sidecar to listen", task)
            sidecar_ports[node] = int(sidecar.url.rsplit(":", 1)[1])
            await enforce({PEER_PORT: sidecar_ports[node]}, i)  # the lab's sidecars take free ports

        def steps() -> int:
            job.poll_logs()
            return job.current_step()

        await _until(lambda: steps() >= 5, 120, "training", task)
        # every port a member's trainer listens on (the store, gloo's pairs) and its sidecar's
        targets: dict[str, tuple[str, int, str]] = {}
        for i, node in enumerate(MEMBERS[:2]):
            for port, pid in (await _listening(star.name(i))).items():
                kind = "peer" if pid == job.cluster.nodes[node].process.pid else "collective"
                if kind == "collective" and pid != job.trainers[node].pid:
                    continue
                targets[f"{star.ip(i)}:{port}"] = (node, port, kind)
        kinds = {kind for _, _, kind in targets.values()}
        assert kinds == {"peer", "collective"}, targets
        step_before = steps()
        results = {}
        for who, index in (("stranger", 0), ("prometheus", 1)):
            out = await _run("ip", "netns", "exec", outside.name(index), sys.executable, "-c", PROBE,
                             json.dumps(sorted(targets)))  # fmt: skip
            results[who] = json.loads(out)
        print(json.dumps({"targets": {t: v[2] for t, v in targets.items()}, "results": results}, indent=1))
        for target, (node, port, kind) in targets.items():
            assert results["stranger"][target] == "refused", (target, kind)
            expected = "connected" if kind == "peer" else "refused"
            assert results["prometheus"][target] == expected, (target, kind)
            # the evaluator says the same as nftables did
            policy_port = PEER_PORT if kind == "peer" else port
            assert not allows(policy, "ml", stranger, policy_port)
            assert allows(policy, "ml", prometheus, policy_port) == (kind == "peer")
            assert allows(policy, "ml", members[1 - MEMBERS.index(node)], policy_port)
        await _until(lambda: steps() > step_before, 60, "training to go on after the probes", task)
        # n2 joins through the policy: a new view, a new store and gloo mesh among n0, n1, n2
        await _until(
            lambda: "n2" in job.cluster.nodes and job.cluster.nodes["n2"].url, 120, "n2's sidecar", task
        )
        await enforce({PEER_PORT: int(job.cluster.nodes["n2"].url.rsplit(":", 1)[1])}, 2)
        wall = await asyncio.wait_for(task, 240)
    summary = summarize(
        cfg, job.injected, eventlog.read(job.sidecar_logs()), eventlog.read(job.trainer_logs()), wall
    )
    assert summary["replicas_identical"] is True and summary["samples_lost"] == 0, summary
    assert [e["kind"] for e in summary["events"]] == ["join"]
    assert summary["samples_seen"] == summary["samples_expected"]
    assert not any(p.exists() for p in (Path("/run/netns") / star.name(i) for i in range(len(MEMBERS))))
    assert os.geteuid() == 0
