"""A training script that forgets to seed its model: founding members start from different
parameters, which the SDK must refuse (tests)."""

import torch
from torch.utils.data import TensorDataset

import chaos_train

model = torch.nn.Linear(4, 2)  # no torch.manual_seed: a different start on every member
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(0)
data = TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g))
chaos_train.Trainer(model, optimizer, data, lambda b: torch.nn.functional.cross_entropy(model(b[0]), b[1]),
                    global_batch=8).fit(20)  # fmt: skip
