"""RotatingSecret: a new key verifies at once, signs after its delay; the old one verifies for its
grace period; a short key is refused and the old one stays. Plus the secret file's checks."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from chaos_operator.domain.security import join_secret_problem
from chaos_sidecar.config import loose_permissions, read_secret_file, rotating_secret
from chaos_sidecar.errors import InputError
from chaos_sidecar.security import (
    MIN_SECRET_BYTES,
    RotatingSecret,
    Verifier,
    check_relay_seal,
    frame_mac,
    frame_mac_valid,
    relay_seal,
    signed_headers,
)

OLD, NEW, NEWER = b"o" * 32, b"n" * 32, b"m" * 32
S = 1_000_000_000  # ns


def _signed(key: bytes, now: int, path: str = "/v1/probe") -> dict[str, str]:
    return signed_headers(key, "GET", path, b"", now, "n1")


def test_a_rotation_verifies_at_once_signs_after_the_delay_and_retires_the_old_key() -> None:
    ring = RotatingSecret(OLD, grace_s=10, sign_delay_s=2)
    verifier = Verifier(ring)
    t = 100 * S
    assert ring.offer(NEW, t) == "accepted"
    assert bytes(ring) == OLD  # still signing with the old key: others may not know the new one
    assert verifier.check("GET", "/v1/probe", b"", _signed(NEW, t + 1), t + 1) is None  # but it verifies
    assert ring.tick(t + S) == []
    assert ring.tick(t + 2 * S) == ["promoted"]
    assert bytes(ring) == NEW
    promoted = t + 2 * S
    assert verifier.check("GET", "/v1/probe", b"", _signed(OLD, promoted + 5 * S), promoted + 5 * S) is None
    assert ring.tick(promoted + 10 * S) == []
    assert ring.tick(promoted + 10 * S + 1) == ["retired"]
    later = promoted + 11 * S
    assert verifier.check("GET", "/v1/probe", b"", _signed(OLD, later), later) == "bad_signature"
    assert verifier.check("GET", "/v1/probe", b"", _signed(NEW, later + 1), later + 1) is None
    assert ring.accepted(later) == [NEW]


def test_signing_holders_follow_the_promotion_without_a_new_object() -> None:
    ring = RotatingSecret(OLD, sign_delay_s=0)
    holder = ring  # what the peer links, the puller, the rendezvous keep
    ring.offer(NEW, 1)
    ring.tick(1)
    assert frame_mac(holder, "n0", "1", 1, b"x") == frame_mac(NEW, "n0", "1", 1, b"x")
    seal = relay_seal(holder, "n0", "n2", b"m", 5 * S)
    assert check_relay_seal(Verifier(RotatingSecret(NEW)), seal, "n0", "n2", b"m", 5 * S) is None


@pytest.mark.parametrize("bad", [b"", b"short", b"x" * (MIN_SECRET_BYTES - 1)])
def test_an_empty_or_short_key_is_refused_and_the_old_one_stays(bad: bytes) -> None:
    ring = RotatingSecret(OLD, sign_delay_s=0)
    assert ring.offer(bad, 1) == "refused_short"
    assert ring.tick(2) == [] and bytes(ring) == OLD and ring.accepted(2) == [OLD]


def test_the_same_key_again_is_unchanged_and_a_second_rotation_keeps_the_first_for_its_grace() -> None:
    ring = RotatingSecret(OLD, grace_s=5, sign_delay_s=3)
    assert ring.offer(OLD, 1) == "unchanged"
    assert ring.offer(NEW, 1) == "accepted" and ring.offer(NEW, 2) == "unchanged"
    assert ring.offer(NEWER, 2 * S) == "accepted"  # NEW never signed here, another member may have
    assert set(ring.accepted(2 * S)) == {OLD, NEW, NEWER}
    assert ring.tick(5 * S) == ["promoted"] and bytes(ring) == NEWER
    assert set(ring.accepted(5 * S)) == {OLD, NEW, NEWER}
    ring.tick(11 * S)
    assert ring.accepted(11 * S) == [NEWER]


def test_frames_verify_under_any_key_valid_now() -> None:
    ring = RotatingSecret(OLD, grace_s=1, sign_delay_s=0)
    ring.offer(NEW, 0)
    ring.tick(0)
    mac = frame_mac(OLD, "n1", "7", 3, b"body")
    assert frame_mac_valid(ring, mac, "n1", "7", 3, b"body", S // 2)
    assert not frame_mac_valid(ring, mac, "n1", "7", 4, b"body", S // 2)  # another position
    ring.tick(2 * S)
    assert not frame_mac_valid(ring, mac, "n1", "7", 3, b"body", 2 * S)
    assert frame_mac_valid(OLD, mac, "n1", "7", 3, b"body", 0)  # a plain secret: one key


def test_a_replayed_request_is_refused_under_either_key() -> None:
    ring = RotatingSecret(OLD, sign_delay_s=0)
    verifier = Verifier(ring)
    ring.offer(NEW, 0)
    for key in (OLD, NEW):
        headers = _signed(key, 5)
        assert verifier.check("GET", "/v1/probe", b"", headers, 5) is None
        assert verifier.check("GET", "/v1/probe", b"", headers, 6) == "replayed"


def test_the_secret_file_is_read_with_its_version_and_loose_modes_are_named(tmp_path: Path) -> None:
    path = tmp_path / "join-secret"
    path.write_bytes(OLD + b"\n")
    os.chmod(path, 0o600)
    key, version = read_secret_file(path)
    assert key == OLD and loose_permissions(path) is None
    os.chmod(path, 0o644)
    assert "readable by others" in (loose_permissions(path) or "")
    os.chmod(path, 0o640)
    own_group = path.stat().st_gid in {os.getegid(), *os.getgroups()}
    assert (loose_permissions(path) is None) == own_group  # fsGroup: the group is the sidecar's
    if os.geteuid() == 0:
        os.chown(path, -1, 54321)
        assert "readable by group 54321" in (loose_permissions(path) or "")
    # Kubernetes swaps a symlink: the path's target changes, so does its version
    data = tmp_path / "..2026_12_01_v2"
    data.mkdir()
    (data / "join-secret").write_bytes(NEW)
    link = tmp_path / "join-secret.tmp"
    link.symlink_to(data / "join-secret")
    os.replace(link, path)
    key2, version2 = read_secret_file(path)
    assert key2 == NEW and version2 != version


def test_bad_rotation_settings_name_the_option(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(OLD)
    with pytest.raises(InputError, match="--secret-grace-s"):
        rotating_secret(str(path), -1, 0)
    path.write_bytes(b"short")
    with pytest.raises(InputError, match="--secret-file"):
        rotating_secret(str(path), 1, 0)


def test_the_operator_names_a_join_secret_the_sidecars_would_refuse() -> None:
    def secret(data: dict) -> dict:
        return {"metadata": {"name": "job-join"}, "data": data}

    key = "join-secret"
    assert join_secret_problem(None, key) is None  # not created yet: nothing to say
    assert join_secret_problem(secret({key: base64.b64encode(NEW).decode()}), key) is None
    assert "no key 'join-secret'" in join_secret_problem(secret({}), key)
    assert "not base64" in join_secret_problem(secret({key: "%%%"}), key)
    assert "0 bytes" in join_secret_problem(secret({key: base64.b64encode(b"  \n").decode()}), key)
    assert "15 bytes, below 16" in join_secret_problem(
        secret({key: base64.b64encode(b"x" * 15).decode()}), key
    )
