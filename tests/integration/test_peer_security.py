"""The peer API of a real sidecar process under 10,000 hostile requests and frames.

8,000 HTTP requests (unsigned, wrong secret, expired, replayed, signed for another path,
path-traversal names, bad ranges, oversized bodies, unknown routes) and 2,000 frames on an
authenticated stream (garbage bodies, spoofed senders). Every one must be refused with the
right status, counted in the rejection metric by reason, leave the group's view as it was,
never read a file outside the snapshot directory, and never get a 5xx.
"""

from __future__ import annotations

import json
import random
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from chaos_lab.benchmarks.transfer import make_state
from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.adapters.peer_stream import STREAM_PATH
from chaos_sidecar.protocol import MAX_MESSAGE_BYTES, Heartbeat, Message, encode
from chaos_sidecar.security import frame_mac, signed_headers

pytestmark = pytest.mark.timeout(240)
REQUESTS = 8_000
FRAMES = 2_000
NAME = "state"
SECRET_MARKER = b"outside-the-snapshot-dir"
TRAVERSALS = [
    "..",
    "../secret.txt",
    "..%2Fsecret.txt",
    "%2e%2e%2fsecret.txt",
    "a/../../secret.txt",
    "....//secret.txt",
    "%00",
    "secret.txt%00.data",
    "~",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
]


def _paths(rng: random.Random) -> str:
    return rng.choice(
        [
            f"/v1/snapshots/{NAME}/manifest",
            f"/v1/snapshots/{NAME}/shards?start=0&count=1",
            "/v1/probe?bytes=16",
            STREAM_PATH,
        ]
    )


async def test_ten_thousand_hostile_requests_and_frames(tmp_path: Path) -> None:
    rng = random.Random(7)
    snapshots = tmp_path / "snapshots"
    make_state(snapshots, NAME, state_mb=1)
    (tmp_path / "secret.txt").write_bytes(SECRET_MARKER)
    async with LocalCluster(tmp_path / "cluster") as cluster:
        await cluster.start("n0", seed=True, extra=["--snapshot-dir", str(snapshots)])
        await cluster.start("n1")
        await cluster.start("n2")
        await cluster.wait_agreed({"n0", "n1", "n2"}, 30)
        before = await cluster.view("n0")
        url = cluster.nodes["n0"].url
        sent: Counter[str] = Counter()
        statuses: Counter[int] = Counter()
        async with aiohttp.ClientSession() as session:

            async def get(
                path: str, headers: dict[str, str] | None = None, method: str = "GET", data=None
            ) -> int:
                async with session.request(method, url + path, headers=headers, data=data) as response:
                    body = await response.read()
                    assert SECRET_MARKER not in body, path
                    statuses[response.status] += 1
                    assert response.status < 500, (path, response.status, body[:200])
                    return response.status

            for _ in range(REQUESTS):
                kind = rng.choice(
                    [
                        "unsigned",
                        "wrong_secret",
                        "expired",
                        "replayed",
                        "other_path",
                        "traversal",
                        "bad_range",
                        "oversized",
                        "unknown_route",
                    ]
                )
                sent[kind] += 1
                now = time.time_ns()
                path = _paths(rng)
                if kind == "unsigned":
                    headers = rng.choice(
                        [
                            {},
                            {"X-Chaos-Node": "n1"},
                            {"X-Chaos-Timestamp": "x", "X-Chaos-Signature": "y", "X-Chaos-Node": "n1"},
                        ]
                    )
                    assert await get(path, headers) == 401
                elif kind == "wrong_secret":
                    assert (
                        await get(path, signed_headers(rng.randbytes(32), "GET", path, b"", now, "n1")) == 401
                    )
                elif kind == "expired":
                    skew = rng.choice([-1, 1]) * rng.randint(31, 10**6) * 10**9
                    assert (
                        await get(path, signed_headers(cluster.secret, "GET", path, b"", now + skew, "n1"))
                        == 401
                    )
                elif kind == "replayed":
                    good = f"/v1/snapshots/{NAME}/manifest"
                    headers = signed_headers(cluster.secret, "GET", good, b"", now, "n1")
                    assert await get(good, headers) == 200
                    assert await get(good, headers) == 401
                elif kind == "other_path":
                    headers = signed_headers(cluster.secret, "GET", "/v1/probe?bytes=1", b"", now, "n1")
                    assert await get(f"/v1/snapshots/{NAME}/manifest", headers) == 401
                elif kind == "traversal":
                    name = rng.choice(TRAVERSALS)
                    path = f"/v1/snapshots/{name}/{rng.choice(['manifest', 'shards?start=0&count=1'])}"
                    signed = urllib.parse.unquote(path) if rng.random() < 0.3 else path
                    status = await get(path, signed_headers(cluster.secret, "GET", signed, b"", now, "n1"))
                    assert status in (400, 401, 404), (path, status)
                elif kind == "bad_range":
                    path = rng.choice(
                        [
                            f"/v1/snapshots/{NAME}/shards?start=-1&count=1",
                            f"/v1/snapshots/{NAME}/shards?start=0&count=999999",
                            f"/v1/snapshots/{NAME}/shards?start=x",
                            f"/v1/snapshots/{NAME}/shards?start=0&skip=-3",
                            "/v1/probe?bytes=0",
                            "/v1/probe?bytes=99999999999",
                            "/v1/probe?bytes=z",
                        ]
                    )
                    status = await get(path, signed_headers(cluster.secret, "GET", path, b"", now, "n1"))
                    assert status in (400, 416), (path, status)
                elif kind == "oversized":
                    body = b"{" + b" " * (MAX_MESSAGE_BYTES + rng.randint(1, 4096)) + b"}"
                    assert await get("/local/report", method="POST", data=body) == 413
                else:
                    path = rng.choice(["/", "/v2/x", "/v1/snapshots", "/local/../v1/probe", "/metrics/x"])
                    assert await get(path, method=rng.choice(["GET", "POST", "PUT", "DELETE"])) in (
                        401,
                        404,
                        405,
                    )  # /local/../v1/probe is /v1/probe: signed only

            # frames on an authenticated stream: garbage and spoofed senders are dropped one by one
            headers = signed_headers(cluster.secret, "GET", STREAM_PATH, b"", time.time_ns(), "n1")
            frames: Counter[str] = Counter()
            async with session.ws_connect(url + STREAM_PATH, headers=headers) as ws:
                nonce = headers["X-Chaos-Timestamp"]
                for seq in range(1, FRAMES + 1):
                    if rng.random() < 0.2:
                        body = encode(Message("n2", 99, Heartbeat(("n0",), (0, 0), ())))  # n1 speaking as n2
                        frames["spoofed"] += 1
                    else:
                        body = rng.choice(
                            [
                                rng.randbytes(rng.randint(0, 200)),
                                b"{}",
                                b'{"v":1}',
                                json.dumps(
                                    {
                                        "v": 1,
                                        "kind": "commit",
                                        "from": "n1",
                                        "epoch": 5,
                                        "body": {"view": {"epoch": "x"}},
                                    }
                                ).encode(),
                            ]
                        )
                        frames["garbage"] += 1
                    await ws.send_bytes(frame_mac(cluster.secret, "n1", nonce, seq, body) + body)
                await ws.close()
        await cluster.wait_agreed({"n0", "n1", "n2"}, 30)
        after = await cluster.view("n0")
    assert after["view"]["epoch"] == before["view"]["epoch"]
    assert after["view"]["members"] == before["view"]["members"]
    rejections = Counter(after["rejections"]) - Counter(before["rejections"])
    refused_401 = (
        sent["unsigned"] + sent["wrong_secret"] + sent["expired"] + sent["replayed"] + sent["other_path"]
    )
    counted = sum(rejections[r] for r in ("unauthenticated", "expired", "bad_signature", "replayed"))
    # traversal requests may be refused at authentication (401) or at the name check (400), and
    # an "unknown" route may normalise to a signed one
    assert refused_401 <= counted <= refused_401 + sent["traversal"] + sent["unknown_route"]
    assert rejections["replayed"] >= sent["replayed"] and rejections["expired"] >= sent["expired"]
    assert rejections["spoofed_sender"] == frames["spoofed"]
    decode_rejections = sum(
        n for r, n in rejections.items() if r in ("malformed", "bad_field", "version", "unknown_kind")
    )
    assert decode_rejections >= frames["garbage"] - 5  # a few random bodies may be valid empty objects
    print(
        f"\nsent {dict(sent)}; frames {dict(frames)}; statuses {dict(statuses)};",
        f"rejections {dict(rejections)}",
    )
    assert sum(sent.values()) == REQUESTS and sum(frames.values()) == FRAMES
