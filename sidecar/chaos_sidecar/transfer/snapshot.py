"""Snapshot format: one flat data file plus a JSON manifest, no torch needed.

``<dir>/<name>.data`` holds every tensor's bytes back to back; ``<dir>/<name>.manifest.json``
says what is where::

    {"format": 1, "epoch": int, "step": int, "total_bytes": int, "shard_bytes": int,
     "tensors": [{"name", "dtype", "shape", "offset", "nbytes"}, ...],
     "shards": ["<sha256 hex>", ...]}          # one per ceil(total / shard_bytes) shard

The trainer SDK fills the data file from tensors at a step boundary; sidecars serve it and
pullers verify every shard against the manifest. :func:`parse_manifest` refuses anything
inconsistent (truncated, overlapping or out-of-range tensors, wrong shard count) with an
error naming the field. Files are written under a temporary name and renamed, so a reader
never sees half a snapshot.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos_sidecar.errors import InputError, load_json

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_TENSORS = 100_000
MAX_SHARDS = 1 << 20
DTYPE_SIZES = {
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
    "int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "bool": 1,
}  # fmt: skip
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class Manifest:
    epoch: int
    step: int
    total_bytes: int
    shard_bytes: int
    tensors: tuple[TensorEntry, ...]
    shards: tuple[str, ...]  # sha256 hex per shard

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    def shard_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of shard ``index`` in the data file."""
        start = index * self.shard_bytes
        return start, min(self.shard_bytes, self.total_bytes - start)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "epoch": self.epoch,
            "step": self.step,
            "total_bytes": self.total_bytes,
            "shard_bytes": self.shard_bytes,
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "offset": t.offset,
                    "nbytes": t.nbytes,
                }
                for t in self.tensors
            ],
            "shards": list(self.shards),
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()


def check_name(name: str) -> str:
    """Snapshot names are plain tokens: no path can be built from one."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError("name", f"snapshot names are 1-128 of [A-Za-z0-9._-], got {name!r}")
    return name


def data_path(directory: Path, name: str) -> Path:
    return directory / f"{check_name(name)}.data"


def manifest_path(directory: Path, name: str) -> Path:
    return directory / f"{check_name(name)}.manifest.json"


# --- validation -------------------------------------------------------------------------------


def _int(obj: dict, key: str, where: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{where}{key}", f"expected an integer >= {minimum}, got {value!r}")
    return value


def parse_manifest(raw: bytes) -> Manifest:
    """Validate manifest bytes; raises :class:`InputError` naming the field."""
    data = load_json(raw, MAX_MANIFEST_BYTES, lambda _, text: InputError("manifest", text))
    if not isinstance(data, dict):
        raise InputError("manifest", "expected an object")
    if data.get("format") != FORMAT_VERSION:
        raise InputError("format", f"unsupported snapshot format {data.get('format')!r}")
    total = _int(data, "total_bytes", "", 1)
    shard_bytes = _int(data, "shard_bytes", "", 1)
    tensors_raw = data.get("tensors")
    if not isinstance(tensors_raw, list) or not tensors_raw or len(tensors_raw) > MAX_TENSORS:
        raise InputError("tensors", f"expected 1..{MAX_TENSORS} entries")
    tensors = []
    end = 0
    names = set()
    for i, t in enumerate(tensors_raw):
        where = f"tensors[{i}]."
        if not isinstance(t, dict):
            raise InputError(f"tensors[{i}]", "expected an object")
        name = t.get("name")
        if not isinstance(name, str) or not name or len(name) > 512 or name in names:
            raise InputError(f"{where}name", "expected a unique non-empty string")
        names.add(name)
        dtype = t.get("dtype")
        if dtype not in DTYPE_SIZES:
            raise InputError(f"{where}dtype", f"unknown dtype {dtype!r}")
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InputError(f"{where}shape", "expected a list of non-negative integers")
        offset = _int(t, "offset", where)
        nbytes = _int(t, "nbytes", where)
        if nbytes != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise InputError(f"{where}nbytes", "does not match shape and dtype")
        if offset < end:
            raise InputError(f"{where}offset", "overlaps the previous tensor (tensors must be in order)")
        end = offset + nbytes
        if end > total:
            raise InputError(f"{where}offset", "runs past total_bytes")
        tensors.append(TensorEntry(name, dtype, tuple(shape), offset, nbytes))
    shards = data.get("shards")
    expected = -(-total // shard_bytes)
    if not isinstance(shards, list) or len(shards) != expected or expected > MAX_SHARDS:
        raise InputError("shards", f"expected {expected} shard checksums")
    for i, digest in enumerate(shards):
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise InputError(f"shards[{i}]", "expected a sha256 hex digest")
    return Manifest(
        epoch=_int(data, "epoch", ""),
        step=_int(data, "step", ""),
        total_bytes=total,
        shard_bytes=shard_bytes,
        tensors=tuple(tensors),
        shards=tuple(shards),
    )


# --- writing and reading ----------------------------------------------------------------------


class ShardHasher:
    """SHA-256 of each ``shard_bytes`` piece of a byte stream fed in arbitrary chunks: the
    writer hashes the tensors as it writes them, instead of reading the file back."""

    def __init__(self, shard_bytes: int) -> None:
        self.shard_bytes = shard_bytes
        self.digests: list[str] = []
        self._current = hashlib.sha256()
        self._filled = 0

    def update(self, chunk: memoryview) -> None:
        while chunk.nbytes:
            take = min(chunk.nbytes, self.shard_bytes - self._filled)
            self._current.update(chunk[:take])  # releases the GIL on large pieces
            self._filled += take
            chunk = chunk[take:]
            if self._filled == self.shard_bytes:
                self.digests.append(self._current.hexdigest())
                self._current, self._filled = hashlib.sha256(), 0

    def finish(self) -> tuple[str, ...]:
        if self._filled:
            self.digests.append(self._current.hexdigest())
            self._current, self._filled = hashlib.sha256(), 0
        return tuple(self.digests)


MIN_SHARD_BYTES = 4096
MAX_SHARD_BYTES = 256 * 1024
TARGET_SHARDS = 64  # enough pieces for a joiner to spread a small state over many sources


def shard_bytes_for(total_bytes: int) -> int:
    """The shard size of a state of ``total_bytes``: about TARGET_SHARDS shards, each between
    MIN_SHARD_BYTES (hashing and request overhead) and MAX_SHARD_BYTES (a shard is verified and
    re-fetched whole)."""
    return max(MIN_SHARD_BYTES, min(MAX_SHARD_BYTES, -(-total_bytes // TARGET_SHARDS)))


def write_snapshot(
    directory: Path,
    name: str,
    tensors: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview]],
    *,
    epoch: int,
    step: int,
    shard_bytes: int,
    reuse: Path | None = None,
) -> Manifest:
    """Write tensors (name, dtype, shape, raw bytes) as snapshot ``name``; returns its manifest.
    ``reuse``: a retired data file (see :func:`retire_snapshots`) to rewrite in place instead of
    allocating a new one."""
    directory.mkdir(parents=True, exist_ok=True)
    data = data_path(directory, name)
    tmp = data.with_suffix(".data.tmp")
    entries = []
    offset = 0
    hasher = ShardHasher(shard_bytes)
    if reuse is not None:
        try:
            os.replace(reuse, tmp)
        except FileNotFoundError:
            reuse = None
    try:
        with tmp.open("r+b" if reuse is not None else "wb") as f:
            for tname, dtype, shape, raw in tensors:
                view = memoryview(raw).cast("B")
                f.write(view)
                hasher.update(view)
                entries.append(TensorEntry(tname, dtype, tuple(shape), offset, view.nbytes))
                offset += view.nbytes
            f.truncate(offset)  # a reused file may have been longer
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full volume must not keep half a state
        raise
    if offset == 0:
        tmp.unlink()
        raise InputError("tensors", "a snapshot needs at least one byte")
    manifest = Manifest(epoch, step, offset, shard_bytes, tuple(entries), hasher.finish())
    parse_manifest(manifest.encode())  # the writer obeys the same rules as readers
    tmp.replace(data)
    publish_manifest(directory, name, manifest)
    return manifest


def retire_snapshots(directory: Path, prefix: str, keeping: str) -> Path | None:
    """Stop serving the published snapshots named ``<prefix><number>`` other than ``keeping``:
    each one's manifest goes first (a peer asking for it from then on is told there is no such
    snapshot instead of reading a file being rewritten), then its data file. The
    highest-numbered one's data file is not deleted but returned, for :func:`write_snapshot` to
    rewrite in place as ``keeping``: on a memory-backed volume, allocating a new file the size
    of the state costs about as much as writing it. Without this, every snapshot ever taken
    would stay on the volume. Unpublished files (a write or a pull in progress) are left
    alone; their writers remove them if they fail."""
    pattern = re.compile(re.escape(prefix) + r"([0-9]{1,18})\.manifest\.json")
    found = [pattern.fullmatch(path.name) for path in directory.glob(f"{prefix}*.manifest.json")]
    numbered = sorted((int(m[1]), m[0].removesuffix(".manifest.json")) for m in found if m is not None)
    retired = [name for _, name in numbered if name != keeping]
    for name in retired:
        manifest_path(directory, name).unlink(missing_ok=True)
    for name in retired[:-1]:
        data_path(directory, name).unlink(missing_ok=True)
    if not retired or not data_path(directory, retired[-1]).is_file():
        return None
    return data_path(directory, retired[-1])


def publish_manifest(directory: Path, name: str, manifest: Manifest) -> None:
    path = manifest_path(directory, name)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(manifest.encode())
    tmp.replace(path)


def read_manifest(directory: Path, name: str) -> Manifest:
    path = manifest_path(directory, name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("name", f"no snapshot {name!r} in {directory}") from None
    manifest = parse_manifest(raw)
    size = data_path(directory, name).stat().st_size
    if size != manifest.total_bytes:
        raise InputError("total_bytes", f"data file has {size} bytes, manifest says {manifest.total_bytes}")
    return manifest


def verify_shard(manifest: Manifest, index: int, data: bytes | memoryview) -> bool:
    return hashlib.sha256(data).hexdigest() == manifest.shards[index]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class ShardFile:
    """The receiving side: a preallocated data file written shard by shard."""

    def __init__(self, directory: Path, name: str, manifest: Manifest) -> None:
        self.manifest = manifest
        self.final = data_path(directory, name)
        self.path = self.final.with_suffix(".data.partial")
        directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, manifest.total_bytes)
        self.directory = directory
        self.name = name

    def write(self, index: int, data: bytes | memoryview, at: int = 0) -> None:
        offset, length = self.manifest.shard_range(index)
        if at + len(data) > length:
            raise ValueError(f"shard {index}: {at + len(data)} bytes > {length}")
        os.pwrite(self._fd, data, offset + at)

    def read(self, index: int) -> bytes:
        offset, length = self.manifest.shard_range(index)
        return os.pread(self._fd, length, offset)

    def commit(self) -> Path:
        """All shards are in: publish data then manifest (readers look for the manifest)."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self.path.replace(self.final)
        publish_manifest(self.directory, self.name, self.manifest)
        return self.final

    def close(self) -> None:
        """Committed or not: a pull that failed removes its partial file (no pull resumes one)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.path.unlink(missing_ok=True)
