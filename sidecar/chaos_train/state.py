"""Model, optimizer and sampler state to and from the flat snapshot format."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from chaos_sidecar.transfer.snapshot import (
    data_path,
    manifest_path,
    read_manifest,
    shard_bytes_for,
    write_snapshot,
)

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
           torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32"}  # fmt: skip
_TORCH = {v: k for k, v in _DTYPES.items()}


def state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """Every tensor that defines a replica, in a fixed order."""
    out = [(f"param.{name}", p.data) for name, p in model.named_parameters()]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for key in sorted(optimizer.state.get(p, {})):
            value = optimizer.state[p][key]
            if isinstance(value, torch.Tensor):
                out.append((f"optim.{i}.{key}", value))
    return out


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Optimizer state exists from the start, so every replica has the same tensor layout
    (and a snapshot has a place to load into) before the first step."""
    for group in optimizer.param_groups:
        if group.get("momentum"):
            for p in group["params"]:
                optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))


def digest(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str:
    h = hashlib.sha256()
    for name, tensor in state_tensors(model, optimizer):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


Captured = list[tuple[str, str, tuple[int, ...], memoryview]]


def capture(model, optimizer, *, step: int, extra: list[int]) -> Captured:
    """A copy of the replica's state (and ``extra``: small integers such as the sampler's epoch
    and cursor, stored as int64), ready for ``write``; training may go on meanwhile. The copy
    is torch's (it releases the GIL), so it can run on a thread beside training."""
    tensors = []
    for tname, tensor in [*state_tensors(model, optimizer), ("meta.extra", torch.tensor([step, *extra]))]:
        t = tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
        tensors.append((tname, _DTYPES[t.dtype], tuple(t.shape), memoryview(t.view(torch.uint8).numpy())))
    return tensors


def write(directory: Path, name: str, captured: Captured, *, step: int, epoch: int) -> None:
    total = sum(raw.nbytes for _, _, _, raw in captured)
    write_snapshot(directory, name, captured, epoch=epoch, step=step, shard_bytes=shard_bytes_for(total))


def save(directory: Path, name: str, model, optimizer, *, step: int, extra: list[int], epoch: int) -> None:
    write(directory, name, capture(model, optimizer, step=step, extra=extra), step=step, epoch=epoch)


def load(directory: Path, name: str, model, optimizer) -> list[int]:
    """Load snapshot ``name`` into ``model``/``optimizer``; returns [step, *extra]."""
    manifest = read_manifest(directory, name)
    raw = data_path(directory, name).read_bytes()
    current = dict(state_tensors(model, optimizer))
    extra: list[int] = []
    for entry in manifest.tensors:
        chunk = bytearray(raw[entry.offset : entry.offset + entry.nbytes])
        value = (
            torch.frombuffer(chunk, dtype=_TORCH[entry.dtype]).reshape(entry.shape)
            if chunk
            else torch.empty(entry.shape, dtype=_TORCH[entry.dtype])
        )
        if entry.name == "meta.extra":
            extra = [int(x) for x in value.tolist()]
        elif entry.name in current:
            with torch.no_grad():
                current[entry.name].copy_(value)
        else:
            raise ValueError(f"snapshot tensor {entry.name} has no place in this model/optimizer")
    return extra


def save_tensor(directory: Path, name: str, tensor: torch.Tensor, *, step: int) -> None:
    """``tensor`` must not change while this runs (it may run on a writer thread)."""
    t = tensor.detach().contiguous().cpu()
    raw = t.view(torch.uint8).numpy()  # no copy
    write_snapshot(directory, name, [("tensor", _DTYPES[t.dtype], tuple(t.shape), raw)],
                   epoch=0, step=step, shard_bytes=1024 * 1024)  # fmt: skip


def load_tensor(directory: Path, name: str) -> torch.Tensor:
    manifest = read_manifest(directory, name)
    (entry,) = manifest.tensors
    raw = bytearray(data_path(directory, name).read_bytes()[entry.offset : entry.offset + entry.nbytes])
    return torch.frombuffer(raw, dtype=_TORCH[entry.dtype]).reshape(entry.shape)


def remove(directory: Path, name: str) -> None:
    for path in (data_path(directory, name), manifest_path(directory, name)):
        path.unlink(missing_ok=True)
