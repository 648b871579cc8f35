"""A small CNN on the 8x8 handwritten digits that scikit-learn ships inside its package (no
download): 1,437 training and 360 test images, Adam, a step-decay LR schedule.

    python examples/train/digits_cnn.py --steps 300               # alone
    chaos-train run --new-group examples/train/digits_cnn.py      # elastic
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import chaos_train


def make_data(seed: int) -> tuple[TensorDataset, TensorDataset]:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test, train = order[:360], order[360:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[test], labels[test])


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # every founding member starts bit-identical
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    train, test = make_data(args.seed)
    model = make_model(args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = chaos_train.Trainer.total_steps(args.steps)  # the launcher may set the count
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(steps // 3, 1), gamma=0.5)

    def loss(batch):
        images, labels = batch
        return nn.functional.cross_entropy(model(images), labels)

    trainer = chaos_train.Trainer(
        model, optimizer, train, loss, global_batch=args.global_batch, seed=args.seed, scheduler=scheduler
    )
    # evaluation on one member of the group
    trainer.every(100, lambda info: print(f"step {info.step}: loss {info.loss:.4f}, test accuracy "
                                          f"{accuracy(model, test):.3f} ({info.world} members)"))  # fmt: skip
    trainer.fit(steps)
    if trainer.loss is None:  # this node joined after the group had trained every step
        print("the group had already finished: no step taken here")
        return
    print(f"done at step {trainer.step}: loss {trainer.loss:.4f}, test accuracy {accuracy(model, test):.3f}")


if __name__ == "__main__":
    main()
