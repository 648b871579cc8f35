"""Transfer scenario: a joiner pulls one snapshot from N real source processes at once.

Sources are ``chaos-train sidecar`` processes serving the same snapshot (hard links of one
file), each with its own upload limit to the joiner (token bucket; ``--rates-mbps``). The
joiner (this process) probes every source's bandwidth, plans with the greedy planner and
pulls. ``limit_s = W / min(joiner download, sum of source rates)`` is the physical floor;
``ratio = delay_s / limit_s``. With ``--kill-one`` the fastest source is killed (SIGKILL)
when a third of the bytes are in; the result must still verify.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.cliutil import positive_int
from chaos_sidecar.errors import InputError
from chaos_sidecar.monitor.probe import probe_bandwidth
from chaos_sidecar.planning.model import Source
from chaos_sidecar.transfer.puller import Puller
from chaos_sidecar.transfer.snapshot import data_path, file_digest, manifest_path, write_snapshot

BASE_SHARD_BYTES = 1024 * 1024
MIB = 1024 * 1024


def _random_bytes(rng: random.Random, n: int) -> bytes:
    chunk = 16 * MIB  # randbytes needs a C int of bits
    return b"".join(rng.randbytes(min(chunk, n - i)) for i in range(0, n, chunk))


def make_state(directory: Path, name: str, state_mb: int, seed: int = 0) -> None:
    """A synthetic model + optimizer state: a few float32 tensors of seeded random bytes."""
    rng = random.Random(seed)
    total = state_mb * MIB
    parts = [total // 2, total // 4, total - total // 2 - total // 4]
    tensors = [
        (f"tensor{i}", "float32", (size // 4,), _random_bytes(rng, size - size % 4))
        for i, size in enumerate(parts)
    ]
    write_snapshot(directory, name, tensors, epoch=1, step=100, shard_bytes=BASE_SHARD_BYTES)


async def start_sources(
    cluster: LocalCluster,
    workdir: Path,
    origin: Path,
    name: str,
    count: int,
    rates_mbps: list[float] | None = None,
    corrupt: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Start ``count`` sidecars serving snapshot ``name`` from ``origin`` (hard links; a
    source in ``corrupt`` gets a copy with every byte flipped but the true manifest): their
    URLs by id."""
    urls = {}
    for i in range(count):
        sid = f"s{i}"
        directory = workdir / sid
        directory.mkdir()
        if sid in corrupt:
            data = bytearray(data_path(origin, name).read_bytes())
            data_path(directory, name).write_bytes(bytes(b ^ 0xFF for b in data))
        else:
            os.link(data_path(origin, name), data_path(directory, name))
        os.link(manifest_path(origin, name), manifest_path(directory, name))
        extra = ["--snapshot-dir", str(directory)]
        if rates_mbps:
            extra += ["--upload-limit-mbps", str(rates_mbps[i])]
        node = await cluster.start(sid, seed=True, extra=extra)
        urls[sid] = node.url
    return urls


async def measure(
    sources: int, state_mb: int, rates_mbps: list[float] | None, workdir: Path, kill_one: bool = False
) -> dict[str, Any]:
    name = "bench"
    origin = workdir / "origin"
    make_state(origin, name, state_mb)
    async with LocalCluster(workdir / "cluster") as cluster:
        urls = await start_sources(cluster, workdir, origin, name, sources, rates_mbps)
        async with aiohttp.ClientSession() as session:
            probes = await asyncio.gather(
                *(probe_bandwidth(session, url, cluster.secret, "joiner") for url in urls.values())
            )
            estimated = [
                Source(sid, bps, max(rtt, 0.0005)) for sid, (bps, rtt) in zip(urls, probes, strict=True)
            ]
            joiner_dir = workdir / "joiner"
            killed: list[str] = []
            victim = max(estimated, key=lambda s: s.bandwidth_Bps).id

            def progress(done: int, total: int) -> None:
                if kill_one and not killed and done >= total / 3:
                    cluster.kill(victim)
                    killed.append(victim)

            puller = Puller(session, cluster.secret, "joiner", joiner_dir, name, progress=progress)
            started = time.monotonic()
            result = await puller.pull(estimated, urls)
            delay = time.monotonic() - started
    total = result.manifest.total_bytes
    source_rate = sum(r * 1e6 for r in rates_mbps) if rates_mbps else None
    limit = total / source_rate if source_rate else None
    verified = file_digest(result.path) == file_digest(data_path(origin, name))
    return {
        "scenario": "transfer",
        "sources": sources,
        "state_bytes": total,
        "rates_MBps": rates_mbps,
        "delay_s": round(delay, 4),
        "limit_s": None if limit is None else round(limit, 4),
        "ratio": None if limit is None else round(delay / limit, 4),
        "throughput_MBps": round(total / delay / 1e6, 1),
        "verified": verified,
        "killed": killed,
        "probed_MBps": {s.id: round(s.bandwidth_Bps / 1e6, 2) for s in estimated},
        "probe_error": (
            None
            if not rates_mbps
            else {
                s.id: round(abs(s.bandwidth_Bps / (r * 1e6) - 1), 3)
                for s, r in zip(estimated, rates_mbps, strict=True)
            }
        ),
        "per_source": [
            {"id": p["id"], "bytes": p["bytes"], "seconds": p["seconds"], "failed": p["failed"]}
            for p in result.to_json()["per_source"]
        ],
        "plan": result.plan,
        "replans": result.replans,
        "refetched": result.refetched,
        "failed": not verified,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sources", type=positive_int, default=4, help="sidecars serving the snapshot")
    parser.add_argument("--state-mb", type=positive_int, default=64, help="snapshot size in MiB")
    parser.add_argument(
        "--rates-mbps",
        help="per-source upload limits in MB/s (1e6 bytes/s), comma-separated; default unshaped",
    )
    parser.add_argument("--kill-one", action="store_true", help="kill a source mid-transfer")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    rates = None
    if args.rates_mbps:
        try:
            rates = [float(x) for x in args.rates_mbps.split(",")]
        except ValueError:
            raise InputError(
                "--rates-mbps", f"expected comma-separated numbers, got {args.rates_mbps!r}"
            ) from None
        if len(rates) != args.sources or any(r <= 0 for r in rates):
            raise InputError("--rates-mbps", f"expected {args.sources} positive rates, one per source")
    # shared memory, like the pod's snapshot volume (emptyDir medium: Memory), when there is one
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="chaos-transfer-", dir=parent) as tmp:
        return asyncio.run(measure(args.sources, args.state_mb, rates, Path(tmp), kill_one=args.kill_one))
