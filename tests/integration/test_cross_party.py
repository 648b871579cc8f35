"""The hierarchical all-reduce of a view spanning two parties (chaos_train.crossparty), in real
processes each holding its party's gloo group: the result is the flat sum on every rank, and
the leaders' exchange, run through a recording TCP relay, never carries the tensor's bytes in
clear (while a control run whose channel does not encrypt does: the check can fail).

Each party's ranks meet in their own TCPStore: the only thing that crosses between the
parties is the leaders' channel, which the relay records (party B's leader finds party A's
leader at the relay's address).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "data" / "scripts" / "cross_party_worker.py"
DEADLINE_S = 90.0
SIZE = 1_200_000  # float32: 4.8 MB, two frames of the channel
PARTIES = ["a", "a", "b", "b"]


class Relay:
    """Forwards one connection to ``upstream`` and records the bytes both ways; with ``flip_at``
    it alters one byte of the dialer's stream at that offset (a tampered frame)."""

    def __init__(self, upstream: tuple[str, int], flip_at: int | None = None) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(DEADLINE_S)
        self.port = self.server.getsockname()[1]
        self.upstream = upstream
        self.flip_at = flip_at
        self.crossed = {"to_a": bytearray(), "to_b": bytearray()}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            down, _ = self.server.accept()
        except OSError:
            return
        up = socket.create_connection(self.upstream, timeout=DEADLINE_S)
        down.settimeout(DEADLINE_S)
        pumps = [
            threading.Thread(target=self._pump, args=(down, up, self.crossed["to_a"], self.flip_at)),
            threading.Thread(target=self._pump, args=(up, down, self.crossed["to_b"], None)),
        ]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join(DEADLINE_S)
        down.close()
        up.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray, flip_at: int | None) -> None:
        try:
            while chunk := src.recv(1 << 16):
                data = bytearray(chunk)
                if flip_at is not None and len(record) <= flip_at < len(record) + len(data):
                    data[flip_at - len(record)] ^= 0x01
                record += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
        self.thread.join(DEADLINE_S)


def run_group(tmp_path: Path, clear: bool = False, flip_at: int | None = None):
    """Run the four ranks; (per-rank results, the relay)."""
    timeout = datetime.timedelta(seconds=DEADLINE_S)
    stores = {p: dist.TCPStore("127.0.0.1", 0, None, True, timeout, wait_for_workers=False) for p in "ab"}
    key = secrets.token_bytes(32).hex()
    procs = []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "sidecar")}
    try:
        for rank, party in enumerate(PARTIES):
            out = tmp_path / f"rank{rank}.json"
            cmd = [sys.executable, str(WORKER), str(stores[party].port), str(rank), ",".join(PARTIES), key,
                   str(SIZE), str(out)] + (["clear"] if clear else [])  # fmt: skip
            procs.append(subprocess.Popen(cmd, env=env))
        # party A's leader says where it listens, in A's store; B's leader reads the relay's address
        leader_key = "group/xparty/leader/0"
        stores["a"].wait([leader_key], timeout)
        host, port = json.loads(stores["a"].get(leader_key))
        relay = Relay((host, port), flip_at)
        stores["b"].set(leader_key, json.dumps(["127.0.0.1", relay.port]))
        for p in procs:
            assert p.wait(timeout=DEADLINE_S) == 0
        relay.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(len(PARTIES))]
    return results, relay


def contributions() -> list[np.ndarray]:
    """Each rank's tensor, as the worker makes it."""
    sys.path.insert(0, str(WORKER.parent))
    try:
        from cross_party_worker import contribution
    finally:
        sys.path.remove(str(WORKER.parent))
    return [contribution(r, SIZE).numpy() for r in range(len(PARTIES))]


def test_the_hierarchical_all_reduce_is_the_flat_sum_and_nothing_crosses_in_clear(tmp_path: Path) -> None:
    results, relay = run_group(tmp_path)
    assert all("error" not in r for r in results), results
    sums = {r["sum"] for r in results}
    assert len(sums) == 1  # every rank holds the same bits
    got = np.frombuffer(bytes.fromhex(sums.pop()), dtype=np.float32)
    tensors = contributions()
    np.testing.assert_allclose(got, sum(t.astype(np.float64) for t in tensors), rtol=1e-6, atol=1e-5)
    assert all(r["gathered"] == [[k, 10 * k] for k in range(len(PARTIES))] for r in results)
    to_a, to_b = bytes(relay.crossed["to_a"]), bytes(relay.crossed["to_b"])
    assert len(to_a) > SIZE * 4 and len(to_b) > SIZE * 4  # both partial sums crossed, via the relay
    partial_a, partial_b = (tensors[0] + tensors[1]).tobytes(), (tensors[2] + tensors[3]).tobytes()
    assert partial_a == tensors[0].tobytes()  # the pattern itself
    for piece in range(0, 64 * 4096, 4096):  # no 4 KiB piece of either partial, nor of the sum
        for raw in (partial_a, partial_b, got.tobytes()):
            assert raw[piece : piece + 4096] not in to_a and raw[piece : piece + 4096] not in to_b


def test_the_control_run_without_encryption_shows_the_tensors_on_the_wire(tmp_path: Path) -> None:
    results, relay = run_group(tmp_path, clear=True)
    assert all("error" not in r for r in results), results
    tensors = contributions()
    assert tensors[0].tobytes()[:4096] in bytes(relay.crossed["to_b"])  # A's partial: the pattern
    assert (tensors[2] + tensors[3]).tobytes()[:4096] in bytes(relay.crossed["to_a"])


def test_a_tampered_frame_fails_the_collective_and_no_rank_uses_a_wrong_sum(tmp_path: Path) -> None:
    results, _ = run_group(tmp_path, flip_at=5_000)  # inside B's partial sum, on its way to A
    # party A's leader received the altered frame: A's ranks fail, with the reason
    assert "failed authentication" in results[0]["error"], results[0]
    assert "between parties failed" in results[1]["error"], results[1]
    expected = sum(t.astype(np.float64) for t in contributions())
    for r in results[2:]:  # B got A's frames intact, or fails once A's leader drops the channel
        if "error" not in r:
            got = np.frombuffer(bytes.fromhex(r["sum"]), dtype=np.float32)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
