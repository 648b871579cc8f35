"""The process group of a view whose members belong to several parties: a hierarchical
all-reduce in which cleartext gloo traffic never leaves a party.

1. Within each party the members all-reduce (sum) over a gloo group of that party's ranks
   only: the party's own network, in clear as any single-party job.
2. The party's leader (its first member in the view's order) exchanges the party's partial
   sum with every other party's leader over a SealedChannel (AES-GCM over TCP, keys derived
   per connection from the job's collective key: chaos_train.sealed). Every leader adds the
   partial sums in the same order (the parties' order in the view), so all of them get the
   same bits.
3. The leader broadcasts the global sum within its party, with a status word: a failed
   exchange (a frame that fails authentication, a peer gone, a timeout) fails the collective
   on every member of the party, never hands out a partial result.

The object offers what the trainer uses of a ProcessGroup: ``allreduce([tensor])`` (sum),
``allgather([outputs], [tensor])`` (an all-reduce of a matrix with one row per rank: exact for
integers), ``barrier()``, ``size()`` and ``rank()``, each returning a work with ``wait()`` and
``is_completed()``. Collectives run in order on one thread per group. Dropping the group
closes its channels (the other parties' leaders then fail at once, as gloo's do when a peer
frees its group).

The leaders' listening addresses are agreed in the view epoch's store (fenced as the rest of
the meeting: chaos_train.rendezvous); the channel's context names the epoch and the meeting's
random name, so a channel of another epoch or meeting fails its key confirmation.
"""

from __future__ import annotations

import datetime
import json
import queue
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist

from chaos_train.sealed import MAX_FRAME, ChannelError, SealedChannel, handshake

HEADER = struct.Struct("!QQ16s")  # collective number, bytes, dtype name
STOP_WAIT_S = 60.0  # closing waits this long at most for a collective still running


class Work:
    """A collective posted to a CrossPartyGroup (the shape of torch's Work that the trainer uses)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: str | None = None

    def _finish(self, error: str | None = None) -> None:
        self._error = error
        self._done.set()

    def is_completed(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: datetime.timedelta | float | None = None) -> bool:
        seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
        if not self._done.wait(seconds):
            raise RuntimeError(f"the collective did not complete within {seconds} s")
        if self._error is not None:
            raise RuntimeError(self._error)
        return True


class CrossPartyGroup:
    """See the module's docstring. ``local`` is the gloo group of this rank's party (None for a
    party of one member); ``links`` the leader's channels to the other parties' leaders, by
    party index (empty on a member that is not its party's leader)."""

    def __init__(
        self,
        rank: int,
        size: int,
        party: int,
        local: dist.ProcessGroup | None,
        links: dict[int, SealedChannel],
    ) -> None:
        self._rank, self._size = rank, size
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        runner = _Runner(party, local, links)
        thread = threading.Thread(target=runner.run, args=(self._jobs,), name="cross-party", daemon=True)
        thread.start()
        # the thread holds the runner, not this object: dropping the group stops it
        weakref.finalize(self, _stop, self._jobs, runner.stopped, list(links.values()), thread)

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank

    def _post(self, fn: Callable[[_Runner], None]) -> Work:
        work = Work()
        self._jobs.put((fn, work))
        return work

    def allreduce(self, tensors: list[torch.Tensor]) -> Work:
        (tensor,) = tensors
        return self._post(lambda runner: runner.allreduce(tensor))

    def allgather(self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor]) -> Work:
        ((out,), (mine,)) = outputs, inputs
        rows = torch.zeros((self._size, mine.numel()), dtype=mine.dtype)
        rows[self._rank] = mine.reshape(-1)

        def gather(runner: _Runner) -> None:
            runner.allreduce(rows)
            for r, o in enumerate(out):
                o.copy_(rows[r].reshape(o.shape))

        return self._post(gather)

    def barrier(self) -> Work:
        token = torch.zeros(1)
        return self._post(lambda runner: runner.allreduce(token))


def _stop(
    jobs: queue.SimpleQueue, stopped: threading.Event, links: list[SealedChannel], thread: threading.Thread
) -> None:
    """Close the group: its thread frees the party's gloo group and ends; waited for (as freeing
    a gloo group waits for its own threads), or a process exiting meanwhile aborts in gloo."""
    stopped.set()  # collectives still queued fail at once
    for link in links:
        link.close()  # a leader blocked on a channel fails now
    jobs.put(None)
    if thread is not threading.current_thread():
        thread.join(STOP_WAIT_S)


class _Runner:
    """The collectives of one CrossPartyGroup, in order, on its thread."""

    def __init__(self, party: int, local: dist.ProcessGroup | None, links: dict[int, SealedChannel]) -> None:
        self.party = party
        self.local = local
        self.links = dict(sorted(links.items()))
        self.leader = local is None or local.rank() == 0
        self.count = 0
        self.broken: str | None = None
        self.stopped = threading.Event()
        self._senders = ThreadPoolExecutor(max(1, len(links)), thread_name_prefix="cross-party-send")

    def run(self, jobs: queue.SimpleQueue) -> None:
        try:
            while (job := jobs.get()) is not None:
                fn, work = job
                del job
                if self.stopped.is_set():
                    self.broken = self.broken or "the cross-party group was closed"
                if self.broken is not None:
                    work._finish(f"the cross-party group failed earlier: {self.broken}")
                    continue
                try:
                    fn(self)
                    work._finish()
                except Exception as exc:  # handed to whoever waits on the work
                    self.broken = str(exc)[:300]
                    work._finish(self.broken)
                del fn, work
        finally:
            self._senders.shutdown(wait=False)
            self.local = None
            for link in self.links.values():
                link.close()

    def allreduce(self, tensor: torch.Tensor) -> None:
        flat = tensor.view(-1)
        ext = torch.empty(flat.numel() + 1, dtype=flat.dtype, device=flat.device)
        ext[:-1] = flat
        ext[-1] = 0
        if self.local is not None:
            self.local.allreduce([ext]).wait()
        failure: Exception | None = None
        if self.leader and self.links:
            try:
                ext[:-1] = self.exchange(ext[:-1])
            except Exception as exc:  # every member of the party fails with it (status word)
                failure = exc
                ext[-1] = 1
                for link in self.links.values():  # and the other leaders at once
                    link.close()
        if self.local is not None:
            options = dist.BroadcastOptions()
            options.rootRank, options.rootTensor = 0, 0
            self.local.broadcast([ext], options).wait()
        if failure is not None:
            raise RuntimeError(f"the exchange between parties failed: {failure}") from None
        if ext[-1].item() != 0:
            raise RuntimeError("the exchange between parties failed at this party's leader")
        flat.copy_(ext[:-1])

    def exchange(self, part: torch.Tensor) -> torch.Tensor:
        """The sum of every party's partial sum: this party's ``part`` sent to each other
        leader and theirs received, added in the parties' order."""
        self.count += 1
        mine = part.detach().cpu().contiguous()
        data = memoryview(mine.view(torch.uint8).numpy())  # any dtype, bfloat16 too
        header = HEADER.pack(self.count, len(data), str(mine.dtype).encode()[:16])
        sends = [self._senders.submit(_send, link, header, data) for link in self.links.values()]
        parts = {self.party: mine}
        for index, link in self.links.items():
            if link.recv() != header:
                raise ChannelError(f"the leader of party {index} is at another collective (or dtype, size)")
            buf = bytearray(len(data))
            at = 0
            while at < len(buf):
                chunk = link.recv()
                if len(chunk) > len(buf) - at:
                    raise ChannelError(f"the leader of party {index} sent more than announced")
                buf[at : at + len(chunk)] = chunk
                at += len(chunk)
            parts[index] = (
                torch.frombuffer(buf, dtype=mine.dtype) if buf else torch.empty(0, dtype=mine.dtype)
            )
        for sent in sends:
            sent.result()
        ordered = [parts[i] for i in sorted(parts)]
        total = ordered[0].clone()
        for p in ordered[1:]:
            total += p
        return total.to(part.device)


def _send(link: SealedChannel, header: bytes, data: memoryview) -> None:
    link.send(header)
    for at in range(0, len(data), MAX_FRAME):
        link.send(data[at : at + MAX_FRAME])


# --- building -------------------------------------------------------------------------------

LEADER_KEY = "leader/{}"  # in the epoch's store (prefixed): where party i's leader listens


def open_cross_party(
    store: dist.Store,
    rank: int,
    parties: list[str],
    keys: list[bytes],
    address: str,
    context: bytes,
    timeout_s: float,
    new_group: Callable[[dist.Store, int, int], dist.ProcessGroup],
) -> CrossPartyGroup:
    """This rank's CrossPartyGroup for members of ``parties`` (one name per rank, in the
    view's order), meeting in ``store``: its party's gloo group (``new_group(store, rank,
    size)``) and, on a leader, the channels to the other leaders (listening on ``address``)."""
    names = list(dict.fromkeys(parties))
    party = names.index(parties[rank])
    ranks = [r for r, p in enumerate(parties) if p == parties[rank]]
    local = None
    if len(ranks) > 1:
        local = new_group(dist.PrefixStore(f"party/{party}", store), ranks.index(rank), len(ranks))
    links: dict[int, SealedChannel] = {}
    if rank == ranks[0]:
        links = connect_leaders(dist.PrefixStore("xparty", store), party, len(names), keys, address,
                                context, timeout_s)  # fmt: skip
    return CrossPartyGroup(rank, len(parties), party, local, links)


def connect_leaders(
    store: dist.Store, me: int, count: int, keys: list[bytes], address: str, context: bytes, timeout_s: float
) -> dict[int, SealedChannel]:
    """Channels from party ``me``'s leader to the ``count - 1`` others: it dials every lower
    index (whose address it reads in ``store``) and accepts every higher one."""
    deadline = time.monotonic() + timeout_s
    links: dict[int, SealedChannel] = {}
    listener = None
    try:
        if me < count - 1:
            listener = socket.create_server((address, 0))
            port = listener.getsockname()[1]
            store.set(LEADER_KEY.format(me), json.dumps([address, port]))
        for j in range(me):
            where = json.loads(store.get(LEADER_KEY.format(j)))  # waits, up to the store's timeout
            sock = socket.create_connection(tuple(where), timeout=max(0.001, deadline - time.monotonic()))
            channel, peer = handshake(sock, keys, context, me, True, timeout_s)
            if peer != j:
                channel.close()
                raise ChannelError(f"dialled the leader of party {j}, party {peer} answered")
            links[j] = channel
        while listener is not None and len(links) < count - 1:
            listener.settimeout(max(0.001, deadline - time.monotonic()))
            sock, _ = listener.accept()
            try:
                channel, peer = handshake(sock, keys, context, me, False, timeout_s)
            except ChannelError:
                sock.close()
                continue  # not a leader of this meeting: wait for the real ones until the deadline
            if not me < peer < count or peer in links:
                channel.close()
                continue
            links[peer] = channel
    except (OSError, ChannelError, RuntimeError) as exc:
        for link in links.values():
            link.close()
        raise RuntimeError(f"connecting the parties' leaders: {exc}") from None
    finally:
        if listener is not None:
            listener.close()
    return links
