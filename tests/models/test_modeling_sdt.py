"""SDT classifiers (transformers models): presets, forward/backward, checkpointing, save/load in a
fresh process, the image-classification pipeline, probes of a denoiser, and bad input."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from sdt_gen import (
    SDT_CLASSIFIER_PRESETS,
    SDTConfig,
    SDTForImageClassification,
    SDTModel,
    SDTTransformer2DModel,
    image_processor_for,
    save_classifier,
)

from helpers import perturbed, tiny_classifier_config

# ----------------------------------------------------------------------------- helpers


def tiny_config(architecture="hierarchical", **overrides):
    """``tiny_classifier_config`` with stochastic depth on."""
    return tiny_classifier_config(architecture, **{"drop_path_rate": 0.1, **overrides})


def tiny_denoiser(in_channels=3, depth=3, **overrides):
    torch.manual_seed(0)
    config = dict(sample_size=8, patch_size=2, in_channels=in_channels, hidden_size=32, depth=depth, num_heads=2,
                  num_classes=10, attention_backend="sdpa", decay_layout="decomposed")
    return perturbed(SDTTransformer2DModel(**{**config, **overrides})).eval()


def pixels(config, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    height, width = config.image_hw
    return torch.rand(batch, config.num_channels, height, width, generator=g) * 2 - 1


def hidden_state_of(denoiser, x, timestep, layer):
    """The denoiser's output of ``blocks[layer]`` for clean sample ``x`` with the null label."""
    captured = {}
    hook = denoiser.blocks[layer].register_forward_hook(lambda _m, _i, out: captured.setdefault("h", out))
    try:
        with torch.no_grad():
            denoiser(x, timestep, torch.full((x.shape[0],), denoiser.config.num_classes))
    finally:
        hook.remove()
    return captured["h"]


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    "name, expected",
    [("SDT-H-T", 14e6), ("SDT-H-S", 27e6), ("SDT-H-B", 54e6),  # RMT's / the paper's counts
     ("SDT-ViT-Ti/16", 5.7e6), ("SDT-ViT-S/16", 22.1e6), ("SDT-ViT-B/16", 86.6e6)],  # DeiT's counts
)
def test_preset_parameter_counts(name, expected):
    with torch.device("meta"):
        model = SDTForImageClassification(SDTConfig.from_preset(name, num_labels=1000))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.05, f"{name}: {count / 1e6:.2f}M parameters, not ~{expected / 1e6}M"


def test_preset_shapes_follow_the_method():
    config = SDTConfig.from_preset("SDT-H-S")
    assert config.num_labels == 1000 and config.preset == "SDT-H-S"
    assert config.decay_layouts == ["decomposed", "decomposed", "full", "full"]
    assert config.heads_ranges == [4.0, 4.0, 6.0, 6.0]
    assert config.lepe_kernel_size == 5 and config.cpe_kernel_size == 3
    with torch.device("meta"):
        model = SDTModel(SDTConfig.from_preset("SDT-H-T", decay_mode="fixed"))
    layouts = [stage.blocks[0].attn.decay.layout for stage in model.encoder.stages]
    assert layouts == ["decomposed", "decomposed", "full", "full"]
    assert SDTConfig.from_preset("SDT-H-T", decay_mode="none", num_labels=10).decay_mode == "none"


# ----------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("architecture", ["hierarchical", "isotropic"])
@pytest.mark.parametrize("mode", ["none", "fixed", "cag"])
def test_forward_backward_every_parameter_gets_a_gradient(architecture, mode):
    torch.manual_seed(0)
    config = tiny_config(architecture, decay_mode=mode)
    model = perturbed(SDTForImageClassification(config)).train()
    x = pixels(config)
    out = model(x, labels=torch.tensor([1, 4]), output_hidden_states=True)
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()
    expected_states = 5 if architecture == "hierarchical" else 3  # embedding + each stage / block
    assert len(out.hidden_states) == expected_states
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"
    has_gates = any(n.endswith("gate.alpha") for n, _ in model.named_parameters())
    assert has_gates == (mode == "cag")


def test_eval_is_deterministic_and_batch_independent():
    config = tiny_config()
    model = perturbed(SDTForImageClassification(config)).eval()
    x = pixels(config, batch=3)
    with torch.no_grad():
        logits = model(x).logits
        torch.testing.assert_close(model(x[:1]).logits, logits[:1])
        assert torch.equal(logits, model(x).logits)


@pytest.mark.parametrize("architecture", ["hierarchical", "isotropic", "probe"])
def test_gradient_checkpointing_same_outputs_and_gradients(architecture):
    if architecture == "probe":
        model = SDTForImageClassification.from_denoiser(tiny_denoiser(), timestep=10, freeze=False)
    else:
        model = perturbed(SDTForImageClassification(tiny_config(architecture)))
    model.train()
    x = pixels(model.config)

    def step():
        model.zero_grad()
        torch.manual_seed(0)  # same drop-path masks in both runs
        out = model(x, labels=torch.tensor([0, 1]))
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    if architecture == "hierarchical":
        blocks = [block for stage in model.sdt.encoder.stages for block in stage.blocks]
    else:
        blocks = list(model.sdt.encoder.blocks)
    logits, grads = step()
    model.set_grad_checkpointing(True)
    assert all(block.gradient_checkpointing for block in blocks)
    logits_ckpt, grads_ckpt = step()
    torch.testing.assert_close(logits_ckpt, logits)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=lambda m: f"{name}: {m}")
    model.set_grad_checkpointing(False)
    assert not any(block.gradient_checkpointing for block in blocks)


def test_timm_style_api():
    config = tiny_config()
    model = SDTForImageClassification(config).eval()
    x = pixels(config)
    features = model.forward_features(x)
    assert features.shape == (2, 4, 64)  # 64px / 32 = 2x2 tokens of the last stage
    assert model.forward_head(features, pre_logits=True).shape == (2, 32)  # head_hidden_size
    torch.testing.assert_close(model.forward_head(features), model(x).logits)

    no_decay = model.no_weight_decay()
    names = dict(model.named_parameters())
    assert "sdt.encoder.stages.0.blocks.0.attn.gate.alpha" in no_decay
    assert "sdt.encoder.stages.0.blocks.0.norm1.weight" in no_decay and "classifier.bias" in no_decay
    assert "sdt.encoder.stages.2.blocks.0.layer_scale_1" in no_decay
    assert all(names[n].ndim <= 1 for n in no_decay)
    assert "sdt.encoder.stages.0.blocks.0.attn.qkv.weight" not in no_decay

    model.reset_classifier(3, id2label={0: "a", 1: "b", 2: "c"})
    assert model(x).logits.shape == (2, 3) and model.config.num_labels == 3 and model.config.label2id["c"] == 2
    model.reset_classifier(0)
    assert model(x).logits.shape == (2, 32)


def test_hierarchical_accepts_other_multiples_of_32_and_isotropic_other_grids():
    model = SDTForImageClassification(tiny_config()).eval()
    assert model(torch.randn(1, 3, 96, 64)).logits.shape == (1, 5)
    iso = SDTForImageClassification(tiny_config("isotropic")).eval()
    assert iso(torch.randn(1, 3, 48, 32)).logits.shape == (1, 5)


def test_one_channel_model_takes_grey_images_repeated_over_rgb():
    config = tiny_config(num_channels=1)
    model = perturbed(SDTForImageClassification(config)).eval()
    grey = pixels(config)
    with torch.no_grad():
        torch.testing.assert_close(model(grey.expand(-1, 3, -1, -1)).logits, model(grey).logits)
    with pytest.raises(ValueError, match="1 channels"):
        model(torch.randn(1, 2, 64, 64))


def test_auto_classes_are_registered():
    config = AutoConfig.for_model("sdt", **{k: v for k, v in tiny_config().to_dict().items() if k != "model_type"})
    assert isinstance(config, SDTConfig)
    assert isinstance(AutoModel.from_config(config), SDTModel)
    assert isinstance(AutoModelForImageClassification.from_config(config), SDTForImageClassification)


# ----------------------------------------------------------------------------- denoiser probes


@pytest.mark.parametrize("layer, timestep", [(1, 37), (None, 500), (-3, 0)])
def test_from_denoiser_features_equal_the_denoiser_hidden_states(tmp_path, layer, timestep):
    denoiser = tiny_denoiser()
    # An SDTPipeline-style folder: model_index.json with id2label, the transformer in a subfolder.
    denoiser.save_pretrained(tmp_path / "pipe" / "transformer")
    id2label = {str(i): f"class {i}" for i in range(10)}
    index = {"_class_name": "SDTPipeline", "id2label": id2label}
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))

    model = SDTForImageClassification.from_denoiser(tmp_path / "pipe", timestep=timestep, layer=layer).eval()
    index = {None: 2, 1: 1, -3: 0}[layer]
    assert model.config.denoiser_layer == index and model.config.depth == index + 1
    assert model.config.denoiser_label == 10 and model.config.id2label[3] == "class 3"
    x = pixels(model.config, batch=3)
    expected = hidden_state_of(denoiser, x, timestep, index)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), expected, rtol=1e-5, atol=1e-5)
    # Not a tautology: another timestep or layer gives other features.
    other = hidden_state_of(denoiser, x, timestep + 100, index)
    assert (other - expected).abs().max() > 1e-3


def test_from_denoiser_transformer_folder_and_object_agree(tmp_path):
    denoiser = tiny_denoiser(in_channels=1)
    denoiser.save_pretrained(tmp_path / "transformer")
    from_folder = SDTForImageClassification.from_denoiser(tmp_path / "transformer", timestep=20, num_labels=4)
    from_object = SDTForImageClassification.from_denoiser(denoiser, timestep=20, num_labels=4)
    assert from_folder.config.num_channels == 1 and from_folder.config.num_labels == 4
    x = pixels(from_folder.config)
    with torch.no_grad():
        torch.testing.assert_close(from_folder.forward_features(x), from_object.forward_features(x))
    processor = image_processor_for(from_folder.config)
    # [-1, 1], as the denoiser saw its images
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3


def test_from_denoiser_reads_a_saved_sdt_pipeline(tmp_path):
    from diffusers import DDPMScheduler

    from sdt_gen import SDTPipeline

    denoiser = tiny_denoiser(num_classes=3)
    pipe = SDTPipeline(transformer=denoiser, scheduler=DDPMScheduler(), vae=None, id2label={0: "a", 1: "b", 2: "c"})
    pipe.save_pretrained(tmp_path / "pipe")
    from_folder = SDTForImageClassification.from_denoiser(tmp_path / "pipe", timestep=10, layer=0)
    from_object = SDTForImageClassification.from_denoiser(pipe, timestep=10, layer=0)
    for model in (from_folder, from_object):
        assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.denoiser_label == 3
        x = pixels(model.config)
        with torch.no_grad():
            torch.testing.assert_close(
                model.forward_features(x), hidden_state_of(denoiser, x, 10, 0), rtol=1e-5, atol=1e-5
            )


def test_linear_probe_trains_only_the_head_and_fine_tune_trains_everything():
    denoiser = tiny_denoiser()
    probe = SDTForImageClassification.from_denoiser(denoiser, timestep=50, layer=1, freeze=True)
    trainable = {n for n, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {"sdt.pooler.fc_norm.weight", "sdt.pooler.fc_norm.bias", "classifier.weight", "classifier.bias"}
    probe.train()
    assert not probe.sdt.encoder.blocks.training and probe.sdt.pooler.training
    before = {n: p.clone() for n, p in probe.named_parameters()}
    optimizer = torch.optim.SGD([p for p in probe.parameters() if p.requires_grad], lr=0.1)
    probe(pixels(probe.config), labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    changed = {n for n, p in probe.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable

    tuned = SDTForImageClassification.from_denoiser(denoiser, timestep=50, layer=1, freeze=False).train()
    tuned(pixels(tuned.config), labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is not None for p in tuned.parameters())


def test_from_denoiser_latent_space_with_a_vae():
    from diffusers import AutoencoderKL

    denoiser = tiny_denoiser(in_channels=4, depth=2)
    torch.manual_seed(0)
    vae = perturbed(AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=8, layers_per_block=1, sample_size=16,
    )).eval()
    model = SDTForImageClassification.from_denoiser(denoiser, timestep=5, vae=vae).eval()
    assert model.config.image_size == 16 and model.config.num_channels == 3
    x = pixels(model.config)
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(
        model.forward_features(x), hidden_state_of(denoiser, latents, 5, 1), rtol=1e-5, atol=1e-5
    )
    assert not any(p.requires_grad for p in model.sdt.encoder.vae.parameters())
    with pytest.raises(ValueError, match="latent channels"):
        SDTForImageClassification.from_denoiser(tiny_denoiser(in_channels=3, depth=1), vae=vae)


def test_from_denoiser_bad_input(tmp_path):
    denoiser = tiny_denoiser(depth=2)
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        SDTForImageClassification.from_denoiser(denoiser, layer=2)
    with pytest.raises(ValueError, match="non-negative"):
        SDTForImageClassification.from_denoiser(denoiser, timestep=-1)
    with pytest.raises(FileNotFoundError, match="neither an SDTPipeline folder"):
        SDTForImageClassification.from_denoiser(tmp_path)
    with pytest.raises(TypeError, match="SDTPipeline or SDTTransformer2DModel"):
        SDTForImageClassification.from_denoiser(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- save / load / pipeline


LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from PIL import Image
    import sdt_gen  # registers model type "sdt"
    from transformers import AutoModelForImageClassification, pipeline

    results = {}
    for name, folder in json.loads(sys.argv[1]).items():
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        x = torch.load(folder + "/x.pt")
        with torch.no_grad():
            logits = model(x).logits
        torch.save(logits, folder + "/logits_fresh.pt")
        image = Image.open(folder + "/image.png")
        predictions = pipeline("image-classification", model=folder, top_k=3)(image)
        results[name] = dict(
            cls=type(model).__name__,
            trainable=sorted(n for n, p in model.named_parameters() if p.requires_grad),
            predictions=predictions,
        )
    print("RESULTS" + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Three classifiers saved with save_classifier, loaded and run through the pipeline in ONE fresh process."""
    root = tmp_path_factory.mktemp("saved")
    id2label = {0: "zero", 1: "one", 2: "two", 3: "three"}
    rng = np.random.default_rng(0)
    models = {
        "hierarchical-fixed-grey": perturbed(SDTForImageClassification(
            tiny_config(decay_mode="fixed", num_channels=1, num_labels=None, id2label=id2label)
        )),
        "isotropic-cag": perturbed(SDTForImageClassification(
            tiny_config("isotropic", decay_layout="decomposed", num_labels=None, id2label=id2label)
        )),
        "probe": SDTForImageClassification.from_denoiser(tiny_denoiser(), timestep=30, layer=1, id2label=id2label),
    }
    folders, expected = {}, {}
    for name, model in models.items():
        model.eval()
        folder = save_classifier(model, root / name.replace("/", "_"))
        x = pixels(model.config, batch=3)
        torch.save(x, folder / "x.pt")
        mode = "L" if model.config.num_channels == 1 else "RGB"
        shape = (40, 52) if mode == "L" else (40, 52, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / "image.png")
        processor = image_processor_for(model.config)
        inputs = processor(Image.open(folder / "image.png"), return_tensors="pt")
        with torch.no_grad():
            expected[name] = dict(logits=model(x).logits, probs=model(**inputs).logits.softmax(-1)[0])
        folders[name] = str(folder)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, json.dumps(folders)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS", 1)[1])
    return models, folders, expected, results


@pytest.mark.parametrize("name", ["hierarchical-fixed-grey", "isotropic-cag", "probe"])
def test_save_then_load_in_a_fresh_process_gives_the_same_logits(saved_models, name):
    models, folders, expected, results = saved_models
    assert results[name]["cls"] == "SDTForImageClassification"
    # Another process may split the matmuls differently (threads, load on the machine): float32 rounding only.
    fresh = torch.load(folders[name] + "/logits_fresh.pt", weights_only=True)
    torch.testing.assert_close(fresh, expected[name]["logits"], rtol=0, atol=1e-5)
    trainable = sorted(n for n, p in models[name].named_parameters() if p.requires_grad)
    assert results[name]["trainable"] == trainable  # a linear probe stays a linear probe


@pytest.mark.parametrize("name", ["hierarchical-fixed-grey", "isotropic-cag", "probe"])
def test_pipeline_returns_labels_from_id2label(saved_models, name):
    models, _, expected, results = saved_models
    predictions = results[name]["predictions"]
    id2label = models[name].config.id2label
    assert len(predictions) == 3 and {p["label"] for p in predictions} <= set(id2label.values())
    probs = expected[name]["probs"]
    top = probs.topk(3)
    assert [p["label"] for p in predictions] == [id2label[i] for i in top.indices.tolist()]
    np.testing.assert_allclose([p["score"] for p in predictions], top.values.numpy(), rtol=1e-4, atol=1e-6)


def test_image_processor_settings():
    imagenet = image_processor_for(SDTConfig.from_preset("SDT-H-T"))
    assert imagenet.crop_size == {"height": 224, "width": 224} and imagenet.size == {"shortest_edge": 256}
    assert list(imagenet.image_mean) == [0.485, 0.456, 0.406]
    grey = image_processor_for(tiny_config(num_channels=1))
    assert grey.size == {"shortest_edge": 64} and list(grey.image_mean) == [0.5] * 3
    custom = image_processor_for(tiny_config(image_mean=[0.2, 0.3, 0.4], image_std=[0.5, 0.5, 0.5]), crop_pct=1.0)
    assert list(custom.image_mean) == [0.2, 0.3, 0.4]


# ----------------------------------------------------------------------------- bad input


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="unknown preset 'SDT-H-XL'") as err:
        SDTConfig.from_preset("SDT-H-XL")
    assert all(name in str(err.value) for name in SDT_CLASSIFIER_PRESETS)


@pytest.mark.parametrize("size", [100, 16, [64, 48]])
def test_image_size_the_stem_cannot_take_is_a_clear_error(size):
    shown = f"{size}x{size}" if isinstance(size, int) else "64x48"
    with pytest.raises(ValueError, match=f"image size {shown}.*multiples of 32"):
        SDTConfig.from_preset("SDT-H-T", image_size=size)
    model = SDTForImageClassification(tiny_config()).eval()
    with pytest.raises(ValueError, match="image size 80x64"):
        model(torch.randn(1, 3, 80, 64))
    with pytest.raises(ValueError, match="image size 30x30.*multiples of 4"):
        tiny_config("isotropic", image_size=30)


def test_num_labels_that_does_not_match_id2label_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="num_labels=3 does not match id2label, which names 2 labels"):
        SDTConfig.from_preset("SDT-H-T", num_labels=3, id2label={0: "cat", 1: "dog"})
    model = SDTForImageClassification(tiny_config(num_labels=None, id2label={0: "cat", 1: "dog"}))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=3 does not match id2label, which names 2 labels"):
        AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=3, id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="does not match id2label"):
        model.reset_classifier(3, id2label={0: "a"})


def test_other_bad_config_values():
    with pytest.raises(ValueError, match="unknown decay_mode 'rope'"):
        tiny_config(decay_mode="rope")
    with pytest.raises(ValueError, match="unknown architecture"):
        SDTConfig(architecture="pyramid")
    with pytest.raises(ValueError, match="heads has 3 entries"):
        tiny_config(heads=[2, 2, 4])
    with pytest.raises(ValueError, match="unknown decay_layouts 'axial'"):
        tiny_config(decay_layouts=["axial", "full", "full", "full"])
    with pytest.raises(ValueError, match="unknown pool"):
        tiny_config(pool="cls")


# ----------------------------------------------------------------------------- rotary positions


@pytest.mark.parametrize("position", ["rope", "sincos+rope"])
def test_isotropic_classifier_with_rotary_positions_saves_loads_and_takes_other_grids(tmp_path, position):
    config = tiny_config("isotropic", position_embedding=position, rope_base=100.0, drop_path_rate=0.0)
    model = perturbed(SDTForImageClassification(config), scale=0.3).eval()  # logits far from 0: positions matter
    encoder = model.sdt.encoder
    assert encoder.rope.shape == (2, 64, 8) and (encoder.pos_embed is None) == (position == "rope")
    x = pixels(config)
    save_classifier(model, tmp_path / "model")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.position_embedding == position
    with torch.no_grad():
        logits = model(x).logits
        torch.testing.assert_close(loaded(x).logits, logits)
        plain = SDTForImageClassification(tiny_config("isotropic", drop_path_rate=0.0)).eval()
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(plain(x).logits, logits, atol=1e-4)  # the rotation is applied
        assert model(torch.randn(1, 3, 48, 32)).logits.shape == (1, 5)  # a 12x8 grid: its own rotation


def test_probe_of_a_rope_denoiser_features_equal_its_hidden_states():
    denoiser = tiny_denoiser(position_embedding="rope", decay_mode="cag")
    model = SDTForImageClassification.from_denoiser(denoiser, timestep=300, layer=1).eval()
    assert model.config.position_embedding == "rope" and model.sdt.encoder.pos_embed is None
    x = pixels(model.config, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), hidden_state_of(denoiser, x, 300, 1), rtol=1e-5, atol=1e-5)


def test_rotary_positions_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="position_embedding='rope' applies to the isotropic architecture"):
        tiny_config(position_embedding="rope")
    with pytest.raises(ValueError, match="unknown position_embedding 'alibi'"):
        tiny_config("isotropic", position_embedding="alibi")
    with pytest.raises(ValueError, match="head width divisible by 4, got 6"):
        tiny_config("isotropic", hidden_size=12, num_heads=2, position_embedding="rope")
