"""The joiner's side: pull a snapshot from several sources at once, following a plan.

1. Fetch the manifest from the first source that answers; check its MAC (join secret) and
   its structure. Every byte is then checked against its per-shard SHA-256.
2. Plan with the shard planner: the snapshot's shards are the finest cut; the planner picks
   how many pieces the snapshot travels in (a power of two up to the shard count: pieces are
   runs of whole shards, their sizes differ by at most one shard) and how many pieces each
   source sends, from the sources' bandwidth estimates.
3. One worker per source pulls its pieces one after another (the planner's model). Each
   base shard is verified as it completes and written in place. With the shard planner's
   split, a source's share goes out in up to REQUESTS_PER_SOURCE requests (one, when it is
   the only source: each extra request costs a round trip), and a worker with
   nothing left takes queued shards from the source expected to finish last
   (:func:`~chaos_sidecar.planning.extended.steal` decides how many, on the rates measured in
   this pull); a source the plan left out first takes one shard, which measures its link (when
   the joiner's site holds the state, only the sources at that site do: see ``nearby``).
4. A source that errors or stalls (no byte for ``stall_s``) is dropped: the shards it had
   not delivered, including the rest of a half-received piece, are re-planned over the
   survivors (:func:`~chaos_sidecar.planning.extended.replan`) and appended to their queues.
   A shard that fails its checksum is fetched again from another source; a source that
   sends two bad shards is dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from chaos_sidecar.errors import ChaosError
from chaos_sidecar.planning import greedy
from chaos_sidecar.planning.extended import Owing, replan, steal
from chaos_sidecar.planning.model import Instance, Source
from chaos_sidecar.security import accepted_keys, signed_headers
from chaos_sidecar.transfer.snapshot import Manifest, ShardFile, parse_manifest, verify_shard

BODY_MAC_HEADER = "X-Chaos-Body-Mac"
READ_BUFFER = 4 << 20  # aiohttp pauses reading at this many buffered bytes (default 64 KiB)
# A source's planned share is requested in up to this many pieces, so that part of it is still
# queued, not in flight, when another source runs out of work and could take some: shards a
# source is already sending cannot be taken without discarding what its link has queued. Each
# extra request costs one round trip.
REQUESTS_PER_SOURCE = 4


class TransferError(ChaosError):
    """The snapshot could not be pulled (no source left, or none has it)."""


@dataclass
class SourceStats:
    bytes: int = 0
    seconds: float = 0.0
    shards: int = 0
    failed: str | None = None
    bad_shards: int = 0


@dataclass
class PullResult:
    manifest: Manifest
    path: Path
    seconds: float
    plan: dict[str, Any]
    per_source: dict[str, SourceStats]
    replans: int
    refetched: int
    steals: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 4),
            "plan": self.plan,
            "replans": self.replans,
            "refetched": self.refetched,
            "steals": self.steals,
            "per_source": [
                {
                    "id": sid,
                    "bytes": s.bytes,
                    "seconds": round(s.seconds, 4),
                    "shards": s.shards,
                    "failed": s.failed,
                }
                for sid, s in sorted(self.per_source.items())
            ],
        }


@dataclass
class _Piece:
    start: int  # first base shard
    count: int


@dataclass
class _Worker:
    source: Source
    url: str
    queue: deque[_Piece] = field(default_factory=deque)
    stats: SourceStats = field(default_factory=SourceStats)
    alive: bool = True
    current: _Piece | None = None  # the piece being received
    current_bytes: int = 0  # its bytes, less a resumed shard's head (its end never moves)
    current_since: float = 0.0
    received_now: int = 0  # bytes of it received so far


# How a snapshot is divided over its sources: pieces per source id, given the manifest, the
# sources and the joiner's download limit; the snapshot travels in as many pieces as they add
# up to (see piece_bounds).
PieceSplit = Callable[[Manifest, list[Source], float | None], dict[str, int]]


def plan_pieces(manifest: Manifest, sources: list[Source], download_Bps: float | None) -> dict[str, int]:
    """The shard planner's split: how many pieces, and how many each source sends."""
    base = manifest.shard_count
    counts = [2**i for i in range(base.bit_length())]  # every power of two up to the shard count
    instance = Instance(
        state_bytes=manifest.total_bytes,
        sources=tuple(sorted(sources, key=lambda u: u.id)),
        download_Bps=download_Bps,
        shard_counts=tuple(counts),
    )
    return greedy.solve(instance).assignment


def piece_bounds(shard_count: int, pieces: int) -> list[int]:
    """The first shard of each of ``pieces`` nearly equal runs of whole shards, and the end."""
    return [i * shard_count // pieces for i in range(pieces + 1)]


class Puller:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        secret: bytes,
        node_id: str,
        directory: Path,
        name: str,
        *,
        stall_s: float = 2.0,
        download_Bps: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        on_throughput: Callable[[str, float], None] | None = None,
        split: PieceSplit = plan_pieces,
        nearby: frozenset[str] = frozenset(),
    ) -> None:
        self.split = split
        # sources at the joiner's own site (chaos_train.sites); only they explore when any is
        # in the pull: one shard on the WAN would hold the whole pull while the LAN is done
        self.nearby = nearby
        # Rebalancing belongs to the shard planner's policy; a split passed in (the lab's
        # baselines) divides the snapshot its own way and keeps to it.
        self.rebalance = split is plan_pieces
        self.session = session
        self.secret = secret
        self.node_id = node_id
        self.directory = directory
        self.name = name
        self.stall_s = stall_s
        self.download_Bps = download_Bps
        self.progress = progress or (lambda done, total: None)
        self.on_throughput = on_throughput or (lambda source, bps: None)

    def _headers(self, path_qs: str) -> dict[str, str]:
        return signed_headers(self.secret, "GET", path_qs, b"", time.time_ns(), self.node_id)

    async def fetch_manifest(self, urls: dict[str, str]) -> Manifest:
        """From the first of ``urls`` (source id -> URL, in order) that serves a valid one."""
        problems = []
        for sid, url in urls.items():
            path = f"/v1/snapshots/{self.name}/manifest"
            try:
                async with self.session.get(url + path, headers=self._headers(path)) as response:
                    if response.status != 200:
                        problems.append(f"{sid}: HTTP {response.status}")
                        continue
                    raw = await response.read()
                    mac = response.headers.get(BODY_MAC_HEADER, "")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                problems.append(f"{sid}: {exc!r}")
                continue
            expected = [
                hmac.new(k, raw, hashlib.sha256).hexdigest()
                for k in accepted_keys(self.secret, time.time_ns())
            ]
            if not any(hmac.compare_digest(mac, e) for e in expected):  # any key valid now (rotation)
                problems.append(f"{sid}: manifest MAC mismatch (tampered)")
                continue
            return parse_manifest(raw)
        raise TransferError(f"no source served a valid manifest: {'; '.join(problems)}")

    async def pull(
        self, sources: list[Source], urls: dict[str, str], manifest: Manifest | None = None
    ) -> PullResult:
        """The snapshot from ``sources`` (their estimates) at ``urls`` (source id -> URL)."""
        if not sources:
            raise TransferError("no sources")
        started = time.monotonic()
        manifest = manifest or await self.fetch_manifest({s.id: urls[s.id] for s in sources})
        assignment = self.split(manifest, sources, self.download_Bps)
        workers = {s.id: _Worker(s, urls[s.id]) for s in sources}
        bounds = piece_bounds(manifest.shard_count, sum(assignment.values()))
        piece = 0
        for sid in sorted(assignment):
            for _ in range(assignment[sid]):
                workers[sid].queue.append(_Piece(bounds[piece], bounds[piece + 1] - bounds[piece]))
                piece += 1
        if self.rebalance and len(workers) > 1:  # one source: no one to take its queued shards
            for w in workers.values():
                w.queue = deque(_requests(list(w.queue), REQUESTS_PER_SOURCE))
        self._manifest = manifest
        self._workers = workers
        self._done = [False] * manifest.shard_count
        self._remaining = manifest.shard_count
        self._bytes_done = 0
        self._replans = 0
        self._refetched = 0
        self._steals = 0
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()
        self._partial: dict[int, bytes] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shard-verify")
        target = ShardFile(self.directory, self.name, manifest)
        self._target = target
        try:
            tasks = [asyncio.create_task(self._run(w)) for w in workers.values()]
            waiter = asyncio.create_task(self._finished.wait())
            while not self._finished.is_set():
                await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                if all(t.done() for t in tasks) and not self._finished.is_set():
                    break
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            waiter.cancel()
            if not self._finished.is_set():
                failed = {w.source.id: w.stats.failed for w in workers.values()}
                raise TransferError(f"{self._remaining} shards missing, every source failed: {failed}")
            path = target.commit()
        finally:
            self._pool.shutdown(wait=True)
            target.close()
        for w in workers.values():
            if w.stats.seconds > 0:
                self.on_throughput(w.source.id, w.stats.bytes / w.stats.seconds)
        return PullResult(
            manifest=manifest,
            path=path,
            seconds=time.monotonic() - started,
            plan={"pieces": assignment, "base_shards": manifest.shard_count},
            per_source={sid: w.stats for sid, w in workers.items()},
            replans=self._replans,
            refetched=self._refetched,
            steals=self._steals,
        )

    # --- workers -------------------------------------------------------------------------------

    async def _run(self, worker: _Worker) -> None:
        while worker.alive and not self._finished.is_set():
            if not worker.queue and not (self.rebalance and self._steal(worker)):
                self._changed.clear()
                await self._changed.wait()
                continue
            piece = worker.queue.popleft()
            error = await self._fetch(worker, piece)
            if error is not None:
                self._fail(worker, error, piece)

    async def _fetch(self, worker: _Worker, piece: _Piece) -> str | None:
        """Pull one piece. Each base shard is hashed and written on a worker thread while the
        next one arrives. On error ``piece`` is narrowed to what is still missing, and the
        bytes of a half-received shard are kept: whoever fetches it next asks for the rest."""
        manifest = self._manifest
        while piece.count and self._done[piece.start]:  # delivered by someone else meanwhile
            piece.start += 1
            piece.count -= 1
        if piece.count == 0:
            return None
        head = self._partial.pop(piece.start, b"")
        path = f"/v1/snapshots/{self.name}/shards?start={piece.start}&count={piece.count}&skip={len(head)}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.stall_s, sock_read=self.stall_s)
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        received = 0
        worker.current, worker.current_since, worker.received_now = piece, began, 0
        shards = range(piece.start, piece.start + piece.count)
        worker.current_bytes = sum(manifest.shard_range(i)[1] for i in shards) - len(head)
        pending: deque[tuple[int, asyncio.Future[bool]]] = deque()
        error = None
        index = piece.start
        try:
            async with self.session.get(
                worker.url + path, headers=self._headers(path), timeout=timeout, read_bufsize=READ_BUFFER
            ) as response:
                if response.status != 200:
                    self._partial[index] = head
                    return f"HTTP {response.status}"
                for index in range(piece.start, piece.start + piece.count):
                    _, length = manifest.shard_range(index)
                    try:
                        data = await response.content.readexactly(length - len(head))
                    except asyncio.IncompleteReadError as exc:
                        self._partial[index] = head + exc.partial
                        received += len(exc.partial)
                        raise ConnectionError("connection closed mid-shard") from None
                    received += len(data)
                    worker.received_now = received
                    if head:
                        data, head = head + data, b""
                    pending.append(
                        (index, loop.run_in_executor(self._pool, self._verify_and_write, index, data))
                    )
                    while len(pending) > 2 or (pending and pending[0][1].done()):
                        done_index, future = pending.popleft()
                        self._complete(worker, done_index, await future, length)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            for done_index, future in pending:
                self._complete(worker, done_index, await future, manifest.shard_range(done_index)[1])
            worker.stats.seconds += time.monotonic() - began
            worker.stats.bytes += received
            worker.current, worker.received_now = None, 0
        # narrow the piece to what is left
        while piece.count and self._done[piece.start]:
            piece.start += 1
            piece.count -= 1
        if error is not None:
            return error
        if worker.stats.bad_shards >= 2:
            return "sent corrupted shards"
        return None

    def _verify_and_write(self, index: int, data: bytes) -> bool:
        """Runs on a worker thread: hashing and pwrite release the GIL."""
        if not verify_shard(self._manifest, index, data):
            return False
        self._target.write(index, data)
        return True

    def _complete(self, worker: _Worker, index: int, ok: bool, length: int) -> None:
        if self._done[index]:
            return
        if not ok:
            worker.stats.bad_shards += 1
            self._refetched += 1
            others = [w for w in self._workers.values() if w.alive and w is not worker] or [worker]
            fastest = max(others, key=lambda w: w.source.bandwidth_Bps)
            fastest.queue.appendleft(_Piece(index, 1))
            self._changed.set()
            return
        self._done[index] = True
        self._remaining -= 1
        worker.stats.shards += 1
        self._bytes_done += length
        self.progress(self._bytes_done, self._manifest.total_bytes)
        if self._remaining == 0:
            self._finished.set()
        if self._remaining == 0 or self.rebalance:  # idle workers look again whether to take some
            self._changed.set()

    def _fail(self, worker: _Worker, error: str, piece: _Piece) -> None:
        """Drop ``worker``; re-plan everything it still owed over the survivors."""
        worker.alive = False
        worker.stats.failed = error
        owed = [piece, *worker.queue] if piece.count else list(worker.queue)
        worker.queue.clear()
        missing = [i for p in owed for i in range(p.start, p.start + p.count) if not self._done[i]]
        survivors = [w for w in self._workers.values() if w.alive]
        if not missing or not survivors:
            self._changed.set()
            return
        self._replans += 1
        _, base = self._manifest.shard_range(0)
        now = [self._now(w) for w in survivors]
        busy = {o.source.id: o.busy_s + o.queued * base / o.source.bandwidth_Bps for o in now}
        assignment = replan(
            [o.source for o in now],
            len(missing),
            base,
            busy_until=busy,
        )
        cursor = 0
        for sid in sorted(assignment):
            take = missing[cursor : cursor + assignment[sid]]
            cursor += len(take)
            queue = self._workers[sid].queue
            for run in _runs(take):
                queue.append(run)
        self._changed.set()

    # --- rebalancing --------------------------------------------------------------------------

    def _rate(self, worker: _Worker) -> float:
        """Bytes/s ``worker``'s source delivers: measured in this pull once it has delivered a
        shard's worth, else the estimate the plan started from."""
        received = worker.stats.bytes + worker.received_now
        seconds = worker.stats.seconds
        if worker.current is not None:
            seconds += time.monotonic() - worker.current_since
        if received < self._manifest.shard_bytes or seconds <= 0:
            return worker.source.bandwidth_Bps
        return received / seconds

    def _now(self, worker: _Worker) -> Owing:
        """``worker`` as the rebalancing decision sees it: its rate now, its queued shards, and
        the seconds it needs for the rest of its current piece and one round trip per queued
        request."""
        rate = self._rate(worker)
        in_flight = worker.current_bytes - worker.received_now if worker.current is not None else 0
        return Owing(
            source=Source(worker.source.id, rate, worker.source.overhead_s),
            queued=sum(p.count for p in worker.queue),
            busy_s=max(in_flight, 0) / rate + len(worker.queue) * worker.source.overhead_s,
        )

    def _steal(self, thief: _Worker) -> bool:
        """Move queued shards from the source expected to finish last to idle ``thief``, if
        that ends the pull sooner (or ``thief`` has not been measured yet); True if it did."""
        others = [self._now(w) for w in self._workers.values() if w.alive and w is not thief]
        nearby = self.nearby & self._workers.keys()
        explore = thief.stats.bytes < self._manifest.shard_bytes and (not nearby or thief.source.id in nearby)
        decision = steal(self._now(thief).source, others, self._manifest.shard_bytes, explore=explore)
        if decision is None:
            return False
        victim, count = self._workers[decision[0]], decision[1]
        taken: list[_Piece] = []
        while count and victim.queue:  # from the tail: the victim keeps its next requests
            last = victim.queue[-1]
            n = min(count, last.count)
            taken.append(_Piece(last.start + last.count - n, n))
            last.count -= n
            count -= n
            if last.count == 0:
                victim.queue.pop()
        thief.queue.extend(sorted(taken, key=lambda p: p.start))
        self._steals += 1
        return bool(taken)


def _requests(pieces: list[_Piece], at_most: int) -> list[_Piece]:
    """A source's planned ``pieces`` (consecutive runs) as up to ``at_most`` nearly equal
    requests when they are fewer, else unchanged."""
    count = sum(p.count for p in pieces)
    if (
        not pieces
        or len(pieces) >= at_most
        or any(a.start + a.count != b.start for a, b in itertools.pairwise(pieces))
    ):
        return pieces
    first = pieces[0].start
    bounds = piece_bounds(count, min(at_most, count))
    return [_Piece(first + a, b - a) for a, b in itertools.pairwise(bounds)]


def _runs(indices: list[int]) -> list[_Piece]:
    """Consecutive shard indices as pieces (one request each)."""
    pieces: list[_Piece] = []
    for i in indices:
        if pieces and pieces[-1].start + pieces[-1].count == i:
            pieces[-1].count += 1
        else:
            pieces.append(_Piece(i, 1))
    return pieces
