"""The spatial-decay attention op (backends ``sdpa`` / ``flex`` / ``eager`` / ``auto``) and its module."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .blockwise_attention import blockwise_decay_attention
from .decay_config import DecayConfig
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

# ``sdpa``: dense bias through PyTorch's SDPA (blockwise when training); ``flex``: the bias inside a FlexAttention
# ``score_mod``; ``eager``: explicit softmax probabilities (slowest, the one that can return them); ``auto``: flex on
# CUDA, sdpa elsewhere.
ATTENTION_BACKENDS = ("sdpa", "flex", "eager", "auto")

# Devices where ``auto`` picks FlexAttention: it is only fused (compiled) there.
FLEX_DEVICE_TYPES = ("cuda",)

_compiled_flex_attention = None
# Why ``auto`` gave up on FlexAttention in this process (the first error it raised), or None.
_flex_failure: str | None = None


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``flex`` on CUDA (unless it already failed here), ``sdpa`` elsewhere; other names as they are.
    ``backend`` is one of ``ATTENTION_BACKENDS``, checked where it was given."""
    if backend == "auto":
        return "flex" if device.type in FLEX_DEVICE_TYPES and _flex_failure is None else "sdpa"
    return backend


def _flex_cannot_train(device_type: str) -> str:
    return (f"attention_backend='flex' has no backward pass on {device_type} in torch {torch.__version__}; "
            f"use attention_backend='sdpa' (or 'auto') to train on {device_type}")


def check_backend_trains(backend: str, device: torch.device) -> None:
    """Raises ``ValueError`` when ``backend`` cannot train on ``device``: a training script asks before it starts.

    FlexAttention is fused (compiled, with a backward pass) on CUDA only; elsewhere it runs forward only.
    """
    if backend == "flex" and device.type not in FLEX_DEVICE_TYPES:
        raise ValueError(_flex_cannot_train(device.type))


class _NoBackward(torch.autograd.Function):
    """Identity whose backward explains that CPU FlexAttention cannot be differentiated."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise NotImplementedError(_flex_cannot_train(grad.device.type))


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


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, rates: torch.Tensor | None, grid_size: tuple[int, int], layout: str = "full"
) -> torch.Tensor:
    """The attention probabilities ``(B, H, N, N)``, decay included, computed explicitly (the ``eager`` backend).

    Full layout: ``softmax(q k^T / sqrt(D) + B)``. Decomposed layout: the one matrix that the row pass followed by
    the column pass applies to ``v``, ``A[(r, c), (r', c')] = C_c[r, r'] * R_r'[c, c']`` with ``R_r`` the
    attention within row ``r`` and ``C_c`` within column ``c``; its rows sum to 1 too. Arguments as
    ``spatial_decay_attention``.
    """
    batch, heads, tokens, dim = q.shape
    height, width = grid_size
    q, k = q.float() * dim**-0.5, k.float()
    if layout == "full":
        logits = q @ k.transpose(-1, -2)  # (B, H, N, N)
        if rates is not None:
            logits = logits + decay_bias(rates.float(), manhattan_distance(height, width, q.device))
        return logits.softmax(-1)
    q, k = (t.reshape(batch, heads, height, width, dim) for t in (q, k))
    row_logits = q @ k.transpose(-1, -2)  # (B, H, h, w, w)
    col_logits = q.transpose(2, 3) @ k.transpose(2, 3).transpose(-1, -2)  # (B, H, w, h, h)
    if rates is not None:
        grid_rates = rates.float().expand(batch, heads, tokens).reshape(batch, heads, height, width)
        row_logits = row_logits + decay_bias(grid_rates, manhattan_distance(1, width, q.device))
        col_logits = col_logits + decay_bias(grid_rates.transpose(2, 3), manhattan_distance(height, 1, q.device))
    rows, cols = row_logits.softmax(-1), col_logits.softmax(-1)
    return torch.einsum("bncrs,bnsct->bnrcst", cols, rows).reshape(batch, heads, tokens, tokens)


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
            FlexAttention ``score_mod``, O(N) memory), ``"eager"`` (``attention_weights @ v``) or ``"auto"``
            (flex on CUDA, sdpa elsewhere; if flex raises, a warning names the error and sdpa serves this and
            every later call).

    Returns:
        ``(B, H, N, D)``.
    """
    check_choice("decay_layout", layout, DECAY_LAYOUTS)
    resolved = resolve_backend(check_choice("attention_backend", backend, ATTENTION_BACKENDS), q.device)
    if backend == "auto" and resolved == "flex":
        return _flex_or_fallback(q, k, v, rates, grid_size, layout)[0]
    return _decayed_attention(q, k, v, rates, grid_size, layout, resolved)


def _flex_or_fallback(q, k, v, rates, grid_size, layout) -> tuple[torch.Tensor, bool]:
    """``auto``'s FlexAttention call; ``(output, whether it fell back to sdpa)``.

    A first GPU run must not die because FlexAttention cannot compile on this machine (old driver, missing
    Triton): the dense path serves instead, and a warning says why, once per process.
    """
    if torch.compiler.is_compiling():  # inside a graph being traced, an error is the compiler's to report
        return _decayed_attention(q, k, v, rates, grid_size, layout, "flex"), False
    try:
        return _decayed_attention(q, k, v, rates, grid_size, layout, "flex"), False
    except Exception as error:
        global _flex_failure
        _flex_failure = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"attention_backend='auto': FlexAttention failed on {q.device} ({_flex_failure}); "
            "using 'sdpa' (dense decay bias) for the rest of this process. "
            "Pass attention_backend='flex' to see the error raised instead.",
            RuntimeWarning,
            stacklevel=3,
        )
        return _decayed_attention(q, k, v, rates, grid_size, layout, "sdpa"), True


def _decayed_attention(q, k, v, rates, grid_size: tuple[int, int], layout: str, backend: str) -> torch.Tensor:
    """``spatial_decay_attention`` with a resolved backend (``sdpa``, ``flex`` or ``eager``)."""
    if backend == "eager":
        weights = attention_weights(q, k, rates, grid_size, layout)  # (B, H, N, N)
        return (weights @ v.float()).to(v.dtype)
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
        decay: the decay's mode, layout, gate init and RMT gammas (``DecayConfig``), checked when it was built.
        qkv_bias: bias on the fused q/k/v projection.
        lepe_kernel_size: if > 0, adds RMT's LePE, a depthwise conv of this size on ``v``.
        backend: the attention backend (``ATTENTION_BACKENDS``); a property of the machine, not of the weights:
            change it with ``set_backend``.

    While ``attention_recorder`` is a list, every call computes its probabilities explicitly (``attention_weights``)
    and appends them to it: how the models return ``output_attentions``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        decay: DecayConfig = DecayConfig(),
        qkv_bias: bool = True,
        lepe_kernel_size: int = 0,
        backend: str = "auto",
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
        self.attention_recorder: list[torch.Tensor] | None = None
        self.set_backend(backend)

    def set_backend(self, backend: str) -> None:
        """Use attention backend ``backend`` from the next call on; ``auto`` is decided at the first call on each
        device type and kept (``backends_in_use``)."""
        self.backend = check_choice("attention_backend", backend, ATTENTION_BACKENDS)
        self.backends_in_use: dict[str, str] = {}  # device type -> the backend that runs there

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
        rates = self.decay_rates(x)
        if self.attention_recorder is not None:
            weights = attention_weights(q, k, rates, grid_size, self.decay.layout)  # (B, H, N, N)
            self.attention_recorder.append(weights)
            out = (weights @ v.float()).to(v.dtype)  # (B, H, N, D)
        else:
            out = self._attend(q, k, v, rates, grid_size)  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(batch, tokens, channels)  # (B, N, C)
        if self.lepe is not None:
            v_img = v.transpose(1, 2).reshape(batch, *grid_size, channels).permute(0, 3, 1, 2)  # (B, C, h, w)
            out = out + self.lepe(v_img).flatten(2).transpose(1, 2)
        return self.proj(out)

    def _attend(self, q, k, v, rates, grid_size: tuple[int, int]) -> torch.Tensor:
        device = q.device.type
        backend = self.backends_in_use.get(device)
        if backend is None:
            backend = resolve_backend(self.backend, q.device)
            if not torch.compiler.is_compiling():  # a record written inside a compiled graph would recompile it
                self.backends_in_use[device] = backend
        if self.backend == "auto" and backend == "flex":
            out, fell_back = _flex_or_fallback(q, k, v, rates, grid_size, self.decay.layout)
            if fell_back:
                self.backends_in_use[device] = "sdpa"
            return out
        return _decayed_attention(q, k, v, rates, grid_size, self.decay.layout, backend)


#################################################################################
#                      Every attention layer of a model                         #
#################################################################################

def set_attention_backend(model: nn.Module, backend: str) -> None:
    """Give every ``SpatialDecayAttention`` inside ``model`` attention backend ``backend``."""
    check_choice("attention_backend", backend, ATTENTION_BACKENDS)
    for module in model.modules():
        if isinstance(module, SpatialDecayAttention):
            module.set_backend(backend)


def attention_backends_in_use(model: nn.Module) -> dict[str, str]:
    """``{device type: backend}`` that the attention layers of ``model`` ran so far (``"sdpa"``, ``"flex"`` or
    ``"eager"``; several joined by ``+`` when layers differ); empty before the first call."""
    used: dict[str, set[str]] = {}
    for module in model.modules():
        if isinstance(module, SpatialDecayAttention):
            for device, backend in module.backends_in_use.items():
                used.setdefault(device, set()).add(backend)
    return {device: "+".join(sorted(backends)) for device, backends in used.items()}


@contextmanager
def recording_attentions(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every attention layer of ``model`` computes its probabilities explicitly and appends them,
    in call order, to the yielded list (``(B, H, N, N)`` each, see ``attention_weights``)."""
    recorded: list[torch.Tensor] = []
    modules = [module for module in model.modules() if isinstance(module, SpatialDecayAttention)]
    for module in modules:
        module.attention_recorder = recorded
    try:
        yield recorded
    finally:
        for module in modules:
            module.attention_recorder = None
