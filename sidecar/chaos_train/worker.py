"""The built-in job of ``chaos-train local``: a small MLP on a generated classification set.

Run as ``python -m chaos_train.worker ...`` next to a sidecar. No downloads: the data set is
generated from the seed (a random linear teacher with label noise), identically on every node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from chaos_train.sampler import ElasticSampler
from chaos_train.sdk import ElasticTrainer, TrainerConfig, data_parallel_step, env_backend

FEATURES = 64
CLASSES = 10
HIDDEN = 1024


def make_data(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=g)
    teacher = torch.randn(FEATURES, CLASSES, generator=g)
    logits = x @ teacher + 0.5 * torch.randn(samples, CLASSES, generator=g)
    return x, logits.argmax(dim=1)


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # every founding member starts bit-identical
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, CLASSES),
    )


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
    parser.add_argument("--join-mode", choices=("blocking", "overlap"), default="blocking")
    parser.add_argument(
        "--digest-every", type=int, default=10, help="replica digest period in steps (0: off)"
    )
    parser.add_argument("--plain", type=int, metavar="WORLD", help="baseline: a plain loop, no sidecar")
    parser.add_argument("--rank", type=int, default=0, help="rank for --plain")
    args = parser.parse_args(argv)
    if not args.plain and not (args.sidecar_url and args.snapshot_dir):
        parser.error("--sidecar-url and --snapshot-dir are required (unless --plain)")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)  # several trainers share the machine's cores
    os.nice(5)  # the sidecar's heartbeats are latency-critical; the trainer's math is not
    features, labels = make_data(args.samples, args.seed)
    model = make_model(args.seed)
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
    )
    loss = torch.nn.CrossEntropyLoss(reduction="sum")
    if args.plain:
        plain_loop(args, model, optimizer, loss, features, labels)
    else:
        ElasticTrainer(config, model, optimizer, loss, features, labels).run(args.steps)
    return 0


def plain_loop(args, model, optimizer, loss_fn, features, labels) -> None:
    """The baseline for the SDK's overhead: the same model, data and step, in one fixed
    torch.distributed group with no sidecar, no elasticity and no per-step logging."""
    store = dist.FileStore(str(Path(args.rendezvous_dir) / "plain-store"), args.plain)
    dist.init_process_group("gloo", store=store, rank=args.rank, world_size=args.plain)
    sampler = ElasticSampler(len(features), args.global_batch, args.seed)
    params = list(model.parameters())
    stamps = []
    for _ in range(args.steps):
        data_parallel_step(
            model, params, optimizer, loss_fn, features, labels, sampler.batch(), args.rank, args.plain
        )
        sampler.advance()
        stamps.append(time.time())
    dist.destroy_process_group()
    with open(args.log, "a") as f:
        for i, t in enumerate(stamps, 1):
            f.write(json.dumps({"t": t, "node": args.node_id, "type": "step", "step": i}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
