"""Spatial decay: grid distances, RMT gammas, the Context-Aware Gate and the decay bias.

Every decay mode is expressed through one per-token tensor of log-decay *rates* ``a`` of shape
``(B | 1, H, N | 1)``, with ``a <= 0``. The bias of a token pair is

    B(n, m) = (a_n + a_m) * d(n, m)

where ``d`` is the Manhattan distance on the token grid (docs/method.md, sections 2 and 4):

- ``fixed`` (RMT): ``a = 0.5 * log(gamma_k)`` for every token, so ``B = d * log(gamma_k)``;
- ``cag`` (SDT): ``a = 0.5 * alpha_k * logsigmoid(x W_g + b_g)``, so
  ``B = -|alpha_k * 0.5 * (g_n + g_m) * d|`` (the ``-|.|`` is a no-op since ``alpha >= 0, g <= 0``);
- ``none``: no rates at all, attention runs unmasked.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DECAY_MODES = ("none", "fixed", "cag")
DECAY_LAYOUTS = ("full", "decomposed")
DECAY_INITS = ("rmt", "zero")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError naming both."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value


# --------------------------------------------------------------------------------------
#                                   Grid geometry
# --------------------------------------------------------------------------------------

def cached_outside_compile(table: Callable[..., Any]) -> Callable[..., Any]:
    """``table`` cached per arguments in eager mode, so a training step never rebuilds it; computed in the graph
    under ``torch.compile``, where it costs nothing once fused and a cache would be traced through (a warning)."""
    cached = lru_cache(maxsize=64)(table)

    @wraps(table)
    def lookup(*args):
        if torch.compiler.is_compiling():
            return table(*args)
        # Cached tensors outlive the caller's mode: never let them become inference tensors.
        with torch.inference_mode(False):
            return cached(*args)

    return lookup


@cached_outside_compile
def grid_coordinates(height: int, width: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index of every token of a ``height x width`` grid in raster order.

    Returns:
        ``(rows, cols)``, two int64 tensors of shape ``(height * width,)``.
    """
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return rows, cols


@cached_outside_compile
def manhattan_distance(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Manhattan distances ``|r_n - r_m| + |c_n - c_m|`` between all tokens of the grid.

    A ``1 x w`` (or ``h x 1``) grid gives the 1D distances used by the decomposed layout.

    Returns:
        float32 tensor of shape ``(N, N)`` with ``N = height * width``.
    """
    rows, cols = grid_coordinates(height, width, device)
    return ((rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()).float()


# --------------------------------------------------------------------------------------
#                                 Decay rates
# --------------------------------------------------------------------------------------

def rmt_gammas(num_heads: int, initial_value: float = 2.0, heads_range: float = 6.0) -> torch.Tensor:
    """RMT's per-head decay ``gamma_k = 1 - 2^(-a - b * k / H)``.

    Args:
        num_heads: number of heads ``H``.
        initial_value: ``a``, the decay exponent of head 0 (RMT: 2).
        heads_range: ``b``, how far the exponent spreads across heads (RMT: 4 or 6).

    Returns:
        float32 tensor of shape ``(H,)``, every value in ``(0, 1)``.
    """
    k = torch.arange(num_heads, dtype=torch.float64)
    return (1 - 2 ** (-initial_value - heads_range * k / num_heads)).float()


def fixed_rates(gammas: torch.Tensor) -> torch.Tensor:
    """Per-token rates of RMT's fixed decay: ``0.5 * log(gamma_k)`` shaped ``(1, H, 1)``."""
    return (0.5 * gammas.log()).view(1, -1, 1)


def decay_bias(rates: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """The additive log-decay bias ``B(n, m) = (a_n + a_m) * d(n, m)``.

    Args:
        rates: per-token log-decay rates, ``(B | 1, H, N | 1)``, every value ``<= 0``.
        distance: grid distances, ``(N, N)``.

    Returns:
        ``(B | 1, H, N, N)`` bias, ``<= 0`` and symmetric in ``(n, m)``.
    """
    return (rates.unsqueeze(-1) + rates.unsqueeze(-2)) * distance


def decay_map(rates: torch.Tensor, grid_size: tuple[int, int], query: int) -> torch.Tensor:
    """Each head's decay ``exp(B(query, m))`` over the grid, for people to look at.

    Args:
        rates: per-token rates ``(B | 1, H, N | 1)``.
        grid_size: ``(h, w)``.
        query: raster index of the query token, in ``[0, h * w)``.

    Returns:
        ``(B | 1, H, h, w)``, values in ``(0, 1]``, 1 at the query itself.
    """
    height, width = grid_size
    if not 0 <= query < height * width:
        raise ValueError(f"query index {query} is outside the {height}x{width} grid (expected 0..{height * width - 1})")
    dist = manhattan_distance(height, width, rates.device)[query]  # (N,)
    rates = rates.expand(rates.shape[0], rates.shape[1], height * width)
    bias = (rates[..., query : query + 1] + rates) * dist  # (B, H, N)
    return bias.exp().reshape(*bias.shape[:2], height, width)


class ContextAwareGate(nn.Module):
    """SDT's Context-Aware Gate: per-token, per-head decay rates from token content.

    ``f = x W_g + b_g``, ``g = logsigmoid(f) <= 0``, rates ``a = 0.5 * alpha_k * g`` with a
    non-negative per-head scale ``alpha_k``.

    Args:
        dim: token width ``C``.
        num_heads: number of heads ``H``.
        decay_init: ``"rmt"`` starts as RMT's fixed decay (``W_g = 0``, ``b_g = logit(gamma_k)``,
            ``alpha = 1``); ``"zero"`` starts as plain attention (``alpha = 0``).
        initial_value, heads_range: RMT's ``a`` and ``b`` of the gammas the ``"rmt"`` start matches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        decay_init: str = "rmt",
        initial_value: float = 2.0,
        heads_range: float = 6.0,
    ):
        super().__init__()
        self.decay_init = check_choice("decay_init", decay_init, DECAY_INITS)
        self.initial_value = initial_value
        self.heads_range = heads_range
        self.proj = nn.Linear(dim, num_heads)
        self.alpha = nn.Parameter(torch.ones(num_heads))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        gammas = rmt_gammas(self.alpha.numel(), self.initial_value, self.heads_range)
        self.proj.weight.zero_()
        self.proj.bias.copy_(torch.logit(gammas.double()).float())
        self.alpha.fill_(1.0 if self.decay_init == "rmt" else 0.0)

    def log_gates(self, x: torch.Tensor) -> torch.Tensor:
        """``g = logsigmoid(x W_g + b_g)``: ``(B, N, C) -> (B, H, N)``."""
        return F.logsigmoid(self.proj(x)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token rates ``(B, H, N)`` from tokens ``(B, N, C)``."""
        # clamp (not abs or softplus): gradient passes at alpha = 0, so "zero" init can still learn.
        alpha = self.alpha.clamp(min=0).view(1, -1, 1)
        return 0.5 * alpha * self.log_gates(x)  # (B, H, N)


__all__ = [
    "DECAY_MODES",
    "DECAY_LAYOUTS",
    "DECAY_INITS",
    "check_choice",
    "grid_coordinates",
    "manhattan_distance",
    "rmt_gammas",
    "fixed_rates",
    "decay_bias",
    "decay_map",
    "ContextAwareGate",
]
