"""Stochastic depth (drop path): drop a whole residual branch per sample during training."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero the residual branch ``x`` for a random subset of samples, rescaling the survivors.

    Args:
        x: ``(B, ...)``, one residual branch output per sample.
        drop_prob: probability of dropping a sample's branch.
        training: identity unless True.

    Returns:
        ``x`` with each sample kept (scaled by ``1 / (1 - drop_prob)``) or zeroed.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)  # (B, 1, ...)
    return x * mask.div_(keep_prob)


class DropPath(nn.Module):
    """Stochastic depth of a residual branch (Huang et al. 2016), per sample.

    Args:
        drop_prob: probability of dropping the branch of a sample, in ``[0, 1)``.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"
