"""Sidecar settings, validated once at start-up."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from chaos_sidecar.errors import InputError, ProtocolError
from chaos_sidecar.membership.machine import Settings
from chaos_sidecar.protocol.messages import node_id as check_node_id
from chaos_sidecar.security import MIN_SECRET_BYTES, RotatingSecret

if TYPE_CHECKING:
    from chaos_sidecar.parties import PartySigner, Policy


@dataclass(frozen=True)
class SidecarConfig:
    """Everything one sidecar process needs."""

    node_id: str
    """This member's id (the pod name in Kubernetes)."""
    secret: bytes
    """The job's join secret; signs every peer request (a :class:`RotatingSecret` when read
    from a file that may change: a Kubernetes Secret)."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 0
    """Port to listen on; 0 picks a free one."""
    advertise: str | None = None
    """Base URL peers use to reach this sidecar; defaults to http://host:port."""
    contacts: tuple[tuple[str, str], ...] = ()
    """(id, URL) of members to ask for admission; empty with ``seed``."""
    seed: bool = False
    """Found a new group alone instead of joining one."""
    defer_join: bool = False
    """Wait for the trainer's POST /local/join before asking for admission."""
    log_path: Path | None = None
    """JSONL event log (observed / decided / installed / topology)."""
    membership: Settings = field(default_factory=Settings)
    fault_injection: bool = False
    """Enable /local/faults (tests and benchmarks only)."""
    snapshot_dir: Path | None = None
    """Where snapshots are served from (the pod's shared-memory volume)."""
    upload_limit_Bps: float | None = None
    """Per-destination upload rate limit (token bucket): the portable link emulation."""
    tls_cert: Path | None = None
    """Certificate (PEM) this sidecar presents; with ``tls_key`` the peer port speaks TLS."""
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """CA (PEM) that signed every member's certificate: peers are verified against it both ways
    (mutual TLS). The trainer's local API stays plain HTTP on a separate loopback port."""
    secret_file: Path | None = None
    """Where the secret was read from: polled for a rotated key (``secret_poll_s``)."""
    secret_poll_s: float = 1.0
    state_dir: Path | None = None
    """Where the durable membership state is written (the pod's volume: it survives container
    restarts). None keeps it in memory: every start is then a new incarnation."""
    cleartext_collectives: bool = False
    """A multi-party job: the trainers all-reduce across parties in plain gloo (clear text)
    instead of through their parties' leaders' encrypted channels (chaos_train.crossparty);
    the local API's collective plan says so (docs/federation.md)."""
    trainer_lease_s: float | None = 3.0
    """Once a trainer has used the local API, a silence this long with no request open means
    it died: the sidecar leaves the group for it, so the survivors regroup. None: never."""
    party_key_file: Path | None = None
    """A multi-party job: this node's party key file, polled (``secret_poll_s``) for a new key."""
    policy_file: Path | None = None
    """A multi-party job: the admission policy's file, polled for a new policy."""


def server_tls(config: SidecarConfig) -> ssl.SSLContext | None:
    """The peer port's TLS context (clients must present a certificate signed by the CA)."""
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(config.tls_ca))
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls(config: SidecarConfig) -> ssl.SSLContext | None:
    """For connections to peers: verify them against the CA and present our certificate."""
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.tls_ca))
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    return context


def check_tls_files(cert: str | None, key: str | None, ca: str | None) -> tuple[Path, Path, Path] | None:
    """All three TLS files or none; each must be readable PEM that ``ssl`` accepts."""
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        return None
    for flag, value in given.items():
        if not value:
            raise InputError(flag, "TLS needs --tls-cert, --tls-key and --tls-ca together")
        if not Path(value).is_file():
            raise InputError(flag, f"{value} is not a readable file")
    try:
        ssl.create_default_context(cafile=ca).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise InputError("--tls-cert", f"cannot load the certificate, key or CA: {exc}") from None
    return Path(cert), Path(key), Path(ca)  # type: ignore[arg-type]


def parse_contacts(text: str, flag: str = "--peers") -> tuple[tuple[str, str], ...]:
    """``id=http://host:port,id2=...`` -> ((id, url), ...); errors name ``flag``."""
    contacts = []
    for i, item in enumerate(filter(None, (p.strip() for p in text.split(",")))):
        node, sep, url = item.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise InputError(f"{flag}[{i}]", f"expected id=http://host:port, got {item!r}")
        try:
            check_node_id(node, f"{flag}[{i}]")
        except ProtocolError as exc:
            raise InputError(f"{flag}[{i}]", exc.detail) from None
        contacts.append((node, url.rstrip("/")))
    return tuple(contacts)


def read_secret_file(path: Path) -> tuple[bytes, tuple[int, int, int]]:
    """The key in ``path`` (surrounding whitespace stripped) and what identifies this version
    of the file (inode, size, mtime of its target: Kubernetes swaps a symlink on update)."""
    version = file_version(path)
    return path.read_bytes().strip(), version


def file_version(path: Path) -> tuple[int, int, int]:
    """What tells one version of a mounted file from the next: inode, size and mtime of its
    target (Kubernetes updates a mounted Secret or ConfigMap by swapping a symlink)."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def loose_permissions(path: Path) -> str | None:
    """Why the secret file is readable by more than its owner, or None: readable by others,
    or by a group this process is not in (Kubernetes' fsGroup is one it is in: the mode the
    operator gives the Secret's volume, 0440, is not loose)."""
    stat = path.stat()
    if stat.st_mode & 0o004:
        return f"{path} is readable by others (mode {stat.st_mode & 0o777:04o})"
    if stat.st_mode & 0o040 and stat.st_gid not in {os.getegid(), *os.getgroups()}:
        return f"{path} is readable by group {stat.st_gid} (mode {stat.st_mode & 0o777:04o})"
    return None


def rotating_secret(path: str | None, grace_s: float, sign_delay_s: float) -> RotatingSecret:
    secret = read_secret(path)
    try:
        return RotatingSecret(secret, grace_s=grace_s, sign_delay_s=sign_delay_s)
    except ValueError as exc:
        raise InputError("--secret-grace-s", str(exc)) from None


def read_secret(path: str | None) -> bytes:
    if path is None:
        raise InputError("--secret-file", "is required (the job's join secret)")
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise InputError("--secret-file", f"cannot read {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise InputError("--secret-file", f"the secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def read_party_files(
    key_path: str | None, policy_path: str | None, node_id: str
) -> tuple[PartySigner, Policy] | None:
    """This node's party key and the job's admission policy (both or neither), checked
    against each other: the key's party is in the policy, lists the key's public half, and
    owns ``node_id``."""
    if key_path is None and policy_path is None:
        return None
    # yaml and cryptography: loaded when a sidecar starts, not whenever the CLI parses
    from chaos_sidecar.parties import check_own_key, parse_key_file, parse_policy

    if key_path is None or policy_path is None:
        missing = "--party-key" if key_path is None else "--admission-policy"
        raise InputError(missing, "a multi-party job needs --party-key and --admission-policy together")
    signer = parse_key_file(_read(key_path, "--party-key"), "--party-key")
    policy = parse_policy(_read(policy_path, "--admission-policy"), "--admission-policy")
    check_own_key(signer, policy, node_id)
    return signer, policy


def with_parties(secret: RotatingSecret, parties: tuple[PartySigner, Policy] | None) -> RotatingSecret:
    """``secret`` carrying this node's party key and the admission policy, if any."""
    if parties is not None:
        secret.party, secret.policy = parties
    return secret


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(field, f"cannot read {path}: {exc.strerror}") from None
