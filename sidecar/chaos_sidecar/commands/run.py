"""``chaos-train run``: the launcher, like ``torchrun``. Starts this node's sidecar and the
user's script with the environment the SDK reads (``chaos_sidecar.trainer_env``).

In a pod the sidecar is a container of its own and the environment is already set
(``CHAOS_SIDECAR_URL``): ``run`` then only starts the script, in its own place (exec).

``--join ADDRESS --party-key FILE --admission-policy FILE`` runs a node of an outside party
of a multi-party job (docs/federation.md): no Kubernetes, only this process, its sidecar and
the contact points the job's owner gave.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from chaos_sidecar import trainer_env
from chaos_sidecar.cliutil import Subparsers, non_negative_int, positive_int
from chaos_sidecar.commands.sidecar import wait_ready
from chaos_sidecar.config import check_tls_files, parse_contacts, read_party_files
from chaos_sidecar.errors import InputError

SIDECAR_STOP_S = 10.0  # after the script ends: leave the group gracefully, then it is killed
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _terminate_with_parent(parent: int) -> None:
    """In the child, before exec: a TERM when ``run`` dies, even by SIGKILL or the OOM killer,
    so its sidecar and script leave the group instead of living on without it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a training script elastically: start this node's sidecar and the script",
        description="Start this node's sidecar and SCRIPT (a Python file using chaos_train.Trainer) "
        "with the environment the SDK reads. Where CHAOS_SIDECAR_URL is already set (a pod), "
        "only SCRIPT is started. The exit status is the script's.",
    )
    parser.add_argument("--node-id", help="this node's id in the group (default: the host name)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--new-group", action="store_true", help="found a new group with this node")
    group.add_argument("--peers", default="", help="comma-separated id=http://host:port of members to join")
    group.add_argument(
        "--join",
        metavar="ADDRESS",
        default="",
        help="join a multi-party job as a node of your party (needs --party-key, --admission-policy, "
        "--secret-file): ADDRESS is id=https://host:port[,...], the contact points the job's owner gives",
    )
    parser.add_argument("--host", default="127.0.0.1", help="the sidecar's listening host")
    parser.add_argument("--port", type=non_negative_int, default=0, help="the sidecar's port (0: a free one)")
    parser.add_argument("--advertise", help="base URL peers reach this sidecar at (default http://HOST:PORT)")
    parser.add_argument(
        "--secret-file", help="the group's join secret (required with --peers; --new-group makes one)"
    )
    parser.add_argument(
        "--party-key", help="a multi-party job: your party's key file (chaos-train party keygen)"
    )
    parser.add_argument(
        "--admission-policy", help="a multi-party job: the job's admission policy (YAML or JSON)"
    )
    parser.add_argument(
        "--allow-cleartext-collectives",
        action="store_true",
        help="all-reduce across parties in plain gloo (clear text) instead of encrypted between "
        "the parties' leaders (the default)",
    )
    parser.add_argument(
        "--tls-cert", help="PEM certificate for the sidecar's peer port (with --tls-key, --tls-ca)"
    )
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-ca", help="PEM CA that signed every member's certificate (mutual TLS)")
    parser.add_argument("--snapshot-dir", help="where snapshots live (default: a temporary directory)")
    parser.add_argument("--event-log", help="append the trainer's event log (JSON lines) here")
    parser.add_argument("--steps", type=positive_int, help="override the step count the script asks for")
    parser.add_argument("--join-mode", choices=trainer_env.JOIN_MODES, default="blocking")
    parser.add_argument(
        "--founding", action="store_true",
        help="this node starts from the script's initial state (implied by --new-group)",
    )  # fmt: skip
    parser.add_argument("--address", help="the host gloo binds to (default: the sidecar's advertised host)")
    parser.add_argument(
        "--site",
        help="the site this node is at (nodes on one fast network; default: its party): a site's "
        "joiners fetch the state over the WAN once and share it over their LAN",
    )
    parser.add_argument(
        "--checkpoint-dir",
        help="write durable checkpoints here (storage every member reaches) and resume from them",
    )
    parser.add_argument(
        "--checkpoint-every", type=positive_int, default=100, help="steps between checkpoints"
    )
    parser.add_argument("--checkpoint-keep", type=positive_int, default=3, help="complete checkpoints kept")
    parser.add_argument("script", help="the training script (a Python file)")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    script = Path(args.script)
    if not script.is_file():
        raise InputError("SCRIPT", f"{script} does not exist or is not a file")
    command = [sys.executable, str(script), *args.script_args]
    trainer_env.site_name(args.site, "--site")
    if os.environ.get(trainer_env.SIDECAR_URL):
        env = dict(os.environ)
        if args.steps:
            env[trainer_env.STEPS] = str(args.steps)
        if args.site:
            env[trainer_env.SITE] = args.site
        if args.checkpoint_dir:
            env[trainer_env.CHECKPOINT_DIR] = args.checkpoint_dir
            env[trainer_env.CHECKPOINT_EVERY] = str(args.checkpoint_every)
            env[trainer_env.CHECKPOINT_KEEP] = str(args.checkpoint_keep)
        trainer_env.TrainerEnv.from_environ(env)  # a bad variable fails here, naming it
        os.execve(sys.executable, command, env)
    if args.join:
        contacts = parse_contacts(args.join, "--join")
        for flag, value in [("--party-key", args.party_key), ("--admission-policy", args.admission_policy)]:
            if not value:
                raise InputError(flag, "is required with --join (a node of a party joins by its party's key)")
    else:
        contacts = parse_contacts(args.peers)
    if not args.new_group and not contacts:
        raise InputError("--peers", "name members to join (id=http://host:port,...) or pass --new-group")
    if contacts and not args.secret_file:
        raise InputError("--secret-file", "is required to join a group (its join secret)")
    node = args.node_id or socket.gethostname()
    check_tls_files(args.tls_cert, args.tls_key, args.tls_ca)  # a bad file fails here, not in the sidecar
    read_party_files(args.party_key, args.admission_policy, node)
    with tempfile.TemporaryDirectory(prefix="chaos-run-") as scratch:
        return _run_with_sidecar(args, command, Path(scratch))


def _run_with_sidecar(args: argparse.Namespace, command: list[str], scratch: Path) -> int:
    node = args.node_id or socket.gethostname()
    secret_file = args.secret_file
    if secret_file is None:
        secret_file = str(scratch / "join-secret")
        Path(secret_file).write_text(secrets.token_hex(32))
        os.chmod(secret_file, 0o600)
    snapshots = Path(args.snapshot_dir) if args.snapshot_dir else scratch / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    ready = scratch / "sidecar.ready"
    sidecar_cmd = [
        sys.executable, "-m", "chaos_sidecar.cli", "sidecar", "--node-id", node, "--host", args.host,
        "--port", str(args.port), "--secret-file", secret_file, "--snapshot-dir", str(snapshots),
        "--ready-file", str(ready),
    ]  # fmt: skip
    if args.advertise:
        sidecar_cmd += ["--advertise", args.advertise]
    if args.party_key:
        sidecar_cmd += ["--party-key", args.party_key, "--admission-policy", args.admission_policy]
    if args.allow_cleartext_collectives:
        sidecar_cmd += ["--allow-cleartext-collectives"]
    if args.tls_cert:
        sidecar_cmd += ["--tls-cert", args.tls_cert, "--tls-key", args.tls_key, "--tls-ca", args.tls_ca]
    sidecar_cmd += ["--seed"] if args.new_group else ["--peers", args.join or args.peers, "--defer-join"]
    with_parent = functools.partial(_terminate_with_parent, os.getpid())
    sidecar = subprocess.Popen(sidecar_cmd, preexec_fn=with_parent)
    try:
        listening = wait_ready(ready, sidecar)
        local_url = listening.local_url
        # the address other nodes join through (the contact point a job's owner gives out)
        print(f"chaos-train run: sidecar of {node} at {listening.url}", file=sys.stderr, flush=True)
        env = trainer_env.TrainerEnv(
            node_id=node,
            sidecar_url=local_url,
            snapshot_dir=snapshots,
            event_log=Path(args.event_log) if args.event_log else None,
            address=args.address,
            founding=args.founding or args.new_group,
            steps=args.steps,
            join_mode=args.join_mode,
            checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
            checkpoint_every=args.checkpoint_every,
            checkpoint_keep=args.checkpoint_keep,
            site=args.site,
        )
        trainer = subprocess.Popen(command, env={**os.environ, **env.to_environ()}, preexec_fn=with_parent)
        # Ctrl-C or a TERM reach the script (the SDK leaves the group after its current step)
        forward = lambda signum, frame: trainer.send_signal(signal.SIGTERM)  # noqa: E731
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return trainer.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        if sidecar.poll() is None:
            sidecar.send_signal(signal.SIGTERM)  # it leaves the group before it exits
            try:
                sidecar.wait(SIDECAR_STOP_S)
            except subprocess.TimeoutExpired:
                sidecar.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sidecar.wait(SIDECAR_STOP_S)
