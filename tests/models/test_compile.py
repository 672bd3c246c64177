"""``torch.compile`` of the denoiser's training step: one graph (no breaks, no traced caches), and the same numbers."""

import warnings

import pytest
import torch

from sdt_gen import SDTTransformer2DModel
from sdt_gen.diffusion import make_objective


def tiny_model(mode: str, layout: str = "full", position_embedding: str = "sincos") -> SDTTransformer2DModel:
    torch.manual_seed(0)
    return SDTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10,
        decay_mode=mode, decay_layout=layout, position_embedding=position_embedding, objective="flow",
        learn_sigma=False, attention_backend="sdpa",
    )


def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g)
    return x, torch.rand(4, generator=g) * 1000, torch.randint(0, 10, (4,), generator=g), torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("layout", ["full", "decomposed"])
@pytest.mark.parametrize("mode", ["none", "fixed", "cag"])
def test_the_training_forward_is_one_graph_without_traced_caches(mode, layout):
    model = tiny_model(mode, layout, "sincos+rope")
    x, t, y, _ = batch()
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explained = torch._dynamo.explain(model)(x.requires_grad_(), t, y)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    assert not [w for w in caught if "lru_cache" in str(w.message)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "fixed", "cag"])
def test_a_fullgraph_compiled_training_step_equals_eager(mode):
    """Compiled with Inductor (a C++ compiler on CPU, about a minute per mode): loss and every gradient within 1e-5."""
    model = tiny_model(mode)
    loss_fn = make_objective("flow", learn_sigma=False)
    x, t, y, noise = batch()

    def step(fn):
        model.zero_grad()
        loss = loss_fn(fn, x, t, {"class_labels": y}, noise)["loss"].mean()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    torch._dynamo.reset()
    compiled_loss, compiled_grads = step(torch.compile(model, fullgraph=True))
    eager_loss, eager_grads = step(model)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_compile_compiles_each_repeated_block_and_the_blocks_draw_no_random_numbers():
    """``train_dit.py --compile`` compiles the blocks only; they draw nothing from torch's generator in training, so
    compiled code cannot draw other numbers than eager (the label dropout stays outside the blocks, eager)."""
    model = tiny_model("cag", position_embedding="sincos+rope").train()
    drawn = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: drawn.append(torch.get_rng_state()))
        block.register_forward_hook(lambda module, args, out: drawn.append(torch.get_rng_state()))
    x, t, y, _ = batch()
    model(x, t, y)
    assert len(drawn) == 2 * len(model.blocks)
    assert all(torch.equal(before, after) for before, after in zip(drawn[::2], drawn[1::2]))

    model.compile_repeated_blocks(fullgraph=True)
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    assert model._compiled_call_impl is None  # the embeddings, label dropout and output stay eager
