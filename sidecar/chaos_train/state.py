"""Model, optimizer and every registered state object to and from the flat snapshot format.

A replica is the model, its optimizer and named objects with ``state_dict``/``load_state_dict``
(an LR scheduler, an AMP ``GradScaler``, the user's own). Tensors travel as themselves; the
optimizer's per-group settings and each object's state dict travel as ``torch.save`` bytes
(deterministic for equal states, so the replica digest covers them too).
"""

from __future__ import annotations

import hashlib
import io
import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chaos_sidecar.errors import InputError
from chaos_sidecar.transfer.snapshot import (
    data_path,
    manifest_path,
    read_manifest,
    retire_snapshots,
    shard_bytes_for,
    write_snapshot,
)

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
           torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32", torch.int16: "int16",
           torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"}  # fmt: skip
_TORCH = {v: k for k, v in _DTYPES.items()}


@dataclass
class Replica:
    """What defines one member's training state: equal on every member after each step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    objects: dict[str, Any] = field(default_factory=dict)  # name -> object with state_dict

    def __post_init__(self) -> None:
        for name, obj in self.objects.items():
            if not (
                callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))
            ):
                raise InputError(
                    f"state[{name!r}]", f"{type(obj).__name__} has no state_dict/load_state_dict"
                )

    def params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def _blob(value: Any) -> torch.Tensor:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _unblob(tensor: torch.Tensor) -> Any:
    return torch.load(io.BytesIO(tensor.numpy().tobytes()), weights_only=True)


def state_tensors(replica: Replica) -> list[tuple[str, torch.Tensor]]:
    """Every tensor that defines a replica, in a fixed order."""
    out = [(f"param.{name}", p.data) for name, p in replica.model.named_parameters()]
    optimizer = replica.optimizer
    for i, p in enumerate(replica.params()):
        for key in sorted(optimizer.state.get(p, {})):
            value = optimizer.state[p][key]
            if isinstance(value, torch.Tensor):
                out.append((f"optim.{i}.{key}", value))
    # the scheduler changes a group's lr: the settings travel with the state
    out.append(
        (
            "optim.groups",
            _blob([{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]),
        )
    )
    for name in sorted(replica.objects):
        out.append((f"object.{name}", _blob(replica.objects[name].state_dict())))
    return out


def digest(replica: Replica) -> str:
    h = hashlib.sha256()
    for name, tensor in state_tensors(replica):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


Captured = list[tuple[str, str, tuple[int, ...], memoryview]]


def capture(replica: Replica, *, step: int, extra: list[int], copy: bool = True) -> Captured:
    """A copy of the replica's state (and ``extra``: small integers such as the sampler's epoch
    and cursor, stored as int64), ready for ``write``; training may go on meanwhile. The copy
    is torch's (it releases the GIL), so it can run on a thread beside training. Without
    ``copy``, CPU tensors are not copied: the replica must not change until written."""
    tensors = []
    for tname, tensor in [*state_tensors(replica), ("meta.extra", torch.tensor([step, *extra]))]:
        t = tensor.detach().cpu()
        t = t.clone(memory_format=torch.contiguous_format) if copy else t.contiguous()
        tensors.append(
            (tname, _DTYPES[t.dtype], tuple(t.shape), memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        )
    return tensors


def write(
    directory: Path, name: str, captured: Captured, *, step: int, epoch: int, replaces: str | None = None
) -> None:
    """Write ``captured`` as snapshot ``name``. ``replaces``: its kind (a name prefix), whose
    older snapshots it retires, rewriting the newest one's file (see retire_snapshots)."""
    total = sum(raw.nbytes for _, _, _, raw in captured)
    reuse = retire_snapshots(directory, replaces, name) if replaces else None
    write_snapshot(directory, name, captured, epoch=epoch, step=step, shard_bytes=shard_bytes_for(total),
                   reuse=reuse)  # fmt: skip


def save(
    directory: Path, name: str, replica: Replica, *, step: int, extra: list[int], epoch: int,
    replaces: str | None = None,
) -> None:  # fmt: skip
    """Write the replica as snapshot ``name`` from its own tensors, without copying them first
    (one pass less over the state): the replica must not change while this runs."""
    captured = capture(replica, step=step, extra=extra, copy=False)
    write(directory, name, captured, step=step, epoch=epoch, replaces=replaces)


def retire_older(directory: Path, name: str, kind: str) -> None:
    """Snapshot ``name`` (pulled and loaded) retires the older ones of its ``kind`` here."""
    stale = retire_snapshots(directory, kind, name)
    if stale is not None:
        stale.unlink(missing_ok=True)


def load(directory: Path, name: str, replica: Replica) -> list[int]:
    """Load snapshot ``name`` into ``replica``; returns [step, *extra]. Optimizer state the
    replica does not have yet (Adam's, before its first step) is created. Every entry is
    checked before anything changes: a snapshot of another model (a name, shape or parameter
    group that does not fit) is refused naming the entry, and the replica stays as it was."""
    manifest = read_manifest(directory, name)
    raw = _read(data_path(directory, name), manifest.total_bytes)
    params = dict(replica.model.named_parameters())
    by_index = replica.params()
    extra: list[int] = []
    apply: list[Callable[[], None]] = []
    names = {entry.name for entry in manifest.tensors}
    missing = sorted(f"param.{n}" for n in params if f"param.{n}" not in names)
    if missing:
        raise InputError(missing[0], f"snapshot {name} has no {missing[0]}: it is from another model")
    for entry in manifest.tensors:
        dtype = _TORCH[entry.dtype]
        itemsize = dtype.itemsize
        if not entry.nbytes:
            value = torch.empty(entry.shape, dtype=dtype)
        elif entry.offset % itemsize == 0:  # a view of the file's bytes: no copy
            value = torch.frombuffer(raw, dtype=dtype, count=entry.nbytes // itemsize, offset=entry.offset)
            value = value.reshape(entry.shape)
        else:
            chunk = bytearray(raw[entry.offset : entry.offset + entry.nbytes])
            value = torch.frombuffer(chunk, dtype=dtype).reshape(entry.shape)
        kind, _, rest = entry.name.partition(".")
        index, _, key = rest.partition(".")
        if entry.name == "meta.extra":
            extra = [int(x) for x in value.tolist()]
        elif kind == "param" and rest in params and params[rest].shape == value.shape:
            apply.append(lambda p=params[rest], v=value: p.data.copy_(v))
        elif entry.name == "optim.groups":
            groups = _unblob(value)
            if len(groups) != len(replica.optimizer.param_groups):
                raise InputError(entry.name, f"{len(groups)} parameter groups, this optimizer has "
                                 f"{len(replica.optimizer.param_groups)}")  # fmt: skip
            for group, settings in zip(replica.optimizer.param_groups, groups, strict=True):
                apply.append(lambda g=group, s=settings: g.update(s))
        elif kind == "optim" and index.isdigit() and int(index) < len(by_index):
            p = by_index[int(index)]
            # torch keeps Adam's step count on the CPU unless capturable
            device = value.device if key == "step" else p.device
            apply.append(
                lambda p=p, k=key, v=value, d=device: replica.optimizer.state[p].__setitem__(
                    k, v.to(d, copy=True)
                )
            )
        elif kind == "object" and rest in replica.objects:
            loaded = _unblob(value)
            apply.append(lambda o=replica.objects[rest], v=loaded: o.load_state_dict(v))
        else:
            raise InputError(entry.name, f"snapshot {name} holds {entry.name} {entry.shape}, which has no "
                             "place in this model, optimizer and state")  # fmt: skip
    with torch.no_grad():
        for change in apply:
            change()
    return extra


def _read(path: Path, size: int) -> mmap.mmap:
    """The file's ``size`` bytes, mapped (private, never written): tensors view them and are
    copied into the replica from there, without reading the file into a buffer first. The
    file must not be rewritten while mapped (retire_snapshots may reuse it after the load)."""
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    return mapped


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
