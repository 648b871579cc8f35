"""Trainer SDK: elastic data-parallel PyTorch training driven by the local sidecar.

The only package that imports torch.
"""

from chaos_train.sampler import ElasticSampler

__all__ = ["ElasticSampler"]
