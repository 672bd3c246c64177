"""The sdpa backend's training path: blockwise decay attention against the dense bias it replaces."""

import pytest
import torch
import torch.nn.functional as F

from sdt_gen.layers import (
    DecayConfig,
    SpatialDecayAttention,
    blockwise_decay_attention,
    decay_bias,
    manhattan_distance,
    spatial_decay_attention,
)
from sdt_gen.layers import attention as attention_module


def dense_decay_attention(q, k, v, rates, grid_size, block_elements=None):
    """The reference: SDPA with the whole (B, H, N, N) bias, differentiated by autograd."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=decay_bias(rates, manhattan_distance(*grid_size)))


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (1, 7), (6, 1)])
@pytest.mark.parametrize("rates_shape", ["per_token", "per_head"])  # cag: (B, H, N); fixed: (1, H, 1)
@pytest.mark.parametrize("block_elements", [1 << 22, 50])  # one block; many, the last one short
def test_values_and_gradients_match_the_dense_bias(grid, rates_shape, block_elements):
    torch.manual_seed(0)
    n = grid[0] * grid[1]
    q, k, v = (torch.randn(2, 3, n, 8, requires_grad=True) for _ in range(3))
    shape = (2, 3, n) if rates_shape == "per_token" else (1, 3, 1)
    rates = (-torch.rand(shape)).requires_grad_()
    grad = torch.randn(2, 3, n, 8)

    expected = dense_decay_attention(q, k, v, rates, grid)
    expected_grads = torch.autograd.grad(expected, (q, k, v, rates), grad)
    out = blockwise_decay_attention(q, k, v, rates, grid, block_elements=block_elements)
    grads = torch.autograd.grad(out, (q, k, v, rates), grad)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for name, got, want in zip("q k v rates".split(), grads, expected_grads):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"gradient of {name}")


@pytest.mark.parametrize("mode", ["fixed", "cag"])
@pytest.mark.parametrize("layout", ["full", "decomposed"])
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_layer_gradients_match_the_dense_bias(mode, layout, grid, monkeypatch):
    torch.manual_seed(0)
    layer = SpatialDecayAttention(24, 3, DecayConfig(mode=mode, layout=layout), backend="sdpa")
    if mode == "cag":  # away from the RMT start, so the gate's weights get non-trivial gradients
        torch.nn.init.normal_(layer.gate.proj.weight, std=0.3)
        torch.nn.init.uniform_(layer.gate.alpha, 0.5, 1.5)
    x = torch.randn(2, grid[0] * grid[1], 24, requires_grad=True)

    def outputs_and_grads():
        out = layer(x, grid)
        params = [x, *layer.parameters()]
        return out, torch.autograd.grad(out.square().sum(), params)

    out, grads = outputs_and_grads()
    monkeypatch.setattr(attention_module, "blockwise_decay_attention", dense_decay_attention)
    expected, expected_grads = outputs_and_grads()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    names = ["x", *(name for name, _ in layer.named_parameters())]
    assert mode != "cag" or {"gate.proj.weight", "gate.proj.bias", "gate.alpha"} <= set(names)
    for name, got, want in zip(names, grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"gradient of {name}")


@pytest.mark.parametrize("layout", ["full", "decomposed"])
def test_nothing_of_size_n_by_n_is_kept_for_backward(layout):
    torch.manual_seed(0)
    grid, tokens = (8, 8), 64
    layer = SpatialDecayAttention(24, 3, DecayConfig(mode="cag", layout=layout), backend="sdpa")
    x = torch.randn(2, tokens, 24, requires_grad=True)  # q, k, v: 2 * 3 * 64 * 8 = 3072 elements < 64 * 64
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = layer(x, grid)
    assert saved and max(saved) < tokens * tokens, f"a tensor of {max(saved)} elements is kept for backward"
    out.sum().backward()  # and backward still runs from what was kept

    # The dense form the training path replaces keeps the (B, H, N, N) bias: the check can fail.
    saved.clear()
    q, k, v = (torch.randn(2, 3, tokens, 8, requires_grad=True) for _ in range(3))
    rates = -torch.rand(2, 3, tokens, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        dense_decay_attention(q, k, v, rates, grid)
    assert max(saved) >= 2 * 3 * tokens * tokens


def test_inference_keeps_the_dense_fused_path(monkeypatch):
    calls = []
    monkeypatch.setattr(attention_module, "blockwise_decay_attention", lambda *a, **k: calls.append(a))
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    with torch.no_grad():
        spatial_decay_attention(q, k, v, -torch.rand(1, 2, 12), (3, 4), "full", "sdpa")
    assert calls == []


def test_grid_must_hold_the_tokens():
    q = torch.randn(1, 2, 12, 8)
    with pytest.raises(ValueError, match=r"grid_size \(3, 5\) holds 15 tokens; q has 12"):
        blockwise_decay_attention(q, q, q, -torch.rand(1, 2, 12), (3, 5))
