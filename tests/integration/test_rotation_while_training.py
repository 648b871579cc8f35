"""Rotating the join secret while three members train: each node's secret file is swapped the way
the kubelet updates a mounted Secret (a symlink to a new directory), one node after the other.
No view change, no member lost, no message refused; the old key verifies during its grace
period and is refused after it; a short key is refused and the new one stays in force."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

import aiohttp
import pytest

from chaos_lab.jobreport import summarize
from chaos_lab.localjob import JobConfig, LocalJob
from chaos_sidecar import eventlog
from chaos_sidecar.eventlog import Kind, Record
from chaos_sidecar.security import signed_headers
from rejections import rejected

pytest.importorskip("torch", reason="the trainer needs the 'train' extra (torch)")
pytestmark = pytest.mark.timeout(240)
NODES = ["n0", "n1", "n2"]
STEPS = 3000  # the rotation below takes about 15 s: 550 to 1000 steps here, on 2 cores
SIGN_DELAY_S, GRACE_S = 2.0, 6.0
ROTATION = [
    "--secret-poll-s",
    "0.1",
    "--secret-sign-delay-s",
    str(SIGN_DELAY_S),
    "--secret-grace-s",
    str(GRACE_S),
]


def kubelet_update(directory: Path, key: bytes, version: int) -> None:
    """What the kubelet's atomic writer does: the key in a new timestamped directory, ``..data``
    switched to it by renaming a symlink over it, ``join-secret`` a symlink into ``..data``."""
    data = directory / f"..2026_12_01_{version:04d}"
    data.mkdir()
    (data / "join-secret").write_bytes(key)
    os.chmod(data / "join-secret", 0o440)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, directory / "..data")
    if not (directory / "join-secret").is_symlink():
        link = directory / "join-secret.tmp"
        link.symlink_to("..data/join-secret")
        os.replace(link, directory / "join-secret")


def events(node_dir: Path, node: str, kind: Kind) -> list[Record]:
    return [r for r in eventlog.read([node_dir / f"{node}.events.jsonl"]) if r.kind is kind]


def results(node_dir: Path, node: str) -> list[str]:
    return [r["result"] for r in events(node_dir, node, Kind.SECRET_ROTATION)]


async def until(condition, timeout: float, what: str, task: asyncio.Task) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if task.done():
            task.result()  # the job's own error, if it failed
            raise AssertionError(f"the job ended before {what}")
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


async def status_of(session: aiohttp.ClientSession, url: str, key: bytes) -> int:
    path = "/v1/probe?bytes=16"
    headers = signed_headers(key, "GET", path, b"", time.time_ns(), "outsider")
    async with session.get(url + path, headers=headers) as response:
        return response.status


async def test_rotation_while_training_keeps_the_view_and_retires_the_old_key(tmp_path: Path) -> None:
    new = secrets.token_hex(24).encode()
    dirs = {n: tmp_path / "nodes" / n for n in NODES}
    cfg = JobConfig(nodes=len(NODES), steps=STEPS, churn=[], out=tmp_path / "job", live=False, hidden=64,
                    stall_limit_s=60)  # fmt: skip
    job = LocalJob(cfg)
    old = job.cluster.secret
    start = job.cluster.start

    async def start_with_its_own_secret_file(node: str, **kwargs):  # a pod: its own mounted Secret
        kwargs["extra"] = [*(kwargs.get("extra") or []), *ROTATION]
        return await start(node, **{**kwargs, "directory": dirs[node]})

    job.cluster.start = start_with_its_own_secret_file
    task = asyncio.create_task(job.run())

    def step() -> int:
        job.poll_logs()
        return min((job.progress.get(n) or {}).get("step", 0) for n in NODES)

    await until(lambda: step() >= 5, 120, "training", task)
    cluster = job.cluster
    epoch = (await cluster.views(NODES))["n0"]["view"]["epoch"]
    async with aiohttp.ClientSession() as session:
        urls = {n: cluster.nodes[n].url for n in NODES}
        before = {n: await rejected(session, urls[n]) for n in NODES}
        for node in NODES:  # the plain file becomes the kubelet's layout, same key: nothing happens
            kubelet_update(dirs[node], old, 1)
        step_before = step()
        # rotate, one pod after the other (each kubelet syncs at its own moment)
        for node in NODES:
            kubelet_update(dirs[node], new, 2)
            await until(lambda n=node: results(dirs[n], n), 10, f"{node} to see the key", task)
            assert results(dirs[node], node)[0] == "accepted"
            assert await status_of(session, urls[node], new) == 200  # verifies at once
        await until(lambda: all("promoted" in results(dirs[n], n) for n in NODES), SIGN_DELAY_S + 10,
                    "the new key to sign", task)  # fmt: skip
        for node in NODES:  # within the grace period both keys verify
            assert await status_of(session, urls[node], old) == 200
            assert await status_of(session, urls[node], new) == 200
        await until(lambda: all("retired" in results(dirs[n], n) for n in NODES), GRACE_S + 10,
                    "the old key's grace to end", task)  # fmt: skip
        for node in NODES:
            assert await status_of(session, urls[node], old) == 401  # refused after the grace
            assert await status_of(session, urls[node], new) == 200
        # a short key is refused, logged and counted; the new key stays in force
        kubelet_update(dirs["n1"], b"too-short", 3)
        await until(
            lambda: "refused_short" in results(dirs["n1"], "n1"), 10, "the short key to be refused", task
        )
        assert await status_of(session, urls["n1"], new) == 200
        async with session.get(urls["n1"] + "/metrics") as response:
            assert 'chaostrain_secret_rotations_total{result="refused_short"} 1.0' in await response.text()
        # training went on through all of it, in the same view, nothing refused
        await until(lambda: step() >= step_before + 20, 60, "more steps", task)
        views = await cluster.views(NODES)
        after = {n: await rejected(session, urls[n]) for n in NODES}
    step_after = step()
    for node, v in views.items():
        assert v["status"] == "member" and v["view"]["epoch"] == epoch, (node, v)
        assert sorted(v["view"]["members"]) == NODES
    for node in NODES:
        # the probes this test signed with the old key after the grace: 1 per node
        new_rejections = {k: after[node].get(k, 0) - before[node].get(k, 0) for k in after[node]}
        assert {k: v for k, v in new_rejections.items() if v} == {"bad_signature": 1.0}, (
            node,
            new_rejections,
        )
    wall = await asyncio.wait_for(task, 240)  # the job runs to its end in the same view
    installed = [r for r in cluster.read_logs() if r.kind is Kind.INSTALLED]
    assert installed and all(r["epoch"] <= epoch for r in installed), "a view change happened"
    summary = summarize(
        cfg, job.injected, eventlog.read(job.sidecar_logs()), eventlog.read(job.trainer_logs()), wall
    )
    assert summary["replicas_identical"] is True and summary["samples_seen"] == summary["samples_expected"]
    print(f"rotation: epoch {epoch} throughout, steps {step_before} -> {step_after} during it, "
          f"{STEPS} in all, rejections {after}")  # fmt: skip
