"""``chaos-train sidecar``: one sidecar process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chaos_sidecar.cliutil import Subparsers, non_negative_float, non_negative_int, positive_float
from chaos_sidecar.config import (
    SidecarConfig,
    check_tls_files,
    parse_contacts,
    read_party_files,
    rotating_secret,
    server_tls,
    with_parties,
)
from chaos_sidecar.errors import ChaosError, InputError
from chaos_sidecar.membership.machine import LEFT, RequestLeave, Settings

LEAVE_TIMEOUT_S = 5.0
START_S = 30.0  # a sidecar listens within this long of its start (it writes its ready file then)
READY_POLL_S = 0.05
LOCAL_OR_ANY = ("127.0.0.1", "localhost", "0.0.0.0")  # hosts whose port also serves loopback


@dataclass(frozen=True)
class Ready:
    """What a sidecar writes to its ``--ready-file`` once it listens: its peer port and URL,
    the URL of its trainer's local API and its process id."""

    port: int
    url: str
    local_url: str
    pid: int

    def write(self, path: Path) -> None:
        """Whole or not at all: a reader never sees half a file."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)))
        tmp.replace(path)


def wait_ready(path: Path, process: subprocess.Popen, timeout_s: float = START_S) -> Ready:
    """What the sidecar ``process`` wrote to its ready file ``path`` once it listens; raises
    :class:`ChaosError` when it exits first or does not listen within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise ChaosError(f"the sidecar exited with status {process.returncode} before listening")
        if time.monotonic() > deadline:
            raise ChaosError(f"the sidecar did not listen within {timeout_s:.0f} s")
        time.sleep(READY_POLL_S)
    return Ready(**json.loads(path.read_text()))


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help="run one sidecar process (membership peer API on aiohttp)",
        description="Run a sidecar: the authenticated peer API, the local trainer API and ops endpoints.",
    )
    parser.add_argument("--node-id", required=True, help="this member's id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=non_negative_int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--peers", default="", help="comma-separated id=http://host:port of members to join through"
    )
    parser.add_argument("--advertise", help="base URL peers use (default http://HOST:PORT)")
    parser.add_argument("--seed", action="store_true", help="found a new group instead of joining")
    parser.add_argument(
        "--defer-join", action="store_true", help="join only when the trainer asks (POST /local/join)"
    )
    parser.add_argument("--secret-file", help="file holding the shared join secret")
    parser.add_argument(
        "--secret-poll-s",
        type=positive_float,
        default=1.0,
        help="how often --secret-file (and --party-key, --admission-policy) are checked for a change",
    )
    parser.add_argument(
        "--secret-sign-delay-s",
        type=non_negative_float,
        default=120.0,
        help="a rotated key is accepted at once, signs this much later (every member must see it first)",
    )
    parser.add_argument(
        "--secret-grace-s",
        type=non_negative_float,
        default=600.0,
        help="the replaced key stays accepted this long after the new one signs",
    )
    parser.add_argument(
        "--party-key",
        help="a multi-party job: this node's party key file (chaos-train party keygen)",
    )
    parser.add_argument(
        "--admission-policy",
        help="a multi-party job: the parties, their public keys, node ids and node limits (YAML or JSON)",
    )
    parser.add_argument(
        "--allow-cleartext-collectives",
        action="store_true",
        help="a policy of several parties: the trainers all-reduce across parties in plain gloo (clear "
        "text, no TLS in this torch build) instead of through their leaders' encrypted channels",
    )
    parser.add_argument("--ready-file", help="write {'port', 'url', 'local_url', 'pid'} here once listening")
    parser.add_argument("--log", help="append the JSONL event log here")
    parser.add_argument("--heartbeat-s", type=positive_float, default=0.1)
    parser.add_argument("--suspect-timeout-s", type=positive_float, default=0.5)
    parser.add_argument("--retry-s", type=positive_float, default=0.1)
    parser.add_argument("--fault-injection", action="store_true", help="enable /local/faults (tests)")
    parser.add_argument("--snapshot-dir", help="serve snapshots from this directory")
    parser.add_argument(
        "--state-dir",
        help="keep the durable membership state (promises, acceptances, the committed view) here, "
        "written before any message that depends on it; without it every start is a new incarnation",
    )
    parser.add_argument("--tls-cert", help="PEM certificate for the peer port (with --tls-key, --tls-ca)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-ca", help="PEM CA that signed every member's certificate (mutual TLS)")
    parser.add_argument(
        "--trainer-lease-s",
        type=non_negative_float,
        default=3.0,
        help="leave the group when the trainer that used the local API is silent this long (0: never)",
    )
    parser.add_argument(
        "--upload-limit-mbps", type=positive_float, help="per-destination upload limit, MB/s (1e6 bytes/s)"
    )
    parser.add_argument(
        "--kube-job",
        metavar="JOB",
        help="in a pod of ChaosTrainingJob JOB (node id = pod name): find peers among the job's pods "
        "through the Kubernetes API, report the view on this pod, leave when the group scales in",
    )
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> SidecarConfig:
    contacts = parse_contacts(args.peers)
    tls = check_tls_files(args.tls_cert, args.tls_key, args.tls_ca)
    if not args.seed and not contacts and not args.kube_job:
        raise InputError("--peers", "a joining sidecar needs at least one contact (or --seed, or --kube-job)")
    try:
        settings = Settings(
            heartbeat_interval=args.heartbeat_s,
            suspect_timeout=args.suspect_timeout_s,
            retry_interval=args.retry_s,
        )
    except TypeError as exc:  # pragma: no cover - argparse guarantees types
        raise InputError("--heartbeat-s", str(exc)) from None
    if not 0 < settings.heartbeat_interval < settings.suspect_timeout:
        raise InputError("--suspect-timeout-s", "must be larger than --heartbeat-s (both > 0)")
    return SidecarConfig(
        node_id=args.node_id,
        secret=with_parties(
            rotating_secret(args.secret_file, args.secret_grace_s, args.secret_sign_delay_s),
            read_party_files(args.party_key, args.admission_policy, args.node_id),
        ),
        secret_file=Path(args.secret_file),
        secret_poll_s=args.secret_poll_s,
        host=args.host,
        port=args.port,
        advertise=args.advertise,
        contacts=contacts,
        seed=args.seed,
        defer_join=args.defer_join,
        log_path=Path(args.log) if args.log else None,
        membership=settings,
        fault_injection=args.fault_injection,
        snapshot_dir=Path(args.snapshot_dir) if args.snapshot_dir else None,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        upload_limit_Bps=args.upload_limit_mbps * 1e6 if args.upload_limit_mbps else None,
        trainer_lease_s=args.trainer_lease_s or None,
        cleartext_collectives=args.allow_cleartext_collectives,
        party_key_file=Path(args.party_key) if args.party_key else None,
        policy_file=Path(args.admission_policy) if args.admission_policy else None,
        **dict(zip(("tls_cert", "tls_key", "tls_ca"), tls or (None, None, None), strict=True)),
    )


async def serve(
    config: SidecarConfig,
    ready_file: str | None,
    kube_job: str | None = None,
    split: Callable[..., dict[str, int]] | None = None,
) -> None:
    """Run one sidecar until it is told to stop or it left. ``split``: how the snapshots it
    pulls are divided over their sources, if not by the shard planner (see build_app)."""
    # the web stack is loaded only when a sidecar runs, not whenever the CLI parses
    from aiohttp import web

    from chaos_sidecar.adapters import kube_pod
    from chaos_sidecar.adapters.app_state import METRICS, RUNTIME
    from chaos_sidecar.adapters.http_app import build_app

    pod_api = kube_pod.PodApi.from_environ() if kube_job else None
    if pod_api is not None and not config.seed:  # not listening (so not ready) until a peer shows
        found = await kube_pod.discover_contacts(
            pod_api, kube_job, config.node_id, have_contacts=bool(config.contacts)
        )
        config = dataclasses.replace(config, contacts=found + config.contacts)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    port = sock.getsockname()[1]
    tls = server_tls(config)
    advertise = config.advertise or f"{'https' if tls else 'http'}://{config.host}:{port}"
    app = build_app(config, advertise) if split is None else build_app(config, advertise, split)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=tls).start()
    local_url = advertise
    # the trainer's local API: plain HTTP on loopback. A peer port that speaks TLS or listens
    # on one address of its own (a node with its own IP) gets a separate loopback port for it
    if tls is not None or config.host not in LOCAL_OR_ANY:
        local = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        local.bind(("127.0.0.1", 0))
        await web.SockSite(runner, local).start()
        local_url = f"http://127.0.0.1:{local.getsockname()[1]}"
    # what is loaded by now (modules, classes, the app and its routes) lives as long as the
    # process: left to the collector, every full collection walks it again, most of its pause
    # at 1,000 members (docs/benchmarks.md, scalability). Garbage first, then the rest set aside
    gc.collect()
    gc.freeze()
    if ready_file:
        Ready(port, advertise, local_url, os.getpid()).write(Path(ready_file))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = app[RUNTIME]
    left = asyncio.create_task(_wait_left(runtime))
    stopped = asyncio.create_task(stop.wait())
    reporter = reporting = None
    if pod_api is not None:
        step = app[METRICS].registry
        reporter = kube_pod.PodReporter(pod_api, kube_job, config.node_id, runtime, lambda: _step(step))
        reporting = asyncio.create_task(reporter.run())
    await asyncio.wait([stopped, left], return_when=asyncio.FIRST_COMPLETED)
    if reporter is not None and not stop.is_set():
        # in a pod: a member that left says so on its pod and stays up (its trainer sees
        # "left" and ends) until the operator deletes the pod
        reporting.cancel()
        await reporter.final()
        await stop.wait()
    elif reporting is not None:
        reporting.cancel()
    if stop.is_set() and runtime.state.status != LEFT:
        # graceful: leave the group first, so the others need not detect a failure
        await runtime.apply(RequestLeave())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(left, timeout=LEAVE_TIMEOUT_S)
    left.cancel()
    await runner.cleanup()
    if pod_api is not None:
        await pod_api.close()


def _step(registry) -> int | None:
    value = registry.get_sample_value("chaostrain_step")
    return None if value is None else int(value)


async def _wait_left(runtime) -> None:
    async with runtime.changed:
        await runtime.changed.wait_for(lambda: runtime.state.status == LEFT)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    asyncio.run(serve(config, args.ready_file, args.kube_job))
    return 0
