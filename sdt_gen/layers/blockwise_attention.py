"""Spatial-decay attention that keeps no ``N x N`` tensor for backward: the ``sdpa`` backend's training path.

The dense form builds the bias ``B(n, m) = (a_n + a_m) d(n, m)`` as a ``(B, H, N, N)`` tensor and lets
SDPA save it for backward, which costs ``N / D`` times the memory of ``q``, ``k`` and ``v``. Here the
logits are formed one block of queries at a time, and backward recomputes them from what plain
attention keeps, ``q, k, v`` and the output, plus the ``O(N)`` rates.
The rates' gradient is a reduction of the logits' gradient ``dS`` against the distances:

    dL/da_n = sum_m (dS[n, m] + dS[m, n]) d(n, m)

accumulated block by block: row sums give the query side, column sums the key side.
"""

from __future__ import annotations

import torch

from .spatial_decay import manhattan_distance

# Elements of one block of logits, (B, H, block, N). Measured on a 2-core Xeon (2 MB L2 per core):
# 2M elements (8 MB) is fastest, 16 MB blocks cost 25% more at N = 1024 and 1 MB blocks pay the
# per-block Python overhead. Whatever N is, the transient stays this size.
BLOCK_ELEMENTS = 1 << 21


def _query_blocks(batch: int, heads: int, tokens: int, block_elements: int):
    block = max(1, block_elements // max(1, batch * heads * tokens))
    return [slice(start, min(start + block, tokens)) for start in range(0, tokens, block)]


def _logits(q_block, k_t, rates_block, rates, distance_block) -> torch.Tensor:
    """``q k^T / sqrt(D) + (a_n + a_m) d`` for one block of queries: ``(B, H, b, N)``."""
    logits = q_block @ k_t  # (B, H, b, N); q is pre-scaled
    logits.addcmul_(rates_block.unsqueeze(-1), distance_block)  # + a_n d(n, m)
    logits.addcmul_(rates.unsqueeze(-2), distance_block)  # + a_m d(n, m)
    return logits


class _BlockwiseDecayAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rates, grid_size, block_elements):
        batch, heads, tokens, dim = q.shape
        distance = manhattan_distance(*grid_size, q.device).to(q.dtype)  # (N, N), cached, shared by all heads
        full_rates = rates.expand(rates.shape[0], heads, tokens)  # (B | 1, H, N)
        # q, k, v arrive as strided views of the fused qkv projection: one copy each here, rather
        # than one per block inside every matmul.
        q_scaled, k_t, v_c = q.contiguous() * dim**-0.5, k.transpose(-1, -2).contiguous(), v.contiguous()
        out = q.new_empty(q.shape)
        for rows in _query_blocks(batch, heads, tokens, block_elements):
            logits = _logits(q_scaled[:, :, rows], k_t, full_rates[:, :, rows], full_rates, distance[rows])
            out[:, :, rows] = torch.softmax(logits, dim=-1) @ v_c
        ctx.save_for_backward(q, k, v, rates, out)
        ctx.grid_size, ctx.block_elements = grid_size, block_elements
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rates, out = ctx.saved_tensors
        batch, heads, tokens, dim = q.shape
        scale = dim**-0.5
        distance = manhattan_distance(*ctx.grid_size, q.device).to(q.dtype)
        full_rates = rates.expand(rates.shape[0], heads, tokens)
        q_scaled, k_c = q.contiguous() * scale, k.contiguous()
        k_t, v_t = k_c.transpose(-1, -2).contiguous(), v.transpose(-1, -2).contiguous()
        grad_out = grad_out.contiguous()
        # softmax backward: dS = P * (dP - rowsum(dO * O)), with dP = dO v^T.
        delta = (grad_out * out).sum(-1, keepdim=True)  # (B, H, N, 1)
        want_rates = ctx.needs_input_grad[3]
        grad_q = q.new_empty(q.shape)
        grad_k, grad_v = q.new_zeros(k.shape), q.new_zeros(v.shape)
        grad_rates = q.new_zeros(batch, heads, tokens) if want_rates else None
        for rows in _query_blocks(batch, heads, tokens, ctx.block_elements):
            logits = _logits(q_scaled[:, :, rows], k_t, full_rates[:, :, rows], full_rates, distance[rows])
            probs = torch.softmax(logits, dim=-1)  # (B, H, b, N), recomputed rather than kept
            grad_v += probs.transpose(-1, -2) @ grad_out[:, :, rows]
            grad_logits = torch.matmul(grad_out[:, :, rows], v_t, out=logits)  # dP, in the logits' memory
            grad_logits.sub_(delta[:, :, rows]).mul_(probs)  # dS
            grad_q[:, :, rows] = grad_logits @ k_c
            grad_k += grad_logits.transpose(-1, -2) @ q_scaled[:, :, rows]
            if want_rates:
                weighted = grad_logits.mul_(distance[rows])  # dS * d, in place: dS is used up
                grad_rates[:, :, rows] += weighted.sum(-1)  # query side
                grad_rates += weighted.sum(-2)  # key side
        grad_q.mul_(scale)
        if want_rates:
            grad_rates = grad_rates.sum_to_size(rates.shape)
        return grad_q, grad_k, grad_v, grad_rates, None, None


def blockwise_decay_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rates: torch.Tensor,
    grid_size: tuple[int, int],
    block_elements: int = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(D) + (a_n + a_m) d(n, m)) v`` with ``O(N)`` memory kept for backward.

    Equal (values and gradients, to float rounding) to SDPA with the dense ``decay_bias``; it keeps
    for backward what flash attention keeps plus the rates, and never holds more than one block of
    ``block_elements`` logits.

    Args:
        q, k, v: ``(B, H, N, D)``, ``N = h * w`` tokens in raster order.
        rates: per-token log-decay rates ``(B | 1, H, N | 1)``.
        grid_size: ``(h, w)``.
        block_elements: largest block of logits ``(B, H, block, N)`` formed at once.

    Returns:
        ``(B, H, N, D)``.
    """
    tokens = q.shape[-2]
    if grid_size[0] * grid_size[1] != tokens:
        raise ValueError(f"grid_size {tuple(grid_size)} holds {grid_size[0] * grid_size[1]} tokens; q has {tokens}")
    return _BlockwiseDecayAttention.apply(q, k, v, rates.to(q.dtype), tuple(grid_size), block_elements)


__all__ = ["BLOCK_ELEMENTS", "blockwise_decay_attention"]
