"""A training script whose loss function raises at its third step (tests: a user error ends
the trainer with its traceback, and is not taken for a failed collective)."""

import torch
from torch.utils.data import TensorDataset

import chaos_train

torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
calls = []


def loss(batch):
    x, y = batch
    calls.append(1)
    if len(calls) == 3:
        raise ValueError("the user's model broke at its third step")
    return torch.nn.functional.cross_entropy(model(x), y)


chaos_train.Trainer(model, optimizer, data, loss, global_batch=8).fit(10)
