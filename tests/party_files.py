"""A party's key file and a job's admission policy, written for a test (the forms
``chaos-train party keygen`` and docs/federation.md describe)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from chaos_sidecar.parties import new_key_file


def write_key(directory: Path, party: str, seed: int) -> tuple[Path, str]:
    """Party ``party``'s key file, from a fixed seed; (its path, its public key)."""
    signer, raw = new_key_file(party, bytes([seed]) * 32)
    path = directory / f"{party}-{seed}.key"
    path.write_bytes(raw)
    path.chmod(0o600)
    return path, signer.public_key


def write_policy(path: Path, entries: list[tuple[str, dict, int, str]]) -> Path:
    """A policy listing (party, its nodes, most nodes, its public key) for each entry."""
    listed = [
        {"name": name, "nodes": nodes, "max_nodes": most, "keys": [{"public_key": key}]}
        for name, nodes, most, key in entries
    ]
    path.write_text(yaml.safe_dump({"version": 1, "parties": listed}))
    return path


@dataclass
class FiveNodeParties:
    """Party a (a-*, at most 3 nodes) and party b (b0, b1) in one policy; an impostor's copy of
    the policy in which b owns a's id a-9, and party c's own policy listing only itself."""

    a_key: Path
    b_key: Path
    c_key: Path
    policy: Path
    forged: Path
    outsider: Path


def five_node_parties(directory: Path) -> FiveNodeParties:
    keys = directory / "keys"
    keys.mkdir()
    (a_key, a_public), (b_key, b_public), (c_key, c_public) = (
        write_key(keys, p, i) for i, p in enumerate("abc", 1)
    )
    policy = write_policy(
        directory / "policy.yaml",
        [("a", {"prefix": "a-"}, 3, a_public), ("b", {"ids": ["b0", "b1"]}, 2, b_public)],
    )
    forged = write_policy(directory / "b-forged.yaml", [("b", {"ids": ["a-9"]}, 3, b_public)])
    outsider = write_policy(directory / "c-own.yaml", [("c", {"prefix": "c"}, 3, c_public)])
    return FiveNodeParties(a_key, b_key, c_key, policy, forged, outsider)
