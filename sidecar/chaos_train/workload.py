"""The user's training step as the elastic engine sees it: this member's gradient on its share
of a global batch, and the update from the group's averaged gradient.

The user brings a function from one micro-batch to its mean loss. The SDK calls backward on
that loss weighted by the micro-batch's share of the *global* batch, so that the all-reduced
(summed) gradient is exactly the mean-loss gradient of the whole global batch, whatever the
world size and however unevenly the batch splits: the update equals one process's update on
the same global batch (up to the order of floating-point sums).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import TensorDataset, default_collate

from chaos_sidecar.errors import InputError, UserCodeError
from chaos_train.state import Replica


class Workload:
    def __init__(
        self,
        replica: Replica,
        dataset: Any,
        loss: Callable[[Any], torch.Tensor],
        *,
        global_batch: int,
        micro_batch: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        max_grad_norm: float | None = None,
        num_workers: int = 0,
    ) -> None:
        if not callable(getattr(dataset, "__getitem__", None)) or not callable(
            getattr(dataset, "__len__", None)
        ):
            raise InputError(
                "dataset", f"{type(dataset).__name__} is not a map-style dataset (__getitem__ and __len__)"
            )
        if len(dataset) == 0:
            raise InputError("dataset", "is empty (length 0)")
        if not isinstance(global_batch, int) or global_batch <= 0:
            raise InputError("global_batch", f"expected a positive integer, got {global_batch!r}")
        if global_batch > len(dataset):
            raise InputError(
                "global_batch", f"{global_batch} is larger than the dataset ({len(dataset)} samples)"
            )
        if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch <= 0):
            raise InputError("micro_batch", f"expected a positive integer, got {micro_batch!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise InputError("max_grad_norm", f"expected a positive number, got {max_grad_norm!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise InputError("num_workers", f"expected a non-negative integer, got {num_workers!r}")
        if not callable(loss):
            raise InputError("loss", "expected a function of one batch returning its mean loss")
        self.replica = replica
        self.dataset = dataset
        self.loss = loss
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.collate = collate_fn or default_collate
        self.scheduler = scheduler
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.max_grad_norm = max_grad_norm
        self.params = replica.params()
        if not self.params:
            raise InputError("optimizer", "has no parameters")
        self.grad_bytes = sum(p.numel() * p.element_size() for p in self.params)
        self.device = self.params[0].device
        self.averaged: torch.Tensor | None = None  # the last averaged gradient, as received
        # like DataLoader's workers: processes (forked, so any dataset and collate function
        # work) that read and collate a step's micro-batches in parallel
        self._pool = None
        if num_workers:
            context = torch.multiprocessing.get_context("fork")
            self._pool = context.Pool(num_workers, initializer=_worker_init, initargs=(dataset, self.collate))

    def micro_batches(self, ids: Sequence[int]) -> list[list[int]]:
        size = self.micro_batch or max(len(ids), 1)
        return [list(ids[i : i + size]) for i in range(0, len(ids), size)]

    def fetch(self, ids: list[int]) -> Any:
        try:
            if isinstance(self.dataset, TensorDataset) and self.collate is default_collate:
                # what default_collate makes of its samples, by indexing each tensor once
                return _to([t[ids] for t in self.dataset.tensors], self.device)
            return _to(self.collate([self.dataset[i] for i in ids]), self.device)
        except Exception as exc:
            raise UserCodeError("dataset", f"reading samples {ids[:4]}... failed: {exc!r}") from exc

    def _batches(self, ids: Sequence[int]) -> Iterator[tuple[list[int], Any]]:
        """This member's micro-batches of ``ids``, read and collated (by the workers, if any)."""
        micros = self.micro_batches(ids)
        if self._pool is None or not micros:
            for micro in micros:
                yield micro, self.fetch(micro)
            return
        pending = self._pool.map_async(_worker_fetch, micros)
        try:
            batches = pending.get(WORKER_DEADLINE_S)
        except Exception as exc:
            raise UserCodeError("dataset", f"reading samples in a worker failed: {exc!r}") from exc
        for micro, batch in zip(micros, batches, strict=True):
            yield micro, _to(batch, self.device)

    def gradients(self, ids: Sequence[int], global_size: int, flags: Sequence[float]) -> torch.Tensor:
        """This member's gradient on ``ids`` (its share of a global batch of ``global_size``),
        flattened, followed by its summed loss and ``flags``: the one tensor a step all-reduces."""
        for p in self.params:
            p.grad = None
        loss_sum = 0.0
        for micro, batch in self._batches(ids):
            try:
                loss = self.loss(batch)
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise InputError(
                        "loss", f"must return a scalar tensor (the batch's mean loss), got {loss!r}"
                    )
                weighted = loss * (len(micro) / global_size)
                (self.scaler.scale(weighted) if self.scaler else weighted).backward()
            except InputError:
                raise
            except Exception as exc:
                raise UserCodeError("loss", f"the training step raised {exc!r}") from exc
            loss_sum += float(loss.detach()) * len(micro)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        tail = torch.tensor([loss_sum, *flags], dtype=grads[0].dtype, device=self.device)
        return torch.cat([g.reshape(-1) for g in grads] + [tail])

    def apply(self, flat: torch.Tensor) -> torch.Tensor:
        """Take the averaged gradient from the front of ``flat`` and update: unscale (AMP), clip,
        optimizer step, LR scheduler step. Returns what follows the gradient (the loss and flags,
        or nothing). Without unscaling or clipping the gradients are views of ``flat``: nothing
        writes to it after the all-reduce, and copying costs 0.5 ms per step at 4.5 MB."""
        if flat.device != self.device:  # a replayed gradient, read from a snapshot file
            flat = flat.to(self.device)
        offset = 0
        transforms = self.scaler is not None or self.max_grad_norm is not None
        for p in self.params:
            n = p.numel()
            view = flat[offset : offset + n].view_as(p)
            p.grad = view.clone() if transforms else view  # the log keeps the gradient as averaged
            offset += n
        self.averaged = flat[:offset]
        try:
            if self.scaler is not None:
                self.scaler.unscale_(self.replica.optimizer)
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.replica.optimizer)
                self.scaler.update()
            else:
                self.replica.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
        except Exception as exc:
            raise UserCodeError("optimizer", f"the update raised {exc!r}") from exc
        return flat[offset:]


WORKER_DEADLINE_S = 600.0  # the workers must read one step's samples within this long
_WORKER: tuple[Any, Callable[[list[Any]], Any]] | None = None  # in a worker: (dataset, collate)


def _worker_init(dataset: Any, collate: Callable[[list[Any]], Any]) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = (dataset, collate)


def _worker_fetch(ids: list[int]) -> Any:
    assert _WORKER is not None
    dataset, collate = _WORKER
    return collate([dataset[i] for i in ids])


def _to(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(x, device) for x in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch
