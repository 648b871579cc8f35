"""examples/train/mlp.py's model and data, plus a marker: a parameter of MARKER_SIZE floats
whose gradient is the fixed, periodic pattern ``marker_pattern()`` whatever the batch. A
member's gradient on n of a global batch of B samples carries ``pattern * SCALE * n / B`` there, and a
sum of such gradients ``pattern * k / B`` for the k samples summed: with B a power of two and
the pattern small integers, these are exact in float32, so a test can tell those bytes on a
wire for any k (tests/integration/test_two_sites.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import chaos_train

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples" / "train"))
from mlp import make_data, make_model

MARKER_SIZE = 4096
SCALE = 2.0**-10  # the marker's term in the loss (a power of two: exact)
PERIOD = 61  # floats: a needle of two periods is inside any 3 periods of the marker's bytes


def marker_pattern() -> np.ndarray:
    return (np.arange(MARKER_SIZE) % PERIOD + 1).astype(np.float32)


class Marked(torch.nn.Module):
    def __init__(self, seed: int, hidden: int) -> None:
        super().__init__()
        self.mlp = make_model(seed, hidden)
        self.marker = torch.nn.Parameter(torch.zeros(MARKER_SIZE))
        self.register_buffer("pattern", torch.from_numpy(marker_pattern()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--global-batch", type=int, default=32)
    args = parser.parse_args()
    model = Marked(0, args.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def loss(batch):
        x, y = batch  # the marker's term is linear: its gradient is the pattern, exactly
        return torch.nn.functional.cross_entropy(model(x), y) + (model.marker * model.pattern).sum() * SCALE

    trainer = chaos_train.Trainer(
        model, optimizer, make_data(16384, 0), loss, global_batch=args.global_batch, seed=0
    )
    trainer.fit(args.steps)


if __name__ == "__main__":
    main()
