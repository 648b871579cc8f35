"""The public SDK (chaos_train.Trainer over chaos_train.workload): exact gradient averaging
whatever the world size, the state that travels in snapshots, bad input, user errors."""

from __future__ import annotations

import datetime
import threading

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

import chaos_train
from chaos_sidecar.errors import InputError, UserCodeError
from chaos_train.groups import new_process_group
from chaos_train.sampler import ElasticSampler
from chaos_train.sdk import data_parallel_step
from chaos_train.state import Replica, digest, load, save
from chaos_train.workload import Workload

SAMPLES = 60


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(SAMPLES, 5, generator=g), torch.randint(0, 3, (SAMPLES,), generator=g))


def _workload(dataset, *, micro_batch=None, adam=False, clip=None) -> Workload:
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    if adam:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = None

    def loss(batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    objects = {"scheduler": scheduler} if scheduler else {}
    return Workload(
        Replica(model, optimizer, objects), dataset, loss, global_batch=13, micro_batch=micro_batch,
        scheduler=scheduler, max_grad_norm=clip,
    )  # fmt: skip


@pytest.mark.parametrize("world", range(1, 10))
@pytest.mark.parametrize("setup", [{}, {"micro_batch": 2, "adam": True, "clip": 0.5}])
def test_the_summed_member_gradients_are_one_process_update_whatever_the_world(world: int, setup) -> None:
    """For a mean loss, the members' weighted gradients summed (what the all-reduce does) give
    the same update as one process on the whole global batch (13 samples: a ragged split)."""
    dataset = _data()
    alone, members = _workload(dataset, **setup), [_workload(dataset, **setup) for _ in range(world)]
    sampler = ElasticSampler(SAMPLES, 13, seed=1)
    for _ in range(5):
        batch = sampler.batch()
        alone.apply(alone.gradients(batch, len(batch), []))
        parts = [
            m.gradients(ElasticSampler.split(batch, r, world), len(batch), [float(r)])
            for r, m in enumerate(members)
        ]
        summed = torch.stack(parts).sum(dim=0)
        for m in members:
            tail = m.apply(summed.clone())
            assert tail[-1] == sum(range(world))  # the flags travel behind the gradient
        sampler.advance()
    for m in members:
        assert digest(m.replica) == digest(members[0].replica)
        for a, b in zip(m.params, alone.params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_real_gloo_all_reduce_of_three_ragged_shares_matches_one_process() -> None:
    torch.set_num_threads(1)
    dataset = _data()
    store = dist.TCPStore("127.0.0.1", 0, 3, True, datetime.timedelta(seconds=30), wait_for_workers=False)
    alone, members = (
        _workload(dataset, adam=True, clip=1.0),
        [_workload(dataset, adam=True, clip=1.0) for _ in range(3)],
    )
    sampler = ElasticSampler(SAMPLES, 13, seed=2)
    batches = []
    for _ in range(4):
        batches.append(sampler.batch())
        sampler.advance()
    errors = []

    def member(rank: int) -> None:
        try:
            group = new_process_group("gloo", store.clone(), rank, 3, timeout_s=20.0, address="127.0.0.1")
            for batch in batches:
                data_parallel_step(members[rank], ElasticSampler.split(batch, rank, 3), len(batch), group)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=member, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for batch in batches:
        alone.apply(alone.gradients(batch, len(batch), []))
    assert len({digest(m.replica) for m in members}) == 1
    for a, b in zip(members[0].params, alone.params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_state_with_optimizer_scheduler_and_own_objects_travels_in_a_snapshot(tmp_path) -> None:
    class Counter:
        def __init__(self) -> None:
            self.seen = 0

        def state_dict(self):
            return {"seen": self.seen}

        def load_state_dict(self, state):
            self.seen = state["seen"]

    dataset = _data()
    source = _workload(dataset, adam=True)
    source.replica.objects["counter"] = Counter()
    for step in range(3):
        batch = list(range(step * 13, step * 13 + 13))
        source.apply(source.gradients(batch, 13, []))
        source.replica.objects["counter"].seen += 13
    save(tmp_path, "state", source.replica, step=3, extra=[0, 39], epoch=1)
    fresh = _workload(dataset, adam=True)  # Adam's state does not exist before its first step
    fresh.replica.objects["counter"] = Counter()
    assert digest(fresh.replica) != digest(source.replica)
    assert load(tmp_path, "state", fresh.replica) == [3, 0, 39]
    assert digest(fresh.replica) == digest(source.replica)
    assert fresh.replica.objects["counter"].seen == 39
    assert fresh.replica.optimizer.param_groups[0]["lr"] == source.replica.optimizer.param_groups[0]["lr"]
    for w in (source, fresh):  # and they stay equal
        w.apply(w.gradients(list(range(39, 52)), 13, []))
    assert digest(fresh.replica) == digest(source.replica)


def test_a_snapshot_of_another_model_is_refused_naming_the_tensor(tmp_path) -> None:
    dataset = _data()
    save(tmp_path, "state", _workload(dataset).replica, step=1, extra=[0, 13], epoch=1)
    other = torch.nn.Linear(5, 3)
    with pytest.raises(InputError, match=r"no param\.(bias|weight): it is from another model"):
        load(tmp_path, "state", Replica(other, torch.optim.SGD(other.parameters(), lr=0.1)))


def _model_and_optimizer():
    model = torch.nn.Linear(5, 3)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dataset": TensorDataset(torch.zeros(0, 5), torch.zeros(0))}, "dataset"),
        ({"dataset": [1, 2, 3], "global_batch": 4}, "global_batch"),
        ({"global_batch": 0}, "global_batch"),
        ({"micro_batch": -1}, "micro_batch"),
        ({"state": {"ema": object()}}, "state['ema']"),
        ({"dataset": iter(range(5))}, "dataset"),
    ],
)
def test_bad_input_is_refused_before_training_naming_the_field(change, field) -> None:
    model, optimizer = _model_and_optimizer()
    kwargs = {"dataset": _data(), "global_batch": 8, **change}
    dataset = kwargs.pop("dataset")
    with pytest.raises(InputError) as info:
        chaos_train.Trainer(model, optimizer, dataset, lambda b: model(b[0]).sum(), **kwargs)
    assert info.value.field == field


def test_alone_a_script_trains_the_same_steps_and_a_user_exception_is_not_a_regroup(monkeypatch) -> None:
    monkeypatch.delenv("CHAOS_SIDECAR_URL", raising=False)
    monkeypatch.delenv("CHAOS_STEPS", raising=False)
    model, optimizer = _model_and_optimizer()
    seen = []

    def loss(batch):
        x, y = batch
        if len(seen) == 4:
            raise ValueError("my model broke")
        seen.append(len(x))
        return torch.nn.functional.cross_entropy(model(x), y)

    trainer = chaos_train.Trainer(model, optimizer, _data(), loss, global_batch=12, micro_batch=5)
    steps = []
    trainer.every(1, lambda info: steps.append((info.step, info.world)))
    assert not trainer.elastic
    with pytest.raises(UserCodeError) as info:
        trainer.fit(10)
    assert isinstance(info.value.__cause__, ValueError)  # the user's traceback is chained
    assert info.value.where == "loss"
    assert seen == [5, 5, 2, 5]  # micro-batches of one 12-sample step, then the next step's first
    assert steps == [(1, 1)]


def test_a_loss_that_is_not_a_scalar_is_named() -> None:
    model, optimizer = _model_and_optimizer()
    trainer = chaos_train.Trainer(model, optimizer, _data(), lambda b: model(b[0]), global_batch=4)
    with pytest.raises(InputError, match="scalar"):
        trainer.fit(1)


class _SlowSquares(torch.utils.data.Dataset):
    """A map-style data set that records which process read each sample."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        import os

        return torch.tensor([float(i)]), torch.tensor(float(i * i)), os.getpid()


def test_worker_processes_read_the_same_batches_as_the_main_process(monkeypatch) -> None:
    import os

    monkeypatch.delenv("CHAOS_SIDECAR_URL", raising=False)
    monkeypatch.delenv("CHAOS_STEPS", raising=False)
    results = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        readers = set()

        def loss(batch, model=model, readers=readers):
            x, y, pids = batch
            readers.update(int(p) for p in pids)
            return torch.nn.functional.mse_loss(model(x).squeeze(1), y)

        trainer = chaos_train.Trainer(model, optimizer, _SlowSquares(), loss, global_batch=8, micro_batch=3,
                                      num_workers=workers)  # fmt: skip
        trainer.fit(6)
        results[workers] = (digest(trainer.replica), readers)
    assert results[0][0] == results[2][0]  # the same samples, batches and updates
    assert results[0][1] == {os.getpid()}
    assert os.getpid() not in results[2][1] and len(results[2][1]) >= 1  # read by the workers
    with pytest.raises(InputError, match="num_workers"):
        chaos_train.Trainer(model, optimizer, _SlowSquares(), loss, global_batch=8, num_workers=-1)
