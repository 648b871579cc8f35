"""Trainer SDK: elastic data-parallel PyTorch training driven by the local sidecar.

The public API (see docs/sdk.md): ``Trainer`` runs a user's model, optimizer, data set and
loss function elastically; ``StepInfo`` is what its hooks see. The only package that imports
torch (besides the lab).
"""

from chaos_sidecar.errors import TrainingError, UserCodeError
from chaos_train.sampler import ElasticSampler
from chaos_train.trainer import StepInfo, Trainer

__all__ = ["ElasticSampler", "StepInfo", "Trainer", "TrainingError", "UserCodeError"]
