"""2D rotary positions: relative by construction, norm-preserving, equal to the formula, one result on every backend."""

import math

import pytest
import torch

from sdt_gen.layers import DecayConfig, SpatialDecayAttention, apply_rope, rope_rotation


def rotated_by_formula(x: torch.Tensor, rows: list[int], cols: list[int], base: float) -> torch.Tensor:
    """The convention written out: channel pair (2i, 2i+1) of the first half turns by row * theta_i, of the second
    half by col * theta_i, theta_i = base^(-2i / (D/2)); as complex numbers, one multiplication per pair."""
    batch, heads, tokens, dim = x.shape
    half = dim // 2
    out = torch.empty_like(x)
    for n in range(tokens):
        for axis, position in ((0, rows[n]), (1, cols[n])):
            for i in range(half // 2):
                angle = position * base ** (-2 * i / half)
                channel = axis * half + 2 * i
                pair = torch.complex(x[..., n, channel].double(), x[..., n, channel + 1].double())
                turned = pair * complex(math.cos(angle), math.sin(angle))
                out[..., n, channel], out[..., n, channel + 1] = turned.real.float(), turned.imag.float()
    return out


def test_rotation_is_the_formula():
    x = torch.randn(1, 2, 12, 16)
    rows, cols = [n // 4 for n in range(12)], [n % 4 for n in range(12)]
    torch.testing.assert_close(apply_rope(x, rope_rotation(16, 3, 4, base=100.0)), rotated_by_formula(x, rows, cols, 100.0))


def test_rotation_preserves_norms():
    x = torch.randn(2, 3, 30, 24)
    torch.testing.assert_close(apply_rope(x, rope_rotation(24, 5, 6)).norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("base", [10000.0, 100.0])
def test_the_rotated_dot_product_depends_on_the_offset_only(base):
    """q_m . k_n with q, k the same vectors at every token: equal for every pair (m, n) with one (row, col) offset."""
    height, width, dim = 6, 7, 32
    angles = rope_rotation(dim, height, width, base)
    q, k = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    tokens = height * width
    rq = apply_rope(q.expand(tokens, dim), angles.double())  # (N, D): the same query placed at every token
    rk = apply_rope(k.expand(tokens, dim), angles.double())
    scores = rq @ rk.T  # (N, N)

    def at(row, col):
        return row * width + col

    for d_row, d_col in [(0, 0), (1, 0), (0, 2), (2, -3), (-4, 1)]:
        pairs = [(at(r, c), at(r + d_row, c + d_col)) for r in range(height) for c in range(width)
                 if 0 <= r + d_row < height and 0 <= c + d_col < width]
        values = torch.stack([scores[m, n] for m, n in pairs])
        assert len(pairs) >= 4
        torch.testing.assert_close(values, values[:1].expand_as(values), rtol=0, atol=1e-6)
    # ... and differs between offsets: the position is seen.
    assert not torch.isclose(scores[at(0, 0), at(0, 1)], scores[at(0, 0), at(1, 0)])


def test_rope_needs_a_head_width_divisible_by_4():
    with pytest.raises(ValueError, match="head width divisible by 4, got 6"):
        rope_rotation(6, 4, 4)
    with pytest.raises(ValueError, match="rope_base must be > 1, got 1.0"):
        rope_rotation(8, 4, 4, base=1.0)


def test_attention_with_rope_and_no_decay_is_the_plain_formula():
    torch.manual_seed(0)
    dim, heads, grid = 32, 2, (3, 5)
    attn = SpatialDecayAttention(dim, heads, DecayConfig(mode="none"), backend="sdpa").eval()
    x = torch.randn(2, 15, dim)
    angles = rope_rotation(dim // heads, *grid, base=50.0)
    rows, cols = [n // 5 for n in range(15)], [n % 5 for n in range(15)]

    q, k, v = attn.qkv(x).reshape(2, 15, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = rotated_by_formula(q, rows, cols, 50.0), rotated_by_formula(k, rows, cols, 50.0)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    expected = attn.proj((probs @ v).transpose(1, 2).reshape(2, 15, dim))
    torch.testing.assert_close(attn(x, grid, angles), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["full", "decomposed"])
@pytest.mark.parametrize("mode", ["none", "fixed", "cag"])
def test_flex_and_sdpa_agree_with_rope(mode, layout):
    torch.manual_seed(0)
    attn = SpatialDecayAttention(32, 2, DecayConfig(mode=mode, layout=layout), backend="sdpa").eval()
    if attn.gate is not None:
        torch.nn.init.normal_(attn.gate.proj.weight, std=0.5)
    flex = SpatialDecayAttention(32, 2, DecayConfig(mode=mode, layout=layout), backend="flex").eval()
    flex.load_state_dict(attn.state_dict())
    x, angles = torch.randn(2, 20, 32), rope_rotation(16, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(flex(x, (4, 5), angles), attn(x, (4, 5), angles), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(attn(x, (4, 5), angles), attn(x, (4, 5)), atol=1e-3)  # rope changes the result


def test_rope_composes_with_blockwise_training_attention(monkeypatch):
    """The sdpa backend trains blockwise (O(N) memory); with rotated q and k its gradients equal the dense bias's."""
    from sdt_gen.layers import attention, decay_bias, manhattan_distance

    torch.manual_seed(0)
    attn = SpatialDecayAttention(32, 2, DecayConfig(mode="cag"), backend="sdpa")
    torch.nn.init.normal_(attn.gate.proj.weight, std=0.5)
    x, angles = torch.randn(2, 20, 32, requires_grad=True), rope_rotation(16, 4, 5)

    def gradients():
        x.grad = None
        attn.zero_grad()
        attn(x, (4, 5), angles).square().sum().backward()
        return [x.grad] + [p.grad for p in attn.parameters()]

    blockwise = gradients()

    def dense(q, k, v, rates, grid_size):
        bias = decay_bias(rates, manhattan_distance(*grid_size, q.device))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    monkeypatch.setattr(attention, "blockwise_decay_attention", dense)
    for got, want in zip(blockwise, gradients()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
