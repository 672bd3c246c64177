"""The spatial-decay attention op (backends ``sdpa`` / ``flex`` / ``auto``) and its module."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .blockwise_attention import blockwise_decay_attention
from .decay_config import ATTENTION_BACKENDS, DecayConfig
from .rotary import apply_rope
from .spatial_decay import (
    DECAY_LAYOUTS,
    ContextAwareGate,
    check_choice,
    decay_bias,
    fixed_rates,
    grid_coordinates,
    manhattan_distance,
    rmt_gammas,
)

# Devices where ``auto`` picks FlexAttention: it is only fused (compiled) there.
FLEX_DEVICE_TYPES = ("cuda",)

_compiled_flex_attention = None
# Why ``auto`` gave up on FlexAttention in this process (the first error it raised), or None.
_flex_failure: str | None = None


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``flex`` on CUDA (unless it already failed here), ``sdpa`` elsewhere; other names are checked."""
    check_choice("attention_backend", backend, ATTENTION_BACKENDS)
    if backend == "auto":
        return "flex" if device.type in FLEX_DEVICE_TYPES and _flex_failure is None else "sdpa"
    return backend


class _NoBackward(torch.autograd.Function):
    """Identity whose backward explains that CPU FlexAttention cannot be differentiated."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise NotImplementedError(
            "attention_backend='flex' has no backward pass on CPU in this torch version; "
            "use attention_backend='sdpa' (or 'auto') to train on CPU"
        )


def _flex_attention(q, k, v, score_mod):
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cuda":
        return flex_attention(q, k, v, score_mod=score_mod)
    # The fused kernel only exists compiled; compile once and reuse across calls.
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex_attention(q, k, v, score_mod=score_mod)


def _attend(q, k, v, rates, grid_size: tuple[int, int], backend: str) -> torch.Tensor:
    """Decayed attention over one grid: q, k, v ``(B, H, N, D)``, rates ``(B | 1, H, N | 1)`` or None."""
    if rates is None:
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "sdpa":
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, rates)):
            # Training: SDPA would save the dense (B, H, N, N) bias for backward.
            return blockwise_decay_attention(q, k, v, rates, grid_size)
        bias = decay_bias(rates, manhattan_distance(*grid_size, q.device))  # (B, H, N, N)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))

    batch, heads, tokens, _ = q.shape
    rows, cols = grid_coordinates(*grid_size, q.device)
    rates = rates.float().expand(batch, heads, tokens).contiguous()  # the only O(N) extra tensor
    # CPU FlexAttention refuses inputs that require grad: run it detached, fail at backward instead.
    differentiable = q.device.type == "cuda" or not any(t.requires_grad for t in (q, k, v, rates))
    inputs = (q, k, v, rates) if differentiable else tuple(t.detach() for t in (q, k, v, rates))
    flex_rates = inputs[3]

    def score_mod(score, b, h, q_idx, kv_idx):
        dist = (rows[q_idx] - rows[kv_idx]).abs() + (cols[q_idx] - cols[kv_idx]).abs()
        return score + (flex_rates[b, h, q_idx] + flex_rates[b, h, kv_idx]) * dist

    out = _flex_attention(*inputs[:3], score_mod)
    if differentiable or not torch.is_grad_enabled():
        return out
    return _NoBackward.apply(out, q, k, v, rates)


def spatial_decay_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rates: torch.Tensor | None,
    grid_size: tuple[int, int],
    layout: str = "full",
    backend: str = "auto",
) -> torch.Tensor:
    """Attention with the spatial decay bias ``softmax(q k^T / sqrt(D) + B) v``.

    Args:
        q, k, v: ``(B, H, N, D)`` with ``N = h * w`` tokens in raster order.
        rates: per-token log-decay rates ``(B | 1, H, N | 1)`` (see ``spatial_decay``), or
            ``None`` for plain attention (decay mode ``none``: fused SDPA, no mask at all; with the
            decomposed layout, plain row-then-column attention).
        grid_size: ``(h, w)``.
        layout: ``"full"`` (bias over all tokens) or ``"decomposed"`` (RMT's axial form: attend
            within rows with ``|c_n - c_m|``, then within columns with ``|r_n - r_m|`` on that output).
        backend: ``"sdpa"`` (dense bias, every device, reference), ``"flex"`` (bias computed inside a
            FlexAttention ``score_mod``, O(N) memory) or ``"auto"`` (flex on CUDA, sdpa elsewhere; if
            flex raises, a warning names the error and sdpa serves this and every later call).

    Returns:
        ``(B, H, N, D)``.
    """
    check_choice("decay_layout", layout, DECAY_LAYOUTS)
    resolved = resolve_backend(backend, q.device)
    if backend != "auto" or resolved != "flex" or torch.compiler.is_compiling():
        return _decayed_attention(q, k, v, rates, grid_size, layout, resolved)
    # A first GPU run must not die because FlexAttention cannot compile on this machine (old
    # driver, missing Triton): ``auto`` falls back to the dense path, saying why, once per process.
    try:
        return _decayed_attention(q, k, v, rates, grid_size, layout, "flex")
    except Exception as error:
        global _flex_failure
        _flex_failure = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"attention_backend='auto': FlexAttention failed on {q.device} ({_flex_failure}); "
            "using 'sdpa' (dense decay bias) for the rest of this process. "
            "Pass attention_backend='flex' to see the error raised instead.",
            RuntimeWarning,
            stacklevel=2,
        )
        return _decayed_attention(q, k, v, rates, grid_size, layout, "sdpa")


def _decayed_attention(q, k, v, rates, grid_size: tuple[int, int], layout: str, backend: str) -> torch.Tensor:
    """``spatial_decay_attention`` with a resolved backend (``sdpa`` or ``flex``)."""
    height, width = grid_size
    if layout == "full":
        return _attend(q, k, v, rates, grid_size, backend)

    batch, heads, tokens, dim = q.shape
    if rates is not None:
        rates = rates.expand(batch, heads, tokens).reshape(batch, heads, height, width)

    def rows_first(t):  # (B, H, h, w, ...) -> (B*h, H, w, ...)
        return None if t is None else t.transpose(1, 2).flatten(0, 1)

    def cols_first(t):  # (B, H, h, w, ...) -> (B*w, H, h, ...)
        return None if t is None else t.permute(0, 3, 1, 2, *range(4, t.dim())).flatten(0, 1)

    q, k, v = (t.reshape(batch, heads, height, width, dim) for t in (q, k, v))
    out = _attend(rows_first(q), rows_first(k), rows_first(v), rows_first(rates), (1, width), backend)  # (B*h, H, w, D)
    out = out.reshape(batch, height, heads, width, dim).transpose(1, 2)  # (B, H, h, w, D)
    out = _attend(cols_first(q), cols_first(k), cols_first(out), cols_first(rates), (height, 1), backend)  # (B*w, H, h, D)
    out = out.reshape(batch, width, heads, height, dim).permute(0, 2, 3, 1, 4)  # (B, H, h, w, D)
    return out.reshape(batch, heads, tokens, dim)


class SpatialDecayAttention(nn.Module):
    """Multi-head self-attention on a token grid with SDT's spatial decay.

    Args:
        dim: token width ``C`` (divisible by ``num_heads``).
        num_heads: number of heads ``H``.
        decay: the decay's mode, layout, gate init, backend and RMT gammas (``DecayConfig``).
        qkv_bias: bias on the fused q/k/v projection.
        lepe_kernel_size: if > 0, adds RMT's LePE, a depthwise conv of this size on ``v``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        decay: DecayConfig = DecayConfig(),
        qkv_bias: bool = True,
        lepe_kernel_size: int = 0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.decay = decay
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.gate = (
            ContextAwareGate(dim, num_heads, decay.init, decay.initial_value, decay.heads_range)
            if decay.mode == "cag"
            else None
        )
        self.register_buffer("gammas", rmt_gammas(num_heads, decay.initial_value, decay.heads_range), persistent=False)
        self.lepe = (
            nn.Conv2d(dim, dim, lepe_kernel_size, padding=lepe_kernel_size // 2, groups=dim)
            if lepe_kernel_size
            else None
        )

    def decay_rates(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-token log-decay rates for tokens ``x`` ``(B, N, C)``: ``(B | 1, H, N | 1)`` or None."""
        if self.decay.mode == "none":
            return None
        if self.decay.mode == "fixed":
            return fixed_rates(self.gammas)
        return self.gate(x)

    def forward(
        self, x: torch.Tensor, grid_size: tuple[int, int], rope: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend over tokens ``x`` ``(B, N, C)`` of a ``grid_size`` grid; ``rope``: the grid's 2D rotary
        positions ``(2, N, D/2)`` (``rope_rotation``) to rotate queries and keys by, or None."""
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, N, D)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)  # (B, H, N, D)
        out = spatial_decay_attention(
            q, k, v, self.decay_rates(x), grid_size, self.decay.layout, self.decay.backend
        )  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(batch, tokens, channels)  # (B, N, C)
        if self.lepe is not None:
            v_img = v.transpose(1, 2).reshape(batch, *grid_size, channels).permute(0, 3, 1, 2)  # (B, C, h, w)
            out = out + self.lepe(v_img).flatten(2).transpose(1, 2)
        return self.proj(out)
