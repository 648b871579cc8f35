"""An overlap joiner entering behind (chaos_train.sdk): its all-reduces, posted ahead with no
gradient, and the averaged gradients it applies later leave it bit-identical to a member."""

from __future__ import annotations

import collections
import datetime
import itertools
import threading

import torch
import torch.distributed as dist

from chaos_train.groups import new_process_group
from chaos_train.sdk import data_parallel_step, log_keeper
from chaos_train.state import Replica
from chaos_train.workload import Workload

STEPS = 3
BATCH = 8


def _replica(dataset) -> Workload:
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def loss(batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    return Workload(Replica(model, optimizer), dataset, loss, global_batch=BATCH)


def test_a_member_posting_ahead_and_replaying_later_ends_identical(tmp_path) -> None:
    torch.set_num_threads(1)
    features = torch.randn(STEPS * BATCH, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 3, (STEPS * BATCH,), generator=torch.Generator().manual_seed(2))
    dataset = torch.utils.data.TensorDataset(features, labels)
    store = dist.TCPStore("127.0.0.1", 0, 2, True, datetime.timedelta(seconds=30), wait_for_workers=False)
    groups = {}

    def build(rank: int) -> None:
        groups[rank] = new_process_group("gloo", store.clone(), rank, 2, timeout_s=20.0, address="127.0.0.1")

    threads = [threading.Thread(target=build, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    member, entering, reference = _replica(dataset), _replica(dataset), _replica(dataset)
    # the entering rank posts all its steps at once: zero gradient, a flag in its own slot
    posted = collections.deque()
    for _ in range(STEPS):
        flat = entering.gradients([], BATCH, [0.0, 1.0])
        posted.append((groups[1].allreduce([flat]), flat))
    batches = [list(range(s * BATCH, (s + 1) * BATCH)) for s in range(STEPS)]
    for batch in batches:  # the member takes the whole batch (the only working rank)
        _, flags = data_parallel_step(member, batch, len(batch), groups[0], flags=[0.0, 0.0])
        assert flags == [0.0, 1.0]  # the entering rank's flag arrived in the sum
    for work, flat in posted:  # later: the entering rank applies what it received, in order
        work.wait()
        entering.apply(flat)
    for batch in batches:  # one process, no split
        for p in reference.params:
            p.grad = None
        reference.loss(reference.fetch(batch)).backward()
        reference.replica.optimizer.step()
    for a, b, c in zip(member.params, entering.params, reference.params, strict=True):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, atol=1e-6)  # summation order differs from the split


def test_log_keepers_take_turns_whatever_the_order_of_the_member_list() -> None:
    members = ["n2", "n0", "n1"]
    keepers = [log_keeper(members, step) for step in range(30)]
    assert collections.Counter(keepers) == {"n0": 10, "n1": 10, "n2": 10}
    assert keepers == [log_keeper(sorted(members), step) for step in range(30)]
    assert all(a != b for a, b in itertools.pairwise(keepers))
