"""Patch embedding and fixed 2D sin-cos position embeddings."""

from __future__ import annotations

import torch
from torch import nn


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1D sin-cos embedding: ``(M,) -> (M, embed_dim)``, sines in the first half, cosines in the second."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))
    angles = positions.double().reshape(-1, 1) * omega  # (M, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(embed_dim: int, height: int, width: int) -> torch.Tensor:
    """DiT's fixed 2D position table for a ``height x width`` grid in raster order.

    The first half of the channels encodes the column, the second half the row (DiT's layout,
    so tables built here equal DiT's and diffusers' for square grids).

    Returns:
        float32 tensor of shape ``(height * width, embed_dim)``.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for 2D sin-cos positions, got {embed_dim}")
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    return torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1).float()


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``(B, C, H, W) -> (B, N, D)`` with ``N = (H/p) * (W/p)``.

    Args:
        patch_size: patch side ``p``.
        in_channels: image or latent channels ``C``.
        embed_dim: token width ``D``.
    """

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class LabelEmbedding(nn.Module):
    """Class labels to vectors, with a null class at index ``num_classes`` for classifier-free guidance.

    The null row always exists (unlike an embedding that adds it only when dropout is on), so a
    model trained without label dropout can still be sampled unconditionally after fine-tuning.

    Args:
        num_classes: number of real classes.
        hidden_size: embedding width.
        dropout_prob: probability of replacing a label with the null class during training.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is not None:
            drop = force_drop_ids == 1
        elif self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = None
        if drop is not None:
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)  # (B, D)
