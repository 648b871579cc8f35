"""A small MLP on a generated classification set: the job `make demo` and `chaos-train local`
run by default. No downloads: the data is generated from the seed (a random linear teacher
with label noise), identically on every node.

    python examples/train/mlp.py --steps 100            # alone, one plain process
    chaos-train run --new-group examples/train/mlp.py   # elastic, with a sidecar
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import TensorDataset

import chaos_train

FEATURES = 64
CLASSES = 10
HIDDEN = 1024


def make_data(samples: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=g)
    teacher = torch.randn(FEATURES, CLASSES, generator=g)
    logits = x @ teacher + 0.5 * torch.randn(samples, CLASSES, generator=g)
    return TensorDataset(x, logits.argmax(dim=1))


def make_model(seed: int, hidden: int = HIDDEN) -> torch.nn.Module:
    torch.manual_seed(seed)  # every founding member starts bit-identical
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, CLASSES),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="hidden width (sets the state size)")
    parser.add_argument("--device", default="cpu", help="where the model trains (cpu, cuda, cuda:1, ...)")
    args = parser.parse_args()

    dataset = make_data(args.samples, args.seed)
    model = make_model(args.seed, args.hidden).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    def loss(batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    trainer = chaos_train.Trainer(
        model, optimizer, dataset, loss, global_batch=args.global_batch, seed=args.seed
    )
    trainer.every(50, lambda info: print(f"step {info.step}: loss {info.loss:.4f} ({info.world} members)"))
    trainer.fit(args.steps)
    if trainer.loss is None:  # this node joined after the group had trained every step
        print("the group had already finished: no step taken here")
        return
    x, y = (t.to(args.device) for t in dataset.tensors)
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    print(f"done at step {trainer.step}: loss {trainer.loss:.4f}, accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
