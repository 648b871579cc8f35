"""Snapshot format: round trip, and every inconsistency refused with the field named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos_sidecar.errors import InputError
from chaos_sidecar.transfer.ratelimit import TokenBucket
from chaos_sidecar.transfer.snapshot import (
    ShardFile,
    ShardHasher,
    check_name,
    data_path,
    file_digest,
    parse_manifest,
    read_manifest,
    retire_snapshots,
    verify_shard,
    write_snapshot,
)

TENSORS = [
    ("w", "float32", (3, 5), bytes(range(60))),
    ("b", "int64", (4,), bytes(range(100, 132))),
    ("step", "int32", (), b"\x07\x00\x00\x00"),
]


def _write(tmp_path: Path):
    return write_snapshot(tmp_path, "snap", TENSORS, epoch=3, step=42, shard_bytes=16)


def test_round_trip(tmp_path: Path) -> None:
    manifest = _write(tmp_path)
    assert manifest.total_bytes == 96
    assert manifest.shard_count == 6
    assert read_manifest(tmp_path, "snap") == manifest
    data = data_path(tmp_path, "snap").read_bytes()
    assert data[60:92] == bytes(range(100, 132))
    for i in range(manifest.shard_count):
        offset, length = manifest.shard_range(i)
        assert verify_shard(manifest, i, data[offset : offset + length])
    assert not verify_shard(manifest, 0, b"\0" * 16)


@given(
    chunks=st.lists(st.binary(max_size=70), max_size=12),
    shard_bytes=st.integers(min_value=1, max_value=40),
)
def test_shards_hashed_while_written_are_the_shards_of_the_whole(chunks: list[bytes], shard_bytes: int):
    hasher = ShardHasher(shard_bytes)
    for chunk in chunks:
        hasher.update(memoryview(chunk))
    whole = b"".join(chunks)
    pieces = [whole[i : i + shard_bytes] for i in range(0, len(whole), shard_bytes)]
    assert hasher.finish() == tuple(hashlib.sha256(p).hexdigest() for p in pieces)


def test_shard_file_assembles_the_same_bytes(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "src")
    data = data_path(tmp_path / "src", "snap").read_bytes()
    target = ShardFile(tmp_path / "dst", "snap", manifest)
    for i in reversed(range(manifest.shard_count)):
        offset, length = manifest.shard_range(i)
        target.write(i, data[offset : offset + length])
    path = target.commit()
    assert file_digest(path) == file_digest(data_path(tmp_path / "src", "snap"))
    assert read_manifest(tmp_path / "dst", "snap") == manifest


def _published(directory: Path) -> set[str]:
    return {p.name.removesuffix(".manifest.json") for p in directory.glob("*.manifest.json")}


def test_a_new_snapshot_retires_the_older_ones_and_rewrites_the_newest_file_in_place(tmp_path: Path) -> None:
    big = [("w", "uint8", (500,), bytes(500))]
    for name in ("state-e3", "state-e12", "state-e7", "state-s5"):  # e12 is newer than e7
        write_snapshot(tmp_path, name, big, epoch=1, step=1, shard_bytes=64)
    partial = tmp_path / "state-e20.data.partial"  # a pull in progress: not published yet
    partial.write_bytes(b"x")
    newest_inode = data_path(tmp_path, "state-e12").stat().st_ino
    reuse = retire_snapshots(tmp_path, "state-e", keeping="state-e15")
    # nobody is served a retired snapshot, even before the new one is written
    assert _published(tmp_path) == {"state-s5"}
    with pytest.raises(InputError, match="no snapshot 'state-e7'"):
        read_manifest(tmp_path, "state-e7")
    manifest = write_snapshot(tmp_path, "state-e15", TENSORS, epoch=3, step=42, shard_bytes=16, reuse=reuse)
    assert _published(tmp_path) == {"state-s5", "state-e15"}
    assert sorted(p.name for p in tmp_path.glob("*.data*")) == [
        "state-e15.data", "state-e20.data.partial", "state-s5.data",
    ]  # fmt: skip
    data = data_path(tmp_path, "state-e15")
    assert data.stat().st_ino == newest_inode  # rewritten, not allocated again
    raw = data.read_bytes()  # the longer old file was cut to the new snapshot's size
    assert raw == b"".join(t[3] for t in TENSORS) and read_manifest(tmp_path, "state-e15") == manifest
    for index in range(manifest.shard_count):
        offset, length = manifest.shard_range(index)
        assert verify_shard(manifest, index, raw[offset : offset + length])
    assert partial.read_bytes() == b"x"


def test_retiring_ignores_other_kinds_and_names_and_a_missing_directory(tmp_path: Path) -> None:
    for name in ("state-s3", "state-s3x", "state-e3", "grads-s3"):
        write_snapshot(tmp_path, name, TENSORS, epoch=1, step=1, shard_bytes=16)
    assert retire_snapshots(tmp_path, "state-s", keeping="state-s9") == data_path(tmp_path, "state-s3")
    assert _published(tmp_path) == {"state-s3x", "state-e3", "grads-s3"}
    assert retire_snapshots(tmp_path / "none", "state-s", keeping="state-s1") is None  # nothing yet


def test_a_failed_write_or_pull_leaves_no_file_behind(tmp_path: Path) -> None:
    def failing():
        yield TENSORS[0]
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        write_snapshot(tmp_path, "state-e2", failing(), epoch=1, step=1, shard_bytes=16)
    pulled = ShardFile(tmp_path, "state-e3", _write(tmp_path / "src"))
    pulled.write(0, bytes(16))
    pulled.close()  # the pull failed before commit
    assert list(tmp_path.iterdir()) == [tmp_path / "src"]


def _mutated(tmp_path: Path, mutate) -> bytes:
    manifest = _write(tmp_path)
    data = manifest.to_json()
    mutate(data)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(format=2), "format"),
        (lambda d: d.update(total_bytes=0), "total_bytes"),
        (lambda d: d.update(total_bytes=50), "tensors[0].offset"),
        (lambda d: d.update(shard_bytes=-1), "shard_bytes"),
        (lambda d: d.update(tensors=[]), "tensors"),
        (lambda d: d["tensors"][0].update(dtype="complex512"), "tensors[0].dtype"),
        (lambda d: d["tensors"][0].update(shape=[3, -5]), "tensors[0].shape"),
        (lambda d: d["tensors"][0].update(nbytes=61), "tensors[0].nbytes"),
        (lambda d: d["tensors"][1].update(offset=10), "tensors[1].offset"),
        (lambda d: d["tensors"][1].update(name="w"), "tensors[1].name"),
        (lambda d: d.update(shards=d["shards"][:-1]), "shards"),
        (lambda d: d["shards"].__setitem__(2, "zz"), "shards[2]"),
        (lambda d: d.update(epoch=-1), "epoch"),
    ],
)
def test_inconsistent_manifest_is_refused(tmp_path: Path, mutate, field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_manifest(_mutated(tmp_path, mutate))
    assert info.value.field == field


def test_truncated_manifest_is_refused(tmp_path: Path) -> None:
    raw = _write(tmp_path).encode()
    for cut in (1, len(raw) // 2, len(raw) - 1):
        with pytest.raises(InputError, match="manifest"):
            parse_manifest(raw[:cut])


def test_data_file_size_must_match(tmp_path: Path) -> None:
    _write(tmp_path)
    with data_path(tmp_path, "snap").open("ab") as f:
        f.write(b"x")
    with pytest.raises(InputError, match="total_bytes"):
        read_manifest(tmp_path, "snap")


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", ".hidden", "x" * 200, "a b"])
def test_names_cannot_build_paths(name: str) -> None:
    with pytest.raises(InputError):
        check_name(name)


def test_token_bucket_paces_to_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=1000.0, burst=100.0, clock=lambda: now[0])
    assert bucket.delay_for(100) == 0.0  # the burst
    assert bucket.delay_for(500) == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.delay_for(1000) == pytest.approx(1.0)
    now[0] = 10.0  # idle time refills only up to the burst
    assert bucket.delay_for(100) == 0.0
    assert bucket.delay_for(100) == pytest.approx(0.1)
