"""A small causal transformer (character level) trained on a text corpus kept in the
repository (examples/train/data/corpus.txt): AdamW, linear warm-up then cosine decay, gradient
clipping and gradient accumulation (micro-batches).

    python examples/train/tiny_gpt.py --steps 200                 # alone
    chaos-train run --new-group examples/train/tiny_gpt.py        # elastic
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

import chaos_train

CORPUS = Path(__file__).resolve().parent / "data" / "corpus.txt"


class Windows(torch.utils.data.Dataset):
    """Sample i: ``context`` characters starting at i * stride, and the same shifted by one."""

    def __init__(self, text: str, context: int, stride: int) -> None:
        self.vocab = sorted(set(text))
        self.ids = torch.tensor([self.vocab.index(c) for c in text], dtype=torch.long)
        self.context, self.stride = context, stride

    def __len__(self) -> int:
        return (len(self.ids) - self.context - 1) // self.stride

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.stride
        window = self.ids[start : start + self.context + 1]
        return window[:-1], window[1:]


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tokens(x) + self.positions[:t]
        return self.head(self.blocks(h, mask=self.mask[:t, :t], is_causal=True))


def warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4, help="samples per forward pass (accumulation)")
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    data = Windows(CORPUS.read_text(), args.context, stride=args.context // 2)
    torch.manual_seed(args.seed)  # every founding member starts bit-identical
    model = TinyGPT(len(data.vocab), args.context, width=48, layers=2, heads=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = chaos_train.Trainer.total_steps(args.steps)  # the launcher may set the count
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(max(steps // 10, 1), steps))

    def loss(batch):
        x, y = batch
        logits = model(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    trainer = chaos_train.Trainer(
        model, optimizer, data, loss, global_batch=args.global_batch, micro_batch=args.micro_batch,
        seed=args.seed, scheduler=scheduler, max_grad_norm=1.0,
    )  # fmt: skip
    trainer.every(50, lambda info: print(f"step {info.step}: loss {info.loss:.4f} ({info.world} members)"))
    trainer.fit(steps)
    if trainer.loss is None:  # this node joined after the group had trained every step
        print("the group had already finished: no step taken here")
        return
    bits = trainer.loss / math.log(2)
    print(f"done at step {trainer.step}: loss {trainer.loss:.4f} ({bits:.3f} bits per character)")


if __name__ == "__main__":
    main()
