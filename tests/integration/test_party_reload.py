"""Party a's key rotates while its group of real sidecars runs, with no restart: each node's
key file and policy are mounted the way Kubernetes mounts a Secret or ConfigMap (a ``..data``
symlink swapped to a new directory). The policy first lists the old key and the new one with
overlapping windows; the nodes take the new key, then a policy listing only the new key. A
policy that does not parse, and one that no longer lists the node's key, are refused
(counted, said on stderr) with the policy in force staying. Then a node that accepts only the
new key joins: the members must sign with the new key and still hold the good policy for it
to get in; a node still signing with the old key is refused (the control)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

import scrape
from chaos_lab.localcluster import LocalCluster
from party_files import write_key
from polling import line_in

pytestmark = pytest.mark.timeout(150)
DEADLINE_S = 30.0
POLL = ["--secret-poll-s", "0.2"]
RELOADS = "chaostrain_party_reloads_total"


def policy(*keys: tuple[str, float | None, float | None]) -> bytes:
    """Party a (nodes a-*) with ``keys``: (public key, not_before, not_after) in Unix seconds."""

    def stamp(unix_s: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))

    listed = [
        {"public_key": key}
        | ({"not_before": stamp(nb)} if nb is not None else {})
        | ({"not_after": stamp(na)} if na is not None else {})
        for key, nb, na in keys
    ]
    party = {"name": "a", "nodes": {"prefix": "a-"}, "max_nodes": 5, "keys": listed}
    return yaml.safe_dump({"version": 1, "parties": [party]}).encode()


def mount(directory: Path, name: str, raw: bytes) -> None:
    """Write file ``name`` the way the kubelet updates a mounted Secret or ConfigMap: into a new
    directory, then one atomic swap of the ``..data`` symlink (the file links through it)."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.monotonic_ns()}"
    version.mkdir()
    (version / name).write_bytes(raw)
    (version / name).chmod(0o600)
    if not (directory / name).is_symlink():
        (directory / name).symlink_to(Path("..data") / name)
    (directory / "..data.tmp").symlink_to(version.name)
    os.replace(directory / "..data.tmp", directory / "..data")


async def test_a_partys_key_and_policy_rotate_without_a_restart_and_a_bad_policy_is_refused(
    tmp_path: Path,
) -> None:
    (old_key, old_public), (new_key, new_public) = write_key(tmp_path, "a", 1), write_key(tmp_path, "a", 2)
    now = time.time()
    overlap = policy((old_public, None, now + 3600), (new_public, now - 3600, None))
    new_only = policy((new_public, now - 3600, None))
    mounts = {n: tmp_path / "mounts" / n for n in ("a-0", "a-1", "a-2", "a-3")}

    def party(node: str) -> list[str]:
        key, policy_file = mounts[node] / "key" / "party.key", mounts[node] / "policy" / "policy.yaml"
        return ["--party-key", str(key), "--admission-policy", str(policy_file), *POLL]

    def mount_key(node: str, key_file: Path) -> None:  # the party's Secret
        mount(mounts[node] / "key", "party.key", key_file.read_bytes())

    def mount_policy(node: str, raw: bytes) -> None:  # the job's ConfigMap
        mount(mounts[node] / "policy", "policy.yaml", raw)

    async with LocalCluster(tmp_path / "cluster") as cluster:
        session = cluster.session
        assert session is not None

        async def reloads(node: str, file: str, result: str, count: int) -> None:
            url = cluster.nodes[node].url
            await scrape.wait_metric(
                session, url, RELOADS, lambda v: v >= count, DEADLINE_S, file=file, result=result
            )

        for node in ("a-0", "a-1"):
            mount_key(node, old_key)
            mount_policy(node, overlap)
        await cluster.start("a-0", seed=True, extra=party("a-0"))
        await cluster.start("a-1", extra=party("a-1"))
        await cluster.wait_agreed({"a-0", "a-1"}, DEADLINE_S)

        # the rotation: the new key on every node, then a policy without the old one
        for node in ("a-0", "a-1"):
            mount_key(node, new_key)
        for node in ("a-0", "a-1"):
            await reloads(node, "key", "accepted", 1)
        for node in ("a-0", "a-1"):
            mount_policy(node, new_only)
        for node in ("a-0", "a-1"):
            await reloads(node, "policy", "accepted", 1)

        # bad policies on a-1: refused, said and counted; the one in force stays
        stderr = tmp_path / "cluster" / "a-1.stderr"
        mount_policy("a-1", b"version: 1\nparties: [\n")
        await reloads("a-1", "policy", "refused", 1)
        await line_in(
            stderr,
            r"warning: changed party files refused: --admission-policy: does not parse as YAML or JSON: .*"
            r"; the key and policy in force stay",
            DEADLINE_S,
        )
        old_only = policy((old_public, None, None))
        mount_policy("a-1", old_only)
        await reloads("a-1", "policy", "refused", 2)
        await line_in(
            stderr,
            rf"warning: changed party files refused: --party-key: its public key {new_public} is not listed "
            r"for 'a'; the key and policy in force stay",
            DEADLINE_S,
        )

        # a node that accepts only the new key joins: a-0 and a-1 sign with it, and a-1 still
        # holds the new-key policy (under the refused old-key one it would refuse them all)
        mount_key("a-2", new_key)
        mount_policy("a-2", new_only)
        await cluster.start("a-2", contacts=["a-0"], extra=party("a-2"))
        await cluster.wait_agreed({"a-0", "a-1", "a-2"}, DEADLINE_S)
        for node in ("a-0", "a-1", "a-2"):
            url = cluster.nodes[node].url
            for reason in ("party_bad_signature", "party_key_expired", "party_unknown"):
                assert not await scrape.metric(
                    session, url, "chaostrain_rejected_messages_total", reason=reason
                )
        assert (
            await scrape.metric(session, cluster.nodes["a-1"].url, RELOADS, file="policy", result="accepted")
            == 1
        )

        # the control: a node still signing with the old key (its own copy of the old policy)
        # is refused by the members, whose policy no longer lists that key
        mount_key("a-3", old_key)
        mount_policy("a-3", overlap)
        await cluster.start("a-3", contacts=["a-0"], extra=party("a-3"))
        await scrape.wait_metric(
            session,
            cluster.nodes["a-0"].url,
            "chaostrain_rejected_messages_total",
            lambda v: v >= 1,
            DEADLINE_S,
            reason="party_bad_signature",
        )
        view = await cluster.view("a-0")
        assert view is not None and "a-3" not in view["view"]["members"], view
