import json
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel
from diffusers.hooks import apply_layerwise_casting
from safetensors.torch import load_file

from sdt_gen import SDT_PRESETS, SDTTransformer2DModel
from sdt_gen.layers import fixed_rates, manhattan_distance, rmt_gammas

from helpers import assert_as_saved, assert_not_as_saved, nudged, perturbed


def tiny_config(**overrides):
    config = dict(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
        num_classes=10, attention_backend="sdpa",
    )
    return {**config, **overrides}


def dummy_inputs(model, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = model.sample_hw
    x = torch.randn(batch, model.config.in_channels, h, w, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, model.config.num_classes + 1, (batch,), generator=g)
    return x, t, y


@pytest.mark.parametrize("sample_size, learn_sigma", [(8, True), ((8, 12), True), ((12, 4), False)])
@pytest.mark.parametrize("mode", ["none", "fixed", "cag"])
def test_output_shape_square_and_non_square(sample_size, learn_sigma, mode):
    model = SDTTransformer2DModel(**tiny_config(sample_size=sample_size, learn_sigma=learn_sigma, decay_mode=mode))
    x, t, y = dummy_inputs(model)
    out = model(x, t, y).sample
    channels = 8 if learn_sigma else 4
    assert out.shape == (3, channels, *x.shape[-2:])
    assert model(x, t, y, return_dict=False)[0].shape == out.shape


@pytest.mark.parametrize("layout", ["full", "decomposed"])
def test_deterministic_in_eval(layout):
    model = perturbed(SDTTransformer2DModel(**tiny_config(decay_layout=layout))).eval()
    x, t, y = dummy_inputs(model)
    assert torch.equal(model(x, t, y).sample, model(x, t, y).sample)


def test_scalar_timestep_broadcasts():
    model = perturbed(SDTTransformer2DModel(**tiny_config())).eval()
    x, _, y = dummy_inputs(model)
    torch.testing.assert_close(model(x, 500, y).sample, model(x, torch.full((3,), 500), y).sample)


def test_save_load_round_trip(tmp_path):
    model = perturbed(SDTTransformer2DModel(**tiny_config(sample_size=(8, 12), decay_layout="decomposed"))).eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = SDTTransformer2DModel.from_pretrained(tmp_path / "ckpt").eval()
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    x, t, y = dummy_inputs(model)
    assert torch.equal(model(x, t, y).sample, loaded(x, t, y).sample)


def test_gradient_checkpointing_same_outputs_and_grads():
    torch.manual_seed(0)
    model = perturbed(SDTTransformer2DModel(**tiny_config(class_dropout_prob=0.0)))
    x, t, y = dummy_inputs(model)
    out = model(x, t, y).sample
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    out_ckpt = model(x, t, y).sample
    out_ckpt.square().mean().backward()
    torch.testing.assert_close(out_ckpt, out)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], msg=f"gradient of {name} differs")


def test_every_parameter_gets_a_gradient_including_gate_and_alpha():
    model = perturbed(SDTTransformer2DModel(**tiny_config(decay_mode="cag", class_dropout_prob=0.0)))
    x, t, y = dummy_inputs(model)
    y[0] = model.config.num_classes  # the null-class row must be trained too
    model(x, t, y).sample.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    gate = model.blocks[0].attn.gate
    assert gate.proj.weight.grad.abs().sum() > 0 and gate.proj.bias.grad.abs().sum() > 0
    assert gate.alpha.grad.abs().sum() > 0


def test_fresh_model_is_identity_of_zero_output_and_gates_start_as_rmt():
    model = SDTTransformer2DModel(**tiny_config())
    x, t, y = dummy_inputs(model)
    assert torch.count_nonzero(model(x, t, y).sample) == 0  # adaLN-Zero: zero output layer
    gate = model.blocks[1].attn.gate
    assert torch.count_nonzero(gate.proj.weight) == 0
    torch.testing.assert_close(torch.sigmoid(gate.proj.bias), model.blocks[1].attn.gammas)


def test_label_dropout_uses_the_null_class_of_the_config():
    model = SDTTransformer2DModel(**tiny_config(num_classes=7, class_dropout_prob=1.0)).train()
    labels = torch.tensor([0, 3, 6])
    null = model.y_embedder.embedding_table.weight[7]
    dropped = model.y_embedder(labels)
    assert model.y_embedder.embedding_table.num_embeddings == 8
    for row in dropped:
        torch.testing.assert_close(row, null)


# ------------------------------------------------------------------ layerwise casting

# Unit roundoff of each storage format: rounding every weight to it moves the output by about half that, relatively.
ROUNDOFF = {torch.float8_e4m3fn: 2**-4, torch.float8_e5m2: 2**-3, torch.bfloat16: 2**-8, torch.float16: 2**-11}


def relative_error(got, want):
    return ((got.float() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("storage_dtype", [torch.float8_e4m3fn, torch.bfloat16])
def test_timestep_features_take_the_compute_dtype_not_the_storage_dtype(storage_dtype):
    """With every layer cast, the timestep MLP's weights rest in the storage dtype; its input must not follow them."""
    model = perturbed(SDTTransformer2DModel(**tiny_config())).eval()
    x, t, y = dummy_inputs(model)
    with torch.no_grad():
        want = model(x, t, y).sample
        apply_layerwise_casting(model, storage_dtype, torch.float32, skip_modules_pattern=())
        assert model.t_embedder.linear_1.weight.dtype == storage_dtype
        got = model(x, t, y).sample
    assert got.dtype == torch.float32
    assert 0 < relative_error(got, want) < ROUNDOFF[storage_dtype]


def test_layerwise_casting_stores_what_dit_stores_at_full_precision():
    model = SDTTransformer2DModel(**tiny_config(decay_mode="cag"))
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    kept = ("x_embedder.", "t_embedder.", "y_embedder.", ".adaLN_modulation.", ".attn.gate.")
    for name, param in model.named_parameters():
        expected = torch.float32 if any(k in name for k in kept) else torch.float8_e4m3fn
        assert param.dtype == expected, name
    assert model.blocks[0].attn.qkv.weight.dtype == model.final_layer.linear.weight.dtype == torch.float8_e4m3fn


def dit_pair(seed=0, identical_embedders=True):
    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=3,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10,
    ).eval()
    perturbed(dit)
    if identical_embedders:
        state = dit.state_dict()
        for key, value in state.items():
            if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    return dit


@pytest.mark.parametrize("overrides", [dict(decay_mode="none"), dict(decay_mode="cag", decay_init="zero"), dict(decay_mode="cag")])
def test_from_dit_reproduces_dit_output(overrides):
    dit = dit_pair()
    sdt = SDTTransformer2DModel.from_dit(dit, attention_backend="sdpa", **overrides).eval()
    assert sdt.config.num_classes == 10 and sdt.config.learn_sigma
    x, t, _ = dummy_inputs(sdt)
    y = torch.tensor([0, 9, 10])
    with torch.no_grad():
        expected = dit(x, timestep=t, class_labels=y).sample
        got = sdt(x, t, y).sample
    assert (got - expected).abs().max() <= 1e-5


def test_from_dit_fixed_decay_changes_the_output():
    dit = dit_pair()
    sdt = SDTTransformer2DModel.from_dit(dit, decay_mode="fixed", attention_backend="sdpa").eval()
    x, t, y = dummy_inputs(sdt)
    with torch.no_grad():
        assert (sdt(x, t, y).sample - dit(x, timestep=t, class_labels=y).sample).abs().max() > 1e-3


def test_from_dit_rejects_differing_embedder_copies():
    dit = dit_pair(identical_embedders=False)
    with pytest.raises(ValueError, match="block 1 holds a timestep/label embedder"):
        SDTTransformer2DModel.from_dit(dit)


def dit_param_count(hidden_size, depth, num_heads, patch_size, in_channels=4, num_classes=1000):
    """Parameters of the original DiT of this shape: diffusers' DiT minus its per-block embedder copies."""
    with torch.device("meta"):
        dit = DiTTransformer2DModel(
            num_attention_heads=num_heads, attention_head_dim=hidden_size // num_heads, in_channels=in_channels,
            out_channels=2 * in_channels, num_layers=depth, sample_size=32, patch_size=patch_size,
            num_embeds_ada_norm=num_classes,
        )
    total = sum(p.numel() for p in dit.parameters())
    per_block_embedder = sum(p.numel() for p in dit.transformer_blocks[0].norm1.emb.parameters())
    return total - (depth - 1) * per_block_embedder


@pytest.mark.parametrize("name", sorted(SDT_PRESETS))
def test_presets_mirror_dit_parameter_counts(name):
    with torch.device("meta"):
        model = SDTTransformer2DModel.from_preset(name)
    cfg = model.config
    gate_params = cfg.depth * (cfg.hidden_size * cfg.num_heads + 2 * cfg.num_heads)
    expected = dit_param_count(cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.patch_size)
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - gate_params - expected) <= 0.01 * expected


def test_known_paper_sizes():
    with torch.device("meta"):
        xl = SDTTransformer2DModel.from_preset("SDT-XL/2", decay_mode="none")
        s = SDTTransformer2DModel.from_preset("SDT-S/2", decay_mode="none")
    assert sum(p.numel() for p in xl.parameters()) == pytest.approx(675e6, rel=0.01)
    assert sum(p.numel() for p in s.parameters()) == pytest.approx(33e6, rel=0.02)


def test_from_preset_overrides():
    model = SDTTransformer2DModel.from_preset("SDT-S/2", decay_mode="fixed", num_classes=10, in_channels=3, sample_size=16, depth=1)
    assert model.config.hidden_size == 384 and model.config.decay_mode == "fixed"
    assert model.out_channels == 6 and model.grid_size == (8, 8)


def test_decay_maps_shapes_and_values():
    model = perturbed(SDTTransformer2DModel(**tiny_config(sample_size=(8, 12)))).eval()
    x, t, y = dummy_inputs(model, batch=2)
    maps = model.decay_maps(x, t, y, query=(1, 2))
    assert maps.shape == (2, 2, 2, 4, 6)
    assert torch.all(maps[:, :, :, 1, 2] == 1) and (maps <= 1).all() and (maps > 0).all()
    none_model = SDTTransformer2DModel(**tiny_config(decay_mode="none"))
    assert torch.all(none_model.decay_maps(x[:, :, :8, :8], t, y, query=0) == 1)


# ------------------------------------------------------------------ bad input

def test_class_label_out_of_range():
    model = SDTTransformer2DModel(**tiny_config())
    x, t, _ = dummy_inputs(model)
    with pytest.raises(ValueError, match=r"class label 11 is out of range: expected 0\.\.9 or 10"):
        model(x, t, torch.tensor([0, 11, 2]))
    with pytest.raises(ValueError, match="class label -1"):
        model(x, t, torch.tensor([0, -1, 2]))


def test_spatial_size_mismatch_and_indivisible_sample_size():
    model = SDTTransformer2DModel(**tiny_config())
    with pytest.raises(ValueError, match=r"spatial size \(16, 16\) does not match the model's sample_size \(8, 8\)"):
        model(torch.randn(1, 4, 16, 16), 1, torch.tensor([0]))
    with pytest.raises(ValueError, match="sample_size 9x9 is not divisible by patch_size 2"):
        SDTTransformer2DModel(**tiny_config(sample_size=9))


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown preset 'SDT-M/2'; expected one of SDT-Ti/2, .*SDT-XL/8"):
        SDTTransformer2DModel.from_preset("SDT-M/2")


@pytest.mark.parametrize("key, value", [("decay_mode", "rope"), ("decay_layout", "axial"), ("attention_backend", "xla"), ("decay_init", "ones")])
def test_unknown_decay_settings_list_choices(key, value):
    with pytest.raises(ValueError, match=f"unknown {key} '{value}'; expected one of"):
        SDTTransformer2DModel(**tiny_config(**{key: value}))


def test_flex_backward_on_cpu_is_a_clear_error():
    model = perturbed(SDTTransformer2DModel(**tiny_config(attention_backend="flex")))
    x, t, y = dummy_inputs(model)
    with pytest.raises(NotImplementedError, match="use attention_backend='sdpa'"):
        model(x, t, y).sample.sum().backward()


def test_decay_modes_start_from_the_same_shared_weights_and_leave_the_same_random_stream():
    models, next_draws = {}, {}
    for mode in ("none", "fixed", "cag"):
        torch.manual_seed(7)
        models[mode] = SDTTransformer2DModel.from_preset("SDT-Ti/4", decay_mode=mode, sample_size=16)
        next_draws[mode] = torch.rand(3)
    shared = models["none"].state_dict()
    for mode in ("fixed", "cag"):
        state = models[mode].state_dict()
        assert all(torch.equal(state[key], value) for key, value in shared.items()), mode
        assert torch.equal(next_draws[mode], next_draws["none"]), "training noise after building must not depend on the mode"
    assert set(models["cag"].state_dict()) - set(shared) == {
        f"blocks.{i}.attn.gate.{p}" for i in range(4) for p in ("alpha", "proj.weight", "proj.bias")
    }
    torch.manual_seed(8)
    other = SDTTransformer2DModel.from_preset("SDT-Ti/4", decay_mode="none", sample_size=16)
    assert not torch.equal(other.blocks[0].attn.qkv.weight, models["none"].blocks[0].attn.qkv.weight)


def test_decay_rates_are_what_decay_maps_show():
    torch.manual_seed(0)
    model = perturbed(SDTTransformer2DModel.from_preset("SDT-Ti/4", sample_size=16, num_classes=10)).eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), torch.tensor([1, 10])
    rates = model.decay_rates(x, t, y)
    assert rates.shape == (4, 2, 4, 16) and (rates <= 0).all()
    assert not torch.allclose(rates[:, 0], rates[:, 1])  # content- and timestep-dependent
    maps = model.decay_maps(x, t, y, query=(1, 2))
    expected = torch.exp((rates[..., 6:7] + rates) * manhattan_distance(4, 4)[6])  # (depth, B, H, N)
    assert torch.allclose(maps, expected.reshape(4, 2, 4, 4, 4))
    fixed = SDTTransformer2DModel.from_preset("SDT-Ti/4", sample_size=16, decay_mode="fixed").decay_rates(x, t, y)
    assert torch.allclose(fixed, fixed_rates(rmt_gammas(4)).expand(2, 4, 16)[None].expand(4, -1, -1, -1))
    assert (SDTTransformer2DModel.from_preset("SDT-Ti/4", sample_size=16, decay_mode="none").decay_rates(x, t, y) == 0).all()


def test_a_config_saved_before_the_objective_key_loads_as_ddpm(tmp_path):
    import json

    model = SDTTransformer2DModel(sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2,
                                  num_classes=3)
    model.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["objective"]  # as written by the code before flow matching
    config_path.write_text(json.dumps(config))
    loaded = SDTTransformer2DModel.from_pretrained(tmp_path / "old")
    assert loaded.config.objective == "ddpm" and loaded.config.learn_sigma
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_a_sincos_model_saved_before_position_embeddings_computes_as_then():
    """``sdt_sincos_v0``: a cag model and one input/output pair, written by the code before ``position_embedding``."""
    folder = FIXTURES / "sdt_sincos_v0"
    assert "position_embedding" not in json.loads((folder / "config.json").read_text())
    model = SDTTransformer2DModel.from_pretrained(folder).eval()
    assert model.config.position_embedding == "sincos" and model.rope is None
    io = load_file(folder / "io.safetensors")
    with torch.no_grad():
        # One forward pass, written on another CPU: within ONE_PASS of the output's scale, not bitwise.
        assert_as_saved(model(io["sample"], io["timestep"], io["class_labels"]).sample, io["output"])
        changed = nudged(model, "x_embedder.proj.weight")(io["sample"], io["timestep"], io["class_labels"]).sample
        assert_not_as_saved(changed, io["output"])


@pytest.mark.parametrize("layout", ["full", "decomposed"])
@pytest.mark.parametrize("mode", ["none", "fixed", "cag"])
@pytest.mark.parametrize("position", ["rope", "sincos+rope"])
def test_rope_models_run_save_and_load_in_every_decay_setting(tmp_path, position, mode, layout):
    model = perturbed(SDTTransformer2DModel(**tiny_config(
        sample_size=(8, 12), position_embedding=position, decay_mode=mode, decay_layout=layout, rope_base=100.0,
    ))).eval()
    assert (model.pos_embed is None) == (position == "rope") and model.rope.shape == (2, 4 * 6, 8)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = SDTTransformer2DModel.from_pretrained(tmp_path / "ckpt").eval()
    assert (loaded.config.position_embedding, loaded.config.rope_base) == (position, 100.0)
    x, t, y = dummy_inputs(model)
    with torch.no_grad():
        out = model(x, t, y).sample
        assert torch.equal(out, loaded(x, t, y).sample)
        plain = SDTTransformer2DModel(**tiny_config(sample_size=(8, 12), decay_mode=mode, decay_layout=layout))
        plain.load_state_dict(model.state_dict())  # the same weights, DiT's sin-cos positions
        assert not torch.allclose(out, plain.eval()(x, t, y).sample, atol=1e-4)
    maps = model.decay_maps(x, t, y, query=(1, 2))  # the decay alone, whatever the positions
    assert maps.shape == (2, 3, 2, 4, 6)


def test_rope_is_a_preset_override_and_a_bad_name_is_refused():
    model = SDTTransformer2DModel.from_preset("SDT-Ti/2", sample_size=16, position_embedding="sincos+rope", decay_mode="cag")
    assert model.rope.shape == (2, 64, 16) and model.pos_embed is not None
    with pytest.raises(ValueError, match=r"unknown position_embedding 'alibi'; expected one of 'sincos', 'rope', 'sincos\+rope'"):
        SDTTransformer2DModel(**tiny_config(position_embedding="alibi"))
    with pytest.raises(ValueError, match="head width divisible by 4, got 6"):
        SDTTransformer2DModel(**tiny_config(hidden_size=12, num_heads=2, position_embedding="rope"))


def test_from_dit_keeps_sincos_and_refuses_rope():
    dit = dit_pair()
    assert SDTTransformer2DModel.from_dit(dit).config.position_embedding == "sincos"
    with pytest.raises(ValueError, match="from_dit keeps DiT's position_embedding='sincos'; got 'rope'"):
        SDTTransformer2DModel.from_dit(dit, position_embedding="rope")


def test_rope_training_step_reaches_every_parameter():
    model = SDTTransformer2DModel(**tiny_config(position_embedding="rope", decay_mode="cag"))
    perturbed(model)
    x, t, y = dummy_inputs(model)
    model(x, t, y).sample.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ----------------------------------------------------------------------------- attention backend at run time


@pytest.mark.parametrize("layout", ["full", "decomposed"])
def test_backends_switch_at_run_time_with_equal_outputs_and_the_config_untouched(tmp_path, layout):
    model = perturbed(SDTTransformer2DModel(**tiny_config(decay_layout=layout, attention_backend="auto"))).eval()
    x, t, y = dummy_inputs(model)
    config_before = dict(model.config)
    assert "attention_backend" not in config_before and model.attention_backend == "auto"
    with torch.no_grad():
        reference = model(x, t, y).sample
        assert model.attention_backends_in_use() == {"cpu": "sdpa"}
        for backend in ("eager", "flex", "sdpa"):
            model.set_attention_backend(backend)
            assert model.attention_backend == backend
            torch.testing.assert_close(model(x, t, y).sample, reference, atol=1e-5, rtol=1e-5)
            assert model.attention_backends_in_use() == {"cpu": backend}
    assert dict(model.config) == config_before
    model.save_pretrained(tmp_path)
    assert "attention_backend" not in json.loads((tmp_path / "config.json").read_text())
    loaded = SDTTransformer2DModel.from_pretrained(tmp_path, attention_backend="eager").eval()
    assert loaded.attention_backend == "eager" and "attention_backend" not in loaded.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y).sample, reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown attention_backend 'xformers'"):
        model.set_attention_backend("xformers")


def test_a_saved_attention_backend_no_longer_decides(tmp_path, caplog):
    model = perturbed(SDTTransformer2DModel(**tiny_config())).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attention_backend": "flex"}))  # as folders were saved
    with caplog.at_level("WARNING"):
        loaded = SDTTransformer2DModel.from_pretrained(tmp_path).eval()
    assert "attention_backend" not in caplog.text  # dropped, not warned about as an unexpected key
    assert loaded.attention_backend == "auto" and "attention_backend" not in loaded.config
    x, t, y = dummy_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y).sample, model(x, t, y).sample)
