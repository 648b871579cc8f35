"""A multi-party group of real sidecars: party a (nodes a-*) and party b (node b0, at most
one) agree on a view, each signing with its own party key; a node of b claiming an id of a,
a party not in the admission policy, and a second node of b past b's limit are all refused
by the members, counted by reason, and never enter the view."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos_lab.localcluster import LocalCluster
from chaos_sidecar import eventlog, parties
from chaos_sidecar.eventlog import Kind
from party_files import five_node_parties, write_key, write_policy
from rejections import rejected, rejected_now

pytestmark = pytest.mark.timeout(120)
DEADLINE_S = 30.0


async def wait_refused(cluster: LocalCluster, reason: str) -> None:
    """Until some member counted a refusal for ``reason`` (a deadline, not a sleep)."""
    assert cluster.session is not None
    deadline = time.monotonic() + DEADLINE_S
    members = ["a-0", "a-1", "b0"]
    while not any([(await rejected(cluster.session, cluster.nodes[n].url)).get(reason, 0) for n in members]):
        assert time.monotonic() < deadline, f"no member refused anything as {reason} within {DEADLINE_S}s"
        await asyncio.sleep(0.1)


async def test_parties_are_admitted_by_policy_and_impostors_outsiders_and_extras_refused(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    a_key, a_public = write_key(keys, "a", 1)
    b_key, b_public = write_key(keys, "b", 2)
    c_key, c_public = write_key(keys, "c", 3)
    policy = write_policy(
        tmp_path / "policy.yaml",
        [("a", {"prefix": "a-"}, 3, a_public), ("b", {"ids": ["b0", "b1"]}, 1, b_public)],
    )
    # what an impostor of party b and an outsider c write into their own copies of the policy
    b_says_it_owns_a9 = write_policy(
        tmp_path / "b-forged.yaml",
        [("a", {"ids": ["a-0"]}, 3, a_public), ("b", {"ids": ["a-9"]}, 3, b_public)],
    )
    c_lists_itself = write_policy(tmp_path / "c-own.yaml", [("c", {"prefix": "c"}, 3, c_public)])

    def party(key: Path, policy_file: Path = policy) -> list[str]:
        return [
            "--party-key",
            str(key),
            "--admission-policy",
            str(policy_file),
        ]

    async with LocalCluster(tmp_path / "cluster") as cluster:
        await cluster.start("a-0", seed=True, extra=party(a_key))
        await cluster.start("a-1", extra=party(a_key))
        await cluster.start("b0", extra=party(b_key))
        await cluster.wait_agreed({"a-0", "a-1", "b0"}, DEADLINE_S)

        members = ["a-0", "a-1", "b0"]
        for node in members:  # the parties' own requests, streams and probes all pass
            counted = await rejected(cluster.session, cluster.nodes[node].url)  # type: ignore[arg-type]
            assert not {r for r in counted if r.startswith("party_")}, (node, counted)
        await cluster.start("a-9", contacts=members, extra=party(b_key, b_says_it_owns_a9))
        await wait_refused(cluster, parties.FOREIGN_NODE)
        await cluster.start("c0", contacts=members, extra=party(c_key, c_lists_itself))
        await wait_refused(cluster, parties.UNKNOWN)
        await cluster.start("b1", contacts=members, extra=party(b_key))  # b already holds its one
        await wait_refused(cluster, parties.FULL)

        view = await cluster.wait_agreed(set(members), DEADLINE_S)
        assert set(view["view"]["members"]) == set(members)
        for refused in ("a-9", "c0", "b1"):
            assert cluster.nodes[refused].process.poll() is None  # still asking, never admitted
            assert (await cluster.view(refused))["status"] != "member"  # type: ignore[index]


ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "chaos_sidecar.cli"]
MLP = [
    str(ROOT / "examples" / "train" / "mlp.py"),
    "--steps",
    "100000",
    "--hidden",
    "32",
    "--global-batch",
    "32",
]


def steps_at_world(log: Path, world: int) -> int:
    if not log.exists():
        return 0
    return sum(1 for r in eventlog.read([log]) if r.kind is Kind.STEP and r.get("world") == world)


def wait_for(condition, what: str, process: subprocess.Popen, stderr: Path) -> None:
    deadline = time.monotonic() + 90
    while not condition():
        assert process.poll() is None, f"{what}: exited {process.returncode}: {stderr.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{what}: not within 90 s: {stderr.read_text()[-2000:]}"
        time.sleep(0.2)


@pytest.mark.timeout(240)
def test_an_outside_party_joins_with_run_join_and_trains_and_an_impostor_cannot_start(tmp_path: Path) -> None:
    """Party a founds the job with ``chaos-train run --new-group``; party b's node, with no
    Kubernetes and only a's contact point, joins with ``chaos-train run --join`` and both train
    in the same group (world 2); b's key cannot start a node under one of a's ids."""
    keys = tmp_path / "keys"
    keys.mkdir()
    a_key, a_public = write_key(keys, "a", 1)
    b_key, b_public = write_key(keys, "b", 2)
    policy = write_policy(
        tmp_path / "policy.yaml", [("a", {"prefix": "a-"}, 2, a_public), ("b", {"ids": ["b0"]}, 1, b_public)]
    )
    secret = tmp_path / "join-secret"
    secret.write_text("a-shared-join-secret-of-the-job")
    secret.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")} | {"OMP_NUM_THREADS": "1"}
    common = [
        "--secret-file",
        str(secret),
        "--admission-policy",
        str(policy),
    ]
    logs = {n: tmp_path / f"{n}.jsonl" for n in ("a-0", "b0")}
    errs = {n: tmp_path / f"{n}.stderr" for n in ("a-0", "b0")}
    processes: dict[str, subprocess.Popen] = {}
    try:
        with errs["a-0"].open("wb") as err:
            processes["a-0"] = subprocess.Popen(
                [*CLI, "run", "--new-group", "--node-id", "a-0", "--party-key", str(a_key), *common,
                 "--event-log", str(logs["a-0"]), *MLP], stderr=err, env=env)  # fmt: skip
        marker = "chaos-train run: sidecar of a-0 at "
        wait_for(lambda: marker in errs["a-0"].read_text(), "a-0's sidecar", processes["a-0"], errs["a-0"])
        url = errs["a-0"].read_text().split(marker, 1)[1].split()[0]
        with errs["b0"].open("wb") as err:  # b's node joins through a's contact point
            processes["b0"] = subprocess.Popen(
                [*CLI, "run", "--join", f"a-0={url}", "--node-id", "b0", "--party-key", str(b_key), *common,
                 "--event-log", str(logs["b0"]), *MLP], stderr=err, env=env)  # fmt: skip
        impostor = subprocess.run(  # meanwhile b's key under one of a's ids
            [*CLI, "run", "--join", f"a-0={url}", "--node-id", "a-1", "--party-key", str(b_key), *common,
             *MLP],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        assert impostor.returncode == 2
        assert "--node-id: 'a-1' is not a node id that party 'b' owns" in impostor.stderr
        wait_for(
            lambda: steps_at_world(logs["b0"], 2) >= 5, "b0 training with a-0", processes["b0"], errs["b0"]
        )
        wait_for(
            lambda: steps_at_world(logs["a-0"], 2) >= 5, "a-0 training with b0", processes["a-0"], errs["a-0"]
        )
        for node, log in logs.items():  # by default the parties' all-reduce is the protected one
            regroups = [r for r in eventlog.read([log]) if r.kind is Kind.REGROUP and len(r["members"]) == 2]
            assert regroups and all(r.get("cross_party") for r in regroups), node
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def digests_at_world(log: Path, world: int) -> dict[int, str]:
    if not log.exists():
        return {}
    return {
        r["step"]: r["digest"]
        for r in eventlog.read([log])
        if r.kind is Kind.STEP and r.get("world") == world and "digest" in r
    }


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_two_parties_train_together_while_an_impostor_and_an_outsider_are_refused(tmp_path: Path) -> None:
    """3 nodes of party a and 2 of party b (joined with ``chaos-train run --join``) train as one
    group with identical replicas, while a node with b's key claiming a's id a-9 and a node of
    party c (not in the policy), each with its own doctored copy of the policy, are refused by
    the members and never enter the group."""
    files = five_node_parties(tmp_path)
    a_key, b_key, c_key = files.a_key, files.b_key, files.c_key
    policy, forged, outsider = files.policy, files.forged, files.outsider
    secret = tmp_path / "join-secret"
    secret.write_text("a-shared-join-secret-of-the-job")
    secret.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")} | {"OMP_NUM_THREADS": "1"}
    common = ["--secret-file", str(secret)]
    nodes = {"a-0": a_key, "a-1": a_key, "a-2": a_key, "b0": b_key, "b1": b_key}
    logs = {n: tmp_path / f"{n}.jsonl" for n in nodes}
    errs = {n: tmp_path / f"{n}.stderr" for n in [*nodes, "a-9", "c0"]}
    processes: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}

    def start(node: str, how: list[str], key: Path, policy_file: Path, program: list[str]) -> None:
        with errs[node].open("wb") as err:
            processes[node] = subprocess.Popen(
                [*CLI, *program[:1], *how, "--node-id", node, "--party-key", str(key),
                 "--admission-policy", str(policy_file), *common, *program[1:]],
                stderr=err, env=env,
            )  # fmt: skip

    def url_of(node: str) -> str:
        marker = f"chaos-train run: sidecar of {node} at "
        wait_for(lambda: marker in errs[node].read_text(), f"{node}'s sidecar", processes[node], errs[node])
        return errs[node].read_text().split(marker, 1)[1].split()[0]

    try:
        start("a-0", ["--new-group"], a_key, policy, ["run", "--event-log", str(logs["a-0"]), *MLP])
        urls["a-0"] = url_of("a-0")
        for node in ("a-1", "a-2"):
            start(
                node,
                ["--peers", f"a-0={urls['a-0']}"],
                a_key,
                policy,
                ["run", "--event-log", str(logs[node]), *MLP],
            )
        for node in ("b0", "b1"):
            start(
                node,
                ["--join", f"a-0={urls['a-0']}"],
                b_key,
                policy,
                ["run", "--event-log", str(logs[node]), *MLP],
            )
        for node in ("a-1", "a-2", "b0", "b1"):
            urls[node] = url_of(node)
        contacts = ",".join(f"{n}={u}" for n, u in urls.items())
        start("a-9", ["--peers", contacts], b_key, forged, ["sidecar"])
        start("c0", ["--peers", contacts], c_key, outsider, ["sidecar"])

        for node in nodes:
            wait_for(
                lambda n=node: len(digests_at_world(logs[n], 5)) >= 2,
                f"{node} at world 5",
                processes[node],
                errs[node],
            )

        def refused(reason: str) -> float:
            return sum(rejected_now(u).get(reason, 0) for u in urls.values())

        for reason in (parties.FOREIGN_NODE, parties.UNKNOWN):
            wait_for(lambda r=reason: refused(r) > 0, f"a refusal as {reason}", processes["a-0"], errs["a-0"])
        for rogue in ("a-9", "c0"):
            assert processes[rogue].poll() is None, errs[rogue].read_text()[-2000:]  # still asking, refused
        digests = [digests_at_world(logs[n], 5) for n in nodes]
        common_steps = set.intersection(*(set(d) for d in digests))
        assert common_steps, "no step with a digest on all five nodes"
        for step in sorted(common_steps):
            assert len({d[step] for d in digests}) == 1, f"replicas differ at step {step}"
        worlds = {r.get("world") for n in nodes for r in eventlog.read([logs[n]]) if r.kind is Kind.STEP}
        assert max(worlds) == 5  # a-9 and c0 never entered a group
        for node in nodes:  # the groups of both parties were the protected, hierarchical ones
            regroups = [r for r in eventlog.read([logs[node]]) if r.kind is Kind.REGROUP]
            mixed = [r for r in regroups if {m[0] for m in r["members"]} == {"a", "b"}]
            assert mixed and all(r.get("cross_party") for r in mixed), node
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
