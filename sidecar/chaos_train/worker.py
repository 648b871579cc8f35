"""The built-in job of ``chaos-train local``: a small MLP on a generated classification set.

Run as ``python -m chaos_train.worker ...`` next to a sidecar. No downloads: the data set is
generated from the seed (a random linear teacher with label noise), identically on every node.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from chaos_train.sdk import ElasticTrainer, NoState, TrainerConfig, env_backend
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
    parser.add_argument("--sidecar-url", required=True, help="the local sidecar")
    parser.add_argument("--snapshot-dir", required=True, help="the snapshot volume shared with the sidecar")
    parser.add_argument(
        "--address", help="this node's host for gloo (default: the one its sidecar advertises)"
    )
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
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # several trainers share the machine's cores
    os.nice(5)  # the sidecar's heartbeats are latency-critical; the trainer's math is not
    features, labels = make_data(args.samples, args.seed)
    model = make_model(args.seed, args.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    config = TrainerConfig(
        node_id=args.node_id,
        sidecar_url=args.sidecar_url,
        snapshot_dir=Path(args.snapshot_dir),
        address=args.address,
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
    try:
        ElasticTrainer(config, model, optimizer, loss, features, labels).run(args.steps)
    except SidecarLost as exc:
        print(f"chaos_train.worker: {exc}; stopping", file=sys.stderr)
        return EXIT_SIDECAR_LOST
    except NoState as exc:
        print(f"chaos_train.worker: {exc}; stopping", file=sys.stderr)
        return EXIT_NO_STATE
    return 0


if __name__ == "__main__":
    sys.exit(main())
