"""The baselines' trainer: the built-in job's model, data and step in one fixed
torch.distributed group, with no sidecar and no elasticity (``python -m chaos_lab.plain_worker``).

Its ranks meet in a ``FileStore`` under ``--store-dir``: the baselines run on one host; the
product's trainers meet over the network (chaos_train.rendezvous).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from chaos_lab.builtin import load_builtin
from chaos_sidecar.cliutil import positive_int
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_train import state as snapshot_state
from chaos_train.groups import new_process_group
from chaos_train.sampler import ElasticSampler
from chaos_train.sdk import data_parallel_step
from chaos_train.state import Replica
from chaos_train.workload import Workload

BUILTIN = load_builtin()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos_lab.plain_worker")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--world", type=positive_int, required=True, help="ranks in the group")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--store-dir", required=True, help="where the ranks meet (one host)")
    parser.add_argument("--log", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--hidden", type=positive_int, default=BUILTIN.HIDDEN, help="hidden width (sets state size)"
    )
    parser.add_argument(
        "--checkpoint-dir", help="on SIGUSR1 every rank writes a checkpoint here and all stop"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        help="also write a checkpoint every this many steps and go on",
    )
    parser.add_argument("--resume", metavar="NAME", help="start from checkpoint NAME")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # several trainers share the machine's cores
    os.nice(5)  # as the elastic trainers do: the comparison keeps the same priorities
    dataset = BUILTIN.make_data(args.samples, args.seed)
    model = BUILTIN.make_model(args.seed, args.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    def loss(batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    plain_loop(args, Workload(Replica(model, optimizer), dataset, loss, global_batch=args.global_batch))
    return 0


def plain_loop(args, work: Workload) -> None:
    """The baselines: the same model, data and step in one fixed torch.distributed group with
    no sidecar and no elasticity. With ``--checkpoint-dir`` it is the checkpoint-restart
    baseline: SIGUSR1 asks for a stop, the request travels in the step's all-reduce so every
    rank stops after the same step, every rank writes a checkpoint to its own directory (the
    replicas are identical: the storage takes all of it from one rank or a share from each)
    and all exit; ``--checkpoint-every K`` also writes one after every K-th step and trains on
    (periodic checkpoints); ``--resume`` starts a new group (of any size) from a checkpoint."""
    stop = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: stop.append(True))
    sampler = ElasticSampler(len(work.dataset), args.global_batch, args.seed)
    events = EventLog(Path(args.log), args.node_id)
    record = events.write
    step = 0
    if args.resume:
        extra = snapshot_state.load(Path(args.checkpoint_dir), args.resume, work.replica)
        step = extra[0]
        sampler.load(extra[1], extra[2])
        record(Kind.LOADED, step=step)
    store = dist.FileStore(str(Path(args.store_dir) / "plain-store"), args.world)
    group = new_process_group("gloo", store, args.rank, args.world, timeout_s=1800.0, address="127.0.0.1")
    record(Kind.GROUP_READY, step=step)
    while step < args.steps:
        batch = sampler.batch()
        mine = ElasticSampler.split(batch, args.rank, args.world)
        _, flags = data_parallel_step(work, mine, len(batch), group, flags=[1.0 if stop else 0.0])
        sampler.advance()
        step += 1
        record(Kind.STEP, step=step)
        stopping = flags[0] > 0
        if args.checkpoint_dir and (
            stopping or (args.checkpoint_every and step % args.checkpoint_every == 0)
        ):
            epoch, cursor = sampler.state()
            snapshot_state.save(Path(args.checkpoint_dir), "checkpoint", work.replica,
                                step=step, extra=[epoch, cursor], epoch=0)  # fmt: skip
            record(Kind.CHECKPOINT, step=step)
        if stopping and args.checkpoint_dir:
            group.barrier().wait()
            record(Kind.STOPPED, step=step)
            break
    events.close()


if __name__ == "__main__":
    sys.exit(main())
