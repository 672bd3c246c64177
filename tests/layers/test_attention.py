import warnings
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from sdt_gen.layers import (
    DecayConfig,
    SpatialDecayAttention,
    attention_weights,
    decay_bias,
    fixed_rates,
    manhattan_distance,
    recording_attentions,
    rmt_gammas,
    spatial_decay_attention,
)

GRID = (3, 4)


def qkv_and_rates(batch=2, heads=3, dim=8, requires_grad=False):
    torch.manual_seed(0)
    n = GRID[0] * GRID[1]
    q, k, v = (torch.randn(batch, heads, n, dim, requires_grad=requires_grad) for _ in range(3))
    rates = (-torch.rand(batch, heads, n)).requires_grad_(requires_grad)
    return q, k, v, rates


def reference_attention(q, k, v, bias):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias
    return scores.softmax(-1) @ v


def test_full_sdpa_matches_explicit_softmax():
    q, k, v, rates = qkv_and_rates()
    out = spatial_decay_attention(q, k, v, rates, GRID, "full", "sdpa")
    expected = reference_attention(q, k, v, decay_bias(rates, manhattan_distance(*GRID)))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_decomposed_matches_row_then_column_loop():
    q, k, v, rates = qkv_and_rates()
    h, w = GRID
    out = spatial_decay_attention(q, k, v, rates, GRID, "decomposed", "sdpa")

    def at(r, c):
        return r * w + c

    rows_out = torch.zeros_like(v)
    for r in range(h):
        idx = [at(r, c) for c in range(w)]
        a = rates[:, :, idx]
        bias = (a[..., :, None] + a[..., None, :]) * torch.tensor(
            [[abs(i - j) for j in range(w)] for i in range(w)], dtype=torch.float32
        )
        rows_out[:, :, idx] = reference_attention(q[:, :, idx], k[:, :, idx], v[:, :, idx], bias)
    expected = torch.zeros_like(v)
    for c in range(w):
        idx = [at(r, c) for r in range(h)]
        a = rates[:, :, idx]
        bias = (a[..., :, None] + a[..., None, :]) * torch.tensor(
            [[abs(i - j) for j in range(h)] for i in range(h)], dtype=torch.float32
        )
        expected[:, :, idx] = reference_attention(q[:, :, idx], k[:, :, idx], rows_out[:, :, idx], bias)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["full", "decomposed"])
@pytest.mark.parametrize("kind", ["cag", "fixed"])
def test_flex_forward_matches_sdpa_on_cpu(layout, kind):
    q, k, v, rates = qkv_and_rates()
    if kind == "fixed":
        rates = fixed_rates(rmt_gammas(3))
    dense = spatial_decay_attention(q, k, v, rates, GRID, layout, "sdpa")
    fused = spatial_decay_attention(q, k, v, rates, GRID, layout, "flex")
    torch.testing.assert_close(fused, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available: flex backward is CUDA-only")
@pytest.mark.parametrize("layout", ["full", "decomposed"])
def test_flex_forward_and_backward_match_sdpa_on_cuda(layout):
    q, k, v, rates = (t.detach().cuda().requires_grad_() for t in qkv_and_rates())
    grads = []
    for backend in ("sdpa", "flex"):
        out = spatial_decay_attention(q, k, v, rates, GRID, layout, backend)
        grads.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v, rates))))
    for dense, fused in zip(*grads):
        torch.testing.assert_close(fused, dense, atol=2e-4, rtol=2e-4)


def test_flex_backward_on_cpu_says_to_use_sdpa():
    q, k, v, rates = qkv_and_rates(requires_grad=True)
    out = spatial_decay_attention(q, k, v, rates, GRID, "full", "flex")
    with pytest.raises(NotImplementedError, match="attention_backend='sdpa'"):
        out.sum().backward()


def test_mode_none_calls_plain_sdpa_without_mask():
    q, k, v, _ = qkv_and_rates()
    with mock.patch("sdt_gen.layers.attention.F.scaled_dot_product_attention", wraps=F.scaled_dot_product_attention) as spy:
        out = spatial_decay_attention(q, k, v, None, GRID, "full", "auto")
    spy.assert_called_once()
    assert "attn_mask" not in spy.call_args.kwargs
    torch.testing.assert_close(out, reference_attention(q, k, v, 0.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["none", "fixed", "cag"])
@pytest.mark.parametrize("layout", ["full", "decomposed"])
def test_module_shapes_and_gradients(mode, layout):
    attn = SpatialDecayAttention(16, 2, DecayConfig(mode=mode, layout=layout), lepe_kernel_size=3, backend="sdpa")
    x = torch.randn(2, 12, 16, requires_grad=True)
    out = attn(x, GRID)
    assert out.shape == (2, 12, 16)
    out.square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(decay_mode="learned"), "unknown decay_mode 'learned'; expected one of 'none', 'fixed', 'cag'"),
        (dict(decay_layout="axial"), "unknown decay_layout 'axial'; expected one of 'full', 'decomposed'"),
    ],
)
def test_unknown_choices_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpatialDecayAttention(16, 2, DecayConfig.from_config(kwargs))


def test_an_unknown_backend_is_named():
    message = "unknown attention_backend 'xformers'; expected one of 'sdpa', 'flex', 'eager', 'auto'"
    with pytest.raises(ValueError, match=message):
        SpatialDecayAttention(16, 2, backend="xformers")
    with pytest.raises(ValueError, match=message):
        SpatialDecayAttention(16, 2).set_backend("xformers")


def test_mode_none_with_decomposed_layout_is_unmasked_axial_attention():
    q, k, v, _ = qkv_and_rates()
    zero_rates = torch.zeros(1, 3, 1)
    with mock.patch("sdt_gen.layers.attention.F.scaled_dot_product_attention", wraps=F.scaled_dot_product_attention) as spy:
        out = spatial_decay_attention(q, k, v, None, GRID, "decomposed", "sdpa")
    assert spy.call_count == 2 and all("attn_mask" not in call.kwargs for call in spy.call_args_list)
    torch.testing.assert_close(out, spatial_decay_attention(q, k, v, zero_rates, GRID, "decomposed", "sdpa"))


def test_auto_falls_back_to_sdpa_once_when_flex_fails(monkeypatch):
    from sdt_gen.layers import attention

    q, k, v, rates = qkv_and_rates()
    # Pretend this CPU is a device where auto picks flex, and make flex fail as a broken compiler would.
    monkeypatch.setattr(attention, "FLEX_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(attention, "_flex_failure", None)
    calls = []

    def broken_flex(*args):
        calls.append(args)
        raise RuntimeError("triton: no compiler found")

    monkeypatch.setattr(attention, "_flex_attention", broken_flex)
    dense = spatial_decay_attention(q, k, v, rates, GRID, "full", "sdpa")
    with pytest.warns(RuntimeWarning, match="FlexAttention failed on cpu .*no compiler found.*using 'sdpa'"):
        out = spatial_decay_attention(q, k, v, rates, GRID, "full", "auto")
    torch.testing.assert_close(out, dense)
    assert len(calls) == 1

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls go straight to sdpa
        torch.testing.assert_close(spatial_decay_attention(q, k, v, rates, GRID, "decomposed", "auto"),
                                   spatial_decay_attention(q, k, v, rates, GRID, "decomposed", "sdpa"))
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="no compiler found"):  # asked for by name: the error is raised
        spatial_decay_attention(q, k, v, rates, GRID, "full", "flex")


def test_decay_config_reads_and_writes_the_flat_config_keys():
    keys = dict(decay_mode="fixed", decay_layout="decomposed", decay_init="zero", initial_value=3.0, heads_range=4.0)
    decay = DecayConfig.from_config(keys)
    assert decay == DecayConfig("fixed", "decomposed", "zero", 3.0, 4.0)
    assert decay.config_keys() == keys
    assert DecayConfig.from_config({"decay_mode": "none"}) == DecayConfig(mode="none")  # the rest: defaults
    # a model config (attributes) reads the same way: the denoiser's and the classifiers'
    from sdt_gen import SDTConfig, SDTTransformer2DModel

    model = SDTTransformer2DModel(sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2,
                                  num_classes=3, **keys)
    assert DecayConfig.from_config(model.config) == decay == model.blocks[0].attn.decay
    assert SDTConfig.from_preset("SDT-ViT-Ti/16", **keys).decay == decay


# ----------------------------------------------------------------------------- explicit probabilities


@pytest.mark.parametrize("layout", ["full", "decomposed"])
@pytest.mark.parametrize("with_rates", [True, False])
def test_eager_backend_is_the_explicit_probabilities_times_v(layout, with_rates):
    q, k, v, rates = qkv_and_rates()
    rates = rates if with_rates else None
    weights = attention_weights(q, k, rates, GRID, layout)
    n = GRID[0] * GRID[1]
    assert weights.shape == (2, 3, n, n)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, n))
    torch.testing.assert_close(spatial_decay_attention(q, k, v, rates, GRID, layout, "eager"), weights @ v)
    torch.testing.assert_close(spatial_decay_attention(q, k, v, rates, GRID, layout, "sdpa"), weights @ v,
                               atol=1e-5, rtol=1e-5)


def test_decomposed_probabilities_are_the_column_map_after_the_row_map():
    q, k, _, rates = qkv_and_rates(batch=1)
    weights = attention_weights(q, k, rates, GRID, "decomposed")[0, 0]  # (N, N)
    height, width = GRID
    rows = attention_weights(*(t[0, 0].reshape(1, 1, height, width, -1)[0, 0, 1][None, None] for t in (q, k)),
                             rates[0, 0].reshape(height, width)[1][None, None], (1, width))[0, 0]  # row 1
    cols = attention_weights(*(t[0, 0].reshape(height, width, -1)[:, 2][None, None] for t in (q, k)),
                             rates[0, 0].reshape(height, width)[:, 2][None, None], (height, 1))[0, 0]  # column 2
    # query (0, 2) reaches key (1, 3) only through (1, 2): column 2 from row 0 to row 1, then row 1 from col 2 to 3
    torch.testing.assert_close(weights[0 * width + 2, 1 * width + 3], cols[0, 1] * rows[2, 3])
    # a key in another row and column than a query's neighbours in both passes is reached too (the maps compose)
    assert (weights > 0).all()


@pytest.mark.parametrize("layout", ["full", "decomposed"])
def test_fixed_decay_on_equal_tokens_falls_off_with_grid_distance_as_the_bias_says(layout):
    attn = SpatialDecayAttention(16, 2, DecayConfig(mode="fixed", layout=layout))
    x = torch.randn(1, 1, 16).expand(1, 12, 16)  # every token equal: equal scores, the decay decides alone
    with recording_attentions(attn) as recorded:
        attn(x, GRID)
    (weights,) = recorded
    log_gamma = rmt_gammas(2).log().view(1, 2, 1, 1)
    distance = manhattan_distance(*GRID)
    if layout == "full":
        expected = (log_gamma * distance).softmax(-1)  # bias (a_n + a_m) d with a = log(gamma) / 2
    else:  # a product of one row map and one column map, each a softmax of gamma^|offset|
        rows, cols = (torch.arange(n).float() for n in GRID)
        row_map = (log_gamma * (cols[:, None] - cols).abs()).softmax(-1)  # (1, H, w, w)
        col_map = (log_gamma * (rows[:, None] - rows).abs()).softmax(-1)  # (1, H, h, h)
        expected = torch.einsum("bnrs,bnct->bnrcst", col_map, row_map).reshape(1, 2, 12, 12)
    torch.testing.assert_close(weights, expected)
    centre = 1 * GRID[1] + 1
    by_distance = [weights[0, 0, centre, distance[centre] == d].unique() for d in range(int(distance[centre].max()) + 1)]
    if layout == "full":  # one value per distance, falling
        assert all(len(values) == 1 for values in by_distance)
        assert all(a > b for a, b in zip(by_distance, by_distance[1:]))


def test_a_module_decides_auto_once_per_device_and_keeps_it(monkeypatch):
    from sdt_gen.layers import attention

    calls = []
    resolve = attention.resolve_backend
    monkeypatch.setattr(attention, "resolve_backend", lambda backend, device: calls.append(backend) or resolve(backend, device))
    attn = SpatialDecayAttention(16, 2)
    x = torch.randn(2, 12, 16)
    for _ in range(3):
        attn(x, GRID)
    assert calls == ["auto"] and attn.backends_in_use == {"cpu": "sdpa"}
    attn.set_backend("eager")
    attn(x, GRID)
    assert calls == ["auto", "eager"] and attn.backends_in_use == {"cpu": "eager"}
