"""2D rotary position embedding (axial RoPE) for queries and keys on a token grid.

Each head's width ``D`` is split in two halves: channels ``[0, D/2)`` rotate with the token's row,
channels ``[D/2, D)`` with its column. Inside a half of width ``h = D/2`` the channel pair
``(2i, 2i + 1)`` is rotated by the angle ``p * theta_i`` with ``theta_i = base^(-2i / h)``, ``p`` the row
(or column) index. A rotation by ``p_m`` on the query and ``p_n`` on the key leaves ``q_m . k_n`` a function
of ``p_n - p_m`` only, so every attention layer sees the relative offset of each token pair; norms are
unchanged. Composes with any additive logit bias (the spatial decay) since it acts on ``q`` and ``k`` alone.
"""

from __future__ import annotations

import torch

from .embeddings import sincos_2d
from .spatial_decay import check_choice

# Absolute sin-cos positions added once at the input (DiT), 2D rotary positions inside every attention layer, or both.
POSITION_EMBEDDINGS = ("sincos", "rope", "sincos+rope")


def rope_rotation(head_dim: int, height: int, width: int, base: float = 10000.0) -> torch.Tensor:
    """The rotation of every token and channel pair of a ``height x width`` grid in raster order: cosines and sines.

    Kept as cosines and sines, not angles: a model cast to bfloat16 casts its buffers, and an angle of 15 radians
    in bfloat16 is off by 0.06, where a sine is off by at most 0.004.

    Args:
        head_dim: width ``D`` of one attention head (divisible by 4: two axes, pairs of channels).
        height, width: the token grid.
        base: the frequency base (10000 in most releases).

    Returns:
        float32 ``(2, height * width, D / 2)``: the cosines, then the sines, of the angles: the row angles of the
        first ``D / 4`` pairs, then the column angles of the last ``D / 4``.
    """
    if head_dim % 4:
        raise ValueError(f"2D rotary positions need a head width divisible by 4, got {head_dim}")
    if base <= 1:
        raise ValueError(f"rope_base must be > 1, got {base}")
    half = head_dim // 2
    theta = base ** (-torch.arange(0, half, 2, dtype=torch.float64) / half)  # (D/4,)
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)
    angles = torch.cat([rows[:, None] * theta, cols[:, None] * theta], dim=1)  # (N, D/2)
    return torch.stack([angles.cos(), angles.sin()]).float()  # (2, N, D/2)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs ``(2i, 2i + 1)`` of ``x`` ``(..., N, D)`` by ``rotation`` ``(2, N, D/2)`` (``rope_rotation``)."""
    cos, sin = rotation.to(x.dtype)
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)  # (..., N, D/2) each
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)  # (..., N, D)


def position_tables(
    hidden_size: int, num_heads: int, grid_size: tuple[int, int], position_embedding: str, rope_base: float = 10000.0
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The fixed tables of a ``position_embedding`` on a token grid: ``(sincos, rope)``, each None where unused.

    Args:
        hidden_size: token width ``C``.
        num_heads: attention heads (the rotation acts on each head's ``C / num_heads`` channels).
        grid_size: ``(h, w)``.
        position_embedding: one of ``POSITION_EMBEDDINGS``.
        rope_base: frequency base of the rotary positions.

    Returns:
        the sin-cos table ``(1, N, C)`` to add to the tokens, and the rotation ``(2, N, C / num_heads / 2)``
        (``rope_rotation``) for the attention layers.
    """
    check_choice("position_embedding", position_embedding, POSITION_EMBEDDINGS)
    sincos = sincos_2d(hidden_size, *grid_size).unsqueeze(0) if "sincos" in position_embedding else None
    rope = rope_rotation(hidden_size // num_heads, *grid_size, rope_base) if "rope" in position_embedding else None
    return sincos, rope


__all__ = ["POSITION_EMBEDDINGS", "apply_rope", "position_tables", "rope_rotation"]
