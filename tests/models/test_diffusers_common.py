"""diffusers' model contract, restated for ``SDTTransformer2DModel``.

diffusers checks its own models with the tester mixins of its test suite (``ModelTesterMixin``, the layerwise
casting, training and torch.compile mixins), which its wheel does not ship. These tests restate, in our own
words, the checks that matter to someone using the model through diffusers' API: save/load (safetensors,
``.bin``, variants, dtypes), ``from_config``, determinism, the output contract, gradient checkpointing, layerwise
casting and ``torch.compile``. The shape mirrors diffusers' DiT tests: a one-file tiny config, batch 4.
"""

import pytest
import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

from sdt_gen import SDTTransformer2DModel, SDTTransformer2DModelOutput

from helpers import perturbed

CONFIG = dict(
    sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10,
    attention_backend="sdpa",
)
BATCH = 4
OUTPUT_SHAPE = (BATCH, 8, 8, 8)  # learned sigma: noise and variance channels

# Unit roundoff of each storage format: rounding every weight to it moves the output by about half that, relatively.
ROUNDOFF = {torch.float8_e4m3fn: 2**-4, torch.float8_e5m2: 2**-3, torch.bfloat16: 2**-8, torch.float16: 2**-11}


def make_model(seed=0, **overrides):
    """A tiny model with every parameter offset, so no zero-initialised path (adaLN-Zero) hides a difference."""
    torch.manual_seed(seed)
    return perturbed(SDTTransformer2DModel(**{**CONFIG, **overrides}), seed=seed).eval()


def inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(BATCH, 4, 8, 8, generator=g).to(dtype),
        timestep=torch.randint(0, 1000, (BATCH,), generator=g),
        class_labels=torch.randint(0, CONFIG["num_classes"] + 1, (BATCH,), generator=g),  # the null class too
    )


def relative_error(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def public(config):
    """A config without diffusers' bookkeeping (``_name_or_path``, ``_use_default_values``, ...)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


# ------------------------------------------------------------------ outputs


@torch.no_grad()
def test_output_shape_and_return_dict():
    model = make_model()
    out = model(**inputs())
    assert isinstance(out, SDTTransformer2DModelOutput) and out.sample.shape == OUTPUT_SHAPE
    as_tuple = model(**inputs(), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(as_tuple[0], out.sample)


@torch.no_grad()
def test_determinism_of_forward_and_construction():
    model = make_model()
    assert torch.equal(model(**inputs()).sample, model(**inputs()).sample)
    twin = make_model()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    assert torch.equal(twin(**inputs()).sample, model(**inputs()).sample)


# ------------------------------------------------------------------ save / load


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("variant", [None, "fp16"])
@torch.no_grad()
def test_save_load_round_trip(tmp_path, safe_serialization, variant):
    model = make_model()
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization, variant=variant)
    weights = SAFETENSORS_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    if variant:
        weights = weights.replace(".", f".{variant}.", 1)
    assert (tmp_path / weights).is_file() and (tmp_path / "config.json").is_file()

    loaded = SDTTransformer2DModel.from_pretrained(tmp_path, variant=variant).eval()
    assert public(loaded.config) == public(model.config)
    assert torch.equal(loaded(**inputs()).sample, model(**inputs()).sample)
    if variant:
        with pytest.raises(OSError, match="no file named"):
            SDTTransformer2DModel.from_pretrained(tmp_path)  # a variant-only folder needs variant=


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("low_cpu_mem_usage", [True, False])
def test_from_pretrained_torch_dtype(tmp_path, dtype, low_cpu_mem_usage):
    """Both loading paths: on the meta device, and building real modules while diffusers disables nn.init."""
    model = make_model().to(dtype)
    model.save_pretrained(tmp_path)
    loaded = SDTTransformer2DModel.from_pretrained(tmp_path, torch_dtype=dtype, low_cpu_mem_usage=low_cpu_mem_usage)
    assert loaded.dtype == dtype
    saved = model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, saved[name]), name


@torch.no_grad()
def test_from_config_round_trip(tmp_path):
    model = make_model(sample_size=(8, 12), decay_layout="decomposed")
    rebuilt = SDTTransformer2DModel.from_config(model.config)
    assert public(rebuilt.config) == public(model.config) and rebuilt.sample_hw == (8, 12)
    model.save_config(tmp_path)
    from_file = SDTTransformer2DModel.from_config(SDTTransformer2DModel.load_config(tmp_path))
    assert public(from_file.config) == public(model.config)
    from_file.load_state_dict(model.state_dict())
    sample = torch.randn(2, 4, 8, 12)
    t, y = torch.tensor([10, 900]), torch.tensor([1, 10])
    assert torch.equal(from_file.eval()(sample, t, y).sample, model(sample, t, y).sample)


# ------------------------------------------------------------------ training


def test_gradient_checkpointing_enable_disable_gives_the_same_gradients():
    model = make_model(class_dropout_prob=0.0).train()  # no label dropout: the three runs see the same labels
    assert not model.is_gradient_checkpointing

    def gradients():
        model.zero_grad()
        out = model(**inputs()).sample
        out.square().mean().backward()
        return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    out, grads = gradients()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    out_ckpt, grads_ckpt = gradients()
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing
    out_again, grads_again = gradients()

    torch.testing.assert_close(out_ckpt, out)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, f"no gradient reached {name}"
        torch.testing.assert_close(grads_ckpt[name], grad, msg=f"checkpointed gradient of {name} differs")
        torch.testing.assert_close(grads_again[name], grad, msg=f"gradient of {name} differs after disabling")


# ------------------------------------------------------------------ layerwise casting


@pytest.mark.parametrize(
    "storage_dtype, compute_dtype",
    [
        (torch.float8_e4m3fn, torch.float32),
        (torch.float8_e5m2, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float8_e4m3fn, torch.bfloat16),
    ],
    ids=["e4m3-fp32", "e5m2-fp32", "bf16-fp32", "fp16-fp32", "e4m3-bf16"],
)
@torch.no_grad()
def test_layerwise_casting_inference_is_close_to_float32(storage_dtype, compute_dtype):
    model = make_model()
    want = model(**inputs()).sample
    model.to(compute_dtype).enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=compute_dtype)
    assert model.dtype == compute_dtype  # what pipelines read to choose the latents' dtype
    assert model.blocks[0].mlp[0].weight.dtype == storage_dtype
    got = model(**inputs(dtype=compute_dtype)).sample
    assert got.dtype == compute_dtype and got.shape == OUTPUT_SHAPE
    tolerance = max(ROUNDOFF[storage_dtype], ROUNDOFF.get(compute_dtype, 0))
    assert 0 < relative_error(got, want) < tolerance


@pytest.mark.parametrize("storage_dtype", [torch.float16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_layerwise_casting_training_step(storage_dtype):
    model = make_model(class_dropout_prob=0.0).train()
    model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    out = model(**inputs()).sample
    torch.nn.functional.mse_loss(out, torch.zeros_like(out)).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------ torch.compile


@torch.no_grad()
def test_torch_compile_fullgraph_matches_eager_and_still_checks_labels():
    torch.compiler.reset()
    model = make_model()
    compiled = torch.compile(model, fullgraph=True)  # a graph break would raise here instead of falling back
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = compiled(**inputs()).sample
        second = compiled(**inputs(seed=1)).sample  # new values, same shapes: no recompilation
    torch.testing.assert_close(first, model(**inputs()).sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, model(**inputs(seed=1)).sample, rtol=1e-5, atol=1e-5)
    bad = {**inputs(), "class_labels": torch.tensor([0, 1, 11, 2])}
    with pytest.raises(RuntimeError, match=r"class label out of range: expected 0\.\.9 or 10"):
        compiled(**bad)
    torch.compiler.reset()


@torch.no_grad()
def test_compile_repeated_blocks():
    torch.compiler.reset()
    model = make_model()
    want = model(**inputs()).sample
    model.compile_repeated_blocks(fullgraph=True)
    torch.testing.assert_close(model(**inputs()).sample, want, rtol=1e-5, atol=1e-5)
    torch.compiler.reset()
