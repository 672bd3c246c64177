"""What only a GPU can show: the fused FlexAttention path against the dense reference, bf16, compile.

Skipped (visibly) without CUDA; `python benchmarks/gpu_report.py` runs them (`pytest -m cuda`).
"""

import copy
import dataclasses

import pytest
import torch

from sdt_gen import SDTTransformer2DModel
from sdt_gen.diffusion import DiffusionLoss
from sdt_gen.layers import DecayConfig, SpatialDecayAttention

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
]

GRID = (6, 5)  # non-square on purpose: rows and columns must not be swapped anywhere


def tiny_model(backend: str, mode: str = "cag", layout: str = "full") -> SDTTransformer2DModel:
    torch.manual_seed(0)
    model = SDTTransformer2DModel(
        sample_size=[12, 10], patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10,
        class_dropout_prob=0.0, decay_mode=mode, decay_layout=layout, attention_backend=backend,
    )
    if mode == "cag":  # away from the RMT start, so every gate weight matters
        for name, param in model.named_parameters():
            if "gate.proj.weight" in name:
                torch.nn.init.normal_(param, std=0.2)
    return model.cuda()


def model_inputs(batch: int = 3):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 12, 10, generator=generator).cuda()
    t = torch.tensor([1, 500, 999][:batch]).cuda()
    y = torch.tensor([0, 3, 10][:batch]).cuda()  # 10: the null class
    return x, t, y


def outputs_and_grads(model, *inputs):
    model.zero_grad(set_to_none=True)
    out = model(*inputs).sample
    out.square().mean().backward()
    return out.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, want: dict, atol: float, rtol: float):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=rtol, msg=f"gradient of {name}")


@pytest.mark.parametrize("mode", ["fixed", "cag"])
@pytest.mark.parametrize("layout", ["full", "decomposed"])
def test_flex_layer_matches_sdpa_forward_and_backward(mode, layout):
    torch.manual_seed(0)
    dense = SpatialDecayAttention(64, 4, DecayConfig(mode=mode, layout=layout), backend="sdpa").cuda()
    fused = copy.deepcopy(dense)
    fused.decay = dataclasses.replace(dense.decay, backend="flex")
    x = torch.randn(2, GRID[0] * GRID[1], 64, device="cuda")
    results = []
    for layer in (dense, fused):
        inputs = x.clone().requires_grad_()
        out = layer(inputs, GRID)
        grads = torch.autograd.grad(out.square().sum(), [inputs, *layer.parameters()])
        results.append((out, *grads))
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("mode", ["fixed", "cag"])
@pytest.mark.parametrize("layout", ["full", "decomposed"])
def test_flex_model_matches_sdpa_forward_and_backward(mode, layout):
    dense, fused = tiny_model("sdpa", mode, layout), tiny_model("flex", mode, layout)
    fused.load_state_dict(dense.state_dict())
    inputs = model_inputs()
    want_out, want_grads = outputs_and_grads(dense, *inputs)
    got_out, got_grads = outputs_and_grads(fused, *inputs)
    torch.testing.assert_close(got_out, want_out, atol=2e-4, rtol=2e-4)
    assert_grads_close(got_grads, want_grads, atol=2e-4, rtol=2e-3)


def test_auto_picks_flex_on_cuda_and_it_runs():
    from sdt_gen.layers import attention

    model = tiny_model("auto")
    outputs_and_grads(model, *model_inputs())
    assert attention.resolve_backend("auto", torch.device("cuda")) == "flex", (
        f"auto fell back to sdpa on this GPU: {attention._flex_failure}"
    )


def test_bf16_autocast_training_step_is_finite_and_close_to_fp32():
    model = tiny_model("flex")
    loss_fn = DiffusionLoss()
    x, t, y = model_inputs()
    noise = torch.randn_like(x)

    def step(autocast: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model, x, t, model_kwargs=dict(class_labels=y), noise=noise)["loss"].mean()
        loss.backward()
        return loss.detach().float(), [p.grad.float().clone() for p in model.parameters() if p.grad is not None]

    loss32, grads32 = step(False)
    loss16, grads16 = step(True)
    assert torch.isfinite(loss16) and all(torch.isfinite(g).all() for g in grads16)
    torch.testing.assert_close(loss16, loss32, rtol=5e-2, atol=1e-3)
    cosine = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads16]),
                                                   torch.cat([g.flatten() for g in grads32]), dim=0)
    assert cosine > 0.98, f"bf16 gradients point elsewhere than fp32 ones (cosine {cosine:.3f})"


def test_compiled_model_with_flex_matches_eager():
    model = tiny_model("flex")
    inputs = model_inputs()
    want_out, want_grads = outputs_and_grads(model, *inputs)
    compiled = torch.compile(model)
    got_out, _ = outputs_and_grads(compiled, *inputs)
    got_grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(got_out, want_out, atol=2e-4, rtol=2e-4)
    assert_grads_close(got_grads, want_grads, atol=2e-4, rtol=2e-3)


def test_gradient_checkpointing_with_flex_gives_the_same_gradients():
    model = tiny_model("flex")
    inputs = model_inputs()
    want_out, want_grads = outputs_and_grads(model, *inputs)
    model.enable_gradient_checkpointing()
    got_out, got_grads = outputs_and_grads(model, *inputs)
    torch.testing.assert_close(got_out, want_out)
    assert_grads_close(got_grads, want_grads, atol=1e-5, rtol=1e-5)
