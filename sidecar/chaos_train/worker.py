"""The built-in job of ``chaos-train local``: a small MLP on a generated classification set.

Run as ``python -m chaos_train.worker ...`` next to a sidecar. No downloads: the data set is
generated from the seed (a random linear teacher with label noise), identically on every node.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from chaos_train import state as snapshot_state
from chaos_train.groups import new_process_group
from chaos_train.sampler import ElasticSampler
from chaos_train.sdk import ElasticTrainer, NoState, TrainerConfig, data_parallel_step, env_backend
from chaos_train.sidecar_client import SidecarLost

EXIT_SIDECAR_LOST = 3
EXIT_NO_STATE = 4  # chaos_lab.localjob knows this number

FEATURES = 64
CLASSES = 10
HIDDEN = 1024


def make_data(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=g)
    teacher = torch.randn(FEATURES, CLASSES, generator=g)
    logits = x @ teacher + 0.5 * torch.randn(samples, CLASSES, generator=g)
    return x, logits.argmax(dim=1)


def make_model(seed: int, hidden: int = HIDDEN) -> torch.nn.Module:
    torch.manual_seed(seed)  # every founding member starts bit-identical
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, CLASSES),
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos_train.worker")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--sidecar-url", help="the local sidecar (required unless --plain)")
    parser.add_argument("--snapshot-dir", help="shared snapshot volume (required unless --plain)")
    parser.add_argument("--rendezvous-dir", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--founding", action="store_true")
    parser.add_argument("--hidden", type=positive_int, default=HIDDEN, help="hidden width (sets state size)")
    parser.add_argument(
        "--transfer-policy",
        choices=("planned", "equal-split", "single-source"),
        default="planned",
        help="how a joiner splits its pull over the sources (baselines for the benchmark)",
    )
    parser.add_argument("--join-mode", choices=("blocking", "overlap"), default="blocking")
    parser.add_argument(
        "--grad-log", type=positive_int, default=TrainerConfig.grad_log,
        help="overlap: averaged gradients the members keep for a joiner's replay",
    )  # fmt: skip
    parser.add_argument(
        "--digest-every", type=int, default=10, help="replica digest period in steps (0: off)"
    )
    parser.add_argument("--plain", type=int, metavar="WORLD", help="baseline: a plain loop, no sidecar")
    parser.add_argument("--rank", type=int, default=0, help="rank for --plain")
    parser.add_argument(
        "--checkpoint-dir", help="--plain: on SIGUSR1 rank 0 writes a checkpoint here and all stop"
    )
    parser.add_argument("--resume", metavar="NAME", help="--plain: start from checkpoint NAME")
    args = parser.parse_args(argv)
    if not args.plain and not (args.sidecar_url and args.snapshot_dir):
        parser.error("--sidecar-url and --snapshot-dir are required (unless --plain)")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)  # several trainers share the machine's cores
    os.nice(5)  # the sidecar's heartbeats are latency-critical; the trainer's math is not
    features, labels = make_data(args.samples, args.seed)
    model = make_model(args.seed, args.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    config = TrainerConfig(
        node_id=args.node_id,
        sidecar_url=args.sidecar_url or "",
        snapshot_dir=Path(args.snapshot_dir or "."),
        rendezvous_dir=Path(args.rendezvous_dir),
        log_path=Path(args.log),
        global_batch=args.global_batch,
        seed=args.seed,
        backend=env_backend(),
        founding=args.founding,
        digest_every=args.digest_every,
        join_mode=args.join_mode,
        grad_log=args.grad_log,
        transfer_policy=args.transfer_policy,
    )
    loss = torch.nn.CrossEntropyLoss(reduction="sum")
    if args.plain:
        plain_loop(args, model, optimizer, loss, features, labels)
    else:
        try:
            ElasticTrainer(config, model, optimizer, loss, features, labels).run(args.steps)
        except SidecarLost as exc:
            print(f"chaos_train.worker: {exc}; stopping", file=sys.stderr)
            return EXIT_SIDECAR_LOST
        except NoState as exc:
            print(f"chaos_train.worker: {exc}; stopping", file=sys.stderr)
            return EXIT_NO_STATE
    return 0


def plain_loop(args, model, optimizer, loss_fn, features, labels) -> None:
    """The baselines: the same model, data and step in one fixed torch.distributed group with
    no sidecar and no elasticity. With ``--checkpoint-dir`` it is the checkpoint-restart
    baseline: SIGUSR1 asks for a stop, the request travels in the step's all-reduce so every
    rank stops after the same step, rank 0 writes a checkpoint and all exit; ``--resume``
    starts a new group (of any size) from that checkpoint."""
    stop = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: stop.append(True))
    sampler = ElasticSampler(len(features), args.global_batch, args.seed)
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - open for the whole loop

    def record(kind: str, **fields) -> None:
        log.write(json.dumps({"t": time.time(), "node": args.node_id, "type": kind, **fields}) + "\n")

    snapshot_state.init_optimizer_state(optimizer)
    step = 0
    if args.resume:
        extra = snapshot_state.load(Path(args.checkpoint_dir), args.resume, model, optimizer)
        step = extra[0]
        sampler.load(extra[1], extra[2])
        record("loaded", step=step)
    store = dist.FileStore(str(Path(args.rendezvous_dir) / "plain-store"), args.plain)
    group = new_process_group("gloo", store, args.rank, args.plain, timeout_s=1800.0)
    record("group_ready", step=step)
    params = list(model.parameters())
    while step < args.steps:
        _, flags = data_parallel_step(
            model, params, optimizer, loss_fn, features, labels, sampler.batch(), (args.rank, args.plain),
            group, flags=[1.0 if stop else 0.0],
        )  # fmt: skip
        sampler.advance()
        step += 1
        record("step", step=step)
        if flags[0] > 0 and args.checkpoint_dir:
            if args.rank == 0:
                epoch, cursor = sampler.state()
                snapshot_state.save(Path(args.checkpoint_dir), "checkpoint", model, optimizer,
                                    step=step, extra=[epoch, cursor], epoch=0)  # fmt: skip
            group.barrier().wait()
            record("stopped", step=step)
            break
    log.close()


if __name__ == "__main__":
    sys.exit(main())
