"""The saved format of SDT classifiers: ``config.json``'s ``architectures`` and ``model_type`` and the
state-dict keys of ``model.safetensors`` must stay those of checkpoints already saved, so that they keep
loading. The expected keys were captured from the code before ``modeling_sdt`` was split into files; a
renamed or moved module fails here. If a change of format is intended, old checkpoints need converting."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from sdt_gen import SDTConfig, SDTForImageClassification, SDTTransformer2DModel, save_classifier

from helpers import assert_as_saved, assert_not_as_saved, nudged


def build(name):
    """SDT-H-XT, a tiny isotropic classifier and a probe of a tiny pixel-space denoiser (10 labels each)."""
    if name == "hierarchical":
        return SDTForImageClassification(SDTConfig.from_preset("SDT-H-XT", num_labels=10))
    if name == "isotropic":
        return SDTForImageClassification(SDTConfig(
            architecture="isotropic", image_size=32, patch_size=4, hidden_size=32, depth=2, num_heads=2,
            layer_scale_init_value=0.1, num_labels=10,
        ))
    denoiser = SDTTransformer2DModel(sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2,
                                     num_classes=10, attention_backend="sdpa", decay_layout="decomposed")
    return SDTForImageClassification.from_denoiser(denoiser, timestep=30)


# Sorted keys of model.safetensors, as saved by save_classifier before the split.
EXPECTED_KEYS = {
    "hierarchical": [
        "classifier.bias", "classifier.weight", "sdt.pooler.norm.bias", "sdt.pooler.norm.num_batches_tracked",
        "sdt.pooler.norm.running_mean", "sdt.pooler.norm.running_var", "sdt.pooler.norm.weight", "sdt.pooler.proj.bias",
        "sdt.pooler.proj.weight", "sdt.stages.0.blocks.0.attn.gate.alpha", "sdt.stages.0.blocks.0.attn.gate.proj.bias",
        "sdt.stages.0.blocks.0.attn.gate.proj.weight", "sdt.stages.0.blocks.0.attn.lepe.bias",
        "sdt.stages.0.blocks.0.attn.lepe.weight", "sdt.stages.0.blocks.0.attn.proj.bias",
        "sdt.stages.0.blocks.0.attn.proj.weight", "sdt.stages.0.blocks.0.attn.qkv.bias",
        "sdt.stages.0.blocks.0.attn.qkv.weight", "sdt.stages.0.blocks.0.cpe.bias", "sdt.stages.0.blocks.0.cpe.weight",
        "sdt.stages.0.blocks.0.mlp.dwconv.bias", "sdt.stages.0.blocks.0.mlp.dwconv.weight",
        "sdt.stages.0.blocks.0.mlp.fc1.bias", "sdt.stages.0.blocks.0.mlp.fc1.weight",
        "sdt.stages.0.blocks.0.mlp.fc2.bias", "sdt.stages.0.blocks.0.mlp.fc2.weight",
        "sdt.stages.0.blocks.0.norm1.bias", "sdt.stages.0.blocks.0.norm1.weight", "sdt.stages.0.blocks.0.norm2.bias",
        "sdt.stages.0.blocks.0.norm2.weight", "sdt.stages.1.blocks.0.attn.gate.alpha",
        "sdt.stages.1.blocks.0.attn.gate.proj.bias", "sdt.stages.1.blocks.0.attn.gate.proj.weight",
        "sdt.stages.1.blocks.0.attn.lepe.bias", "sdt.stages.1.blocks.0.attn.lepe.weight",
        "sdt.stages.1.blocks.0.attn.proj.bias", "sdt.stages.1.blocks.0.attn.proj.weight",
        "sdt.stages.1.blocks.0.attn.qkv.bias", "sdt.stages.1.blocks.0.attn.qkv.weight",
        "sdt.stages.1.blocks.0.cpe.bias", "sdt.stages.1.blocks.0.cpe.weight", "sdt.stages.1.blocks.0.mlp.dwconv.bias",
        "sdt.stages.1.blocks.0.mlp.dwconv.weight", "sdt.stages.1.blocks.0.mlp.fc1.bias",
        "sdt.stages.1.blocks.0.mlp.fc1.weight", "sdt.stages.1.blocks.0.mlp.fc2.bias",
        "sdt.stages.1.blocks.0.mlp.fc2.weight", "sdt.stages.1.blocks.0.norm1.bias",
        "sdt.stages.1.blocks.0.norm1.weight", "sdt.stages.1.blocks.0.norm2.bias", "sdt.stages.1.blocks.0.norm2.weight",
        "sdt.stages.1.downsample.norm.bias", "sdt.stages.1.downsample.norm.num_batches_tracked",
        "sdt.stages.1.downsample.norm.running_mean", "sdt.stages.1.downsample.norm.running_var",
        "sdt.stages.1.downsample.norm.weight", "sdt.stages.1.downsample.reduction.weight",
        "sdt.stages.2.blocks.0.attn.gate.alpha", "sdt.stages.2.blocks.0.attn.gate.proj.bias",
        "sdt.stages.2.blocks.0.attn.gate.proj.weight", "sdt.stages.2.blocks.0.attn.lepe.bias",
        "sdt.stages.2.blocks.0.attn.lepe.weight", "sdt.stages.2.blocks.0.attn.proj.bias",
        "sdt.stages.2.blocks.0.attn.proj.weight", "sdt.stages.2.blocks.0.attn.qkv.bias",
        "sdt.stages.2.blocks.0.attn.qkv.weight", "sdt.stages.2.blocks.0.cpe.bias", "sdt.stages.2.blocks.0.cpe.weight",
        "sdt.stages.2.blocks.0.mlp.dwconv.bias", "sdt.stages.2.blocks.0.mlp.dwconv.weight",
        "sdt.stages.2.blocks.0.mlp.fc1.bias", "sdt.stages.2.blocks.0.mlp.fc1.weight",
        "sdt.stages.2.blocks.0.mlp.fc2.bias", "sdt.stages.2.blocks.0.mlp.fc2.weight",
        "sdt.stages.2.blocks.0.norm1.bias", "sdt.stages.2.blocks.0.norm1.weight", "sdt.stages.2.blocks.0.norm2.bias",
        "sdt.stages.2.blocks.0.norm2.weight", "sdt.stages.2.blocks.1.attn.gate.alpha",
        "sdt.stages.2.blocks.1.attn.gate.proj.bias", "sdt.stages.2.blocks.1.attn.gate.proj.weight",
        "sdt.stages.2.blocks.1.attn.lepe.bias", "sdt.stages.2.blocks.1.attn.lepe.weight",
        "sdt.stages.2.blocks.1.attn.proj.bias", "sdt.stages.2.blocks.1.attn.proj.weight",
        "sdt.stages.2.blocks.1.attn.qkv.bias", "sdt.stages.2.blocks.1.attn.qkv.weight",
        "sdt.stages.2.blocks.1.cpe.bias", "sdt.stages.2.blocks.1.cpe.weight", "sdt.stages.2.blocks.1.mlp.dwconv.bias",
        "sdt.stages.2.blocks.1.mlp.dwconv.weight", "sdt.stages.2.blocks.1.mlp.fc1.bias",
        "sdt.stages.2.blocks.1.mlp.fc1.weight", "sdt.stages.2.blocks.1.mlp.fc2.bias",
        "sdt.stages.2.blocks.1.mlp.fc2.weight", "sdt.stages.2.blocks.1.norm1.bias",
        "sdt.stages.2.blocks.1.norm1.weight", "sdt.stages.2.blocks.1.norm2.bias", "sdt.stages.2.blocks.1.norm2.weight",
        "sdt.stages.2.downsample.norm.bias", "sdt.stages.2.downsample.norm.num_batches_tracked",
        "sdt.stages.2.downsample.norm.running_mean", "sdt.stages.2.downsample.norm.running_var",
        "sdt.stages.2.downsample.norm.weight", "sdt.stages.2.downsample.reduction.weight",
        "sdt.stages.3.blocks.0.attn.gate.alpha", "sdt.stages.3.blocks.0.attn.gate.proj.bias",
        "sdt.stages.3.blocks.0.attn.gate.proj.weight", "sdt.stages.3.blocks.0.attn.lepe.bias",
        "sdt.stages.3.blocks.0.attn.lepe.weight", "sdt.stages.3.blocks.0.attn.proj.bias",
        "sdt.stages.3.blocks.0.attn.proj.weight", "sdt.stages.3.blocks.0.attn.qkv.bias",
        "sdt.stages.3.blocks.0.attn.qkv.weight", "sdt.stages.3.blocks.0.cpe.bias", "sdt.stages.3.blocks.0.cpe.weight",
        "sdt.stages.3.blocks.0.mlp.dwconv.bias", "sdt.stages.3.blocks.0.mlp.dwconv.weight",
        "sdt.stages.3.blocks.0.mlp.fc1.bias", "sdt.stages.3.blocks.0.mlp.fc1.weight",
        "sdt.stages.3.blocks.0.mlp.fc2.bias", "sdt.stages.3.blocks.0.mlp.fc2.weight",
        "sdt.stages.3.blocks.0.norm1.bias", "sdt.stages.3.blocks.0.norm1.weight", "sdt.stages.3.blocks.0.norm2.bias",
        "sdt.stages.3.blocks.0.norm2.weight", "sdt.stages.3.downsample.norm.bias",
        "sdt.stages.3.downsample.norm.num_batches_tracked", "sdt.stages.3.downsample.norm.running_mean",
        "sdt.stages.3.downsample.norm.running_var", "sdt.stages.3.downsample.norm.weight",
        "sdt.stages.3.downsample.reduction.weight", "sdt.stem.proj.0.weight", "sdt.stem.proj.1.bias",
        "sdt.stem.proj.1.num_batches_tracked", "sdt.stem.proj.1.running_mean", "sdt.stem.proj.1.running_var",
        "sdt.stem.proj.1.weight", "sdt.stem.proj.10.bias", "sdt.stem.proj.10.num_batches_tracked",
        "sdt.stem.proj.10.running_mean", "sdt.stem.proj.10.running_var", "sdt.stem.proj.10.weight",
        "sdt.stem.proj.3.weight", "sdt.stem.proj.4.bias", "sdt.stem.proj.4.num_batches_tracked",
        "sdt.stem.proj.4.running_mean", "sdt.stem.proj.4.running_var", "sdt.stem.proj.4.weight",
        "sdt.stem.proj.6.weight", "sdt.stem.proj.7.bias", "sdt.stem.proj.7.num_batches_tracked",
        "sdt.stem.proj.7.running_mean", "sdt.stem.proj.7.running_var", "sdt.stem.proj.7.weight",
        "sdt.stem.proj.9.weight",
    ],
    "isotropic": [
        "classifier.bias", "classifier.weight", "sdt.blocks.0.attn.gate.alpha", "sdt.blocks.0.attn.gate.proj.bias",
        "sdt.blocks.0.attn.gate.proj.weight", "sdt.blocks.0.attn.proj.bias", "sdt.blocks.0.attn.proj.weight",
        "sdt.blocks.0.attn.qkv.bias", "sdt.blocks.0.attn.qkv.weight", "sdt.blocks.0.layer_scale_1",
        "sdt.blocks.0.layer_scale_2", "sdt.blocks.0.mlp.fc1.bias", "sdt.blocks.0.mlp.fc1.weight",
        "sdt.blocks.0.mlp.fc2.bias", "sdt.blocks.0.mlp.fc2.weight", "sdt.blocks.0.norm1.bias",
        "sdt.blocks.0.norm1.weight", "sdt.blocks.0.norm2.bias", "sdt.blocks.0.norm2.weight",
        "sdt.blocks.1.attn.gate.alpha", "sdt.blocks.1.attn.gate.proj.bias", "sdt.blocks.1.attn.gate.proj.weight",
        "sdt.blocks.1.attn.proj.bias", "sdt.blocks.1.attn.proj.weight", "sdt.blocks.1.attn.qkv.bias",
        "sdt.blocks.1.attn.qkv.weight", "sdt.blocks.1.layer_scale_1", "sdt.blocks.1.layer_scale_2",
        "sdt.blocks.1.mlp.fc1.bias", "sdt.blocks.1.mlp.fc1.weight", "sdt.blocks.1.mlp.fc2.bias",
        "sdt.blocks.1.mlp.fc2.weight", "sdt.blocks.1.norm1.bias", "sdt.blocks.1.norm1.weight",
        "sdt.blocks.1.norm2.bias", "sdt.blocks.1.norm2.weight", "sdt.norm.bias", "sdt.norm.weight",
        "sdt.patch_embed.proj.bias", "sdt.patch_embed.proj.weight",
    ],
    "probe": [
        "classifier.bias", "classifier.weight", "sdt.blocks.0.adaLN_modulation.1.bias",
        "sdt.blocks.0.adaLN_modulation.1.weight", "sdt.blocks.0.attn.gate.alpha", "sdt.blocks.0.attn.gate.proj.bias",
        "sdt.blocks.0.attn.gate.proj.weight", "sdt.blocks.0.attn.proj.bias", "sdt.blocks.0.attn.proj.weight",
        "sdt.blocks.0.attn.qkv.bias", "sdt.blocks.0.attn.qkv.weight", "sdt.blocks.0.mlp.0.bias",
        "sdt.blocks.0.mlp.0.weight", "sdt.blocks.0.mlp.2.bias", "sdt.blocks.0.mlp.2.weight",
        "sdt.blocks.1.adaLN_modulation.1.bias", "sdt.blocks.1.adaLN_modulation.1.weight",
        "sdt.blocks.1.attn.gate.alpha", "sdt.blocks.1.attn.gate.proj.bias", "sdt.blocks.1.attn.gate.proj.weight",
        "sdt.blocks.1.attn.proj.bias", "sdt.blocks.1.attn.proj.weight", "sdt.blocks.1.attn.qkv.bias",
        "sdt.blocks.1.attn.qkv.weight", "sdt.blocks.1.mlp.0.bias", "sdt.blocks.1.mlp.0.weight",
        "sdt.blocks.1.mlp.2.bias", "sdt.blocks.1.mlp.2.weight", "sdt.conditioning", "sdt.patch_embed.proj.bias",
        "sdt.patch_embed.proj.weight", "sdt.pooler.fc_norm.bias", "sdt.pooler.fc_norm.weight",
    ],
}


@pytest.mark.parametrize("name", ["hierarchical", "isotropic", "probe"])
def test_saved_classifier_keeps_its_config_names_and_state_dict_keys(tmp_path, name):
    torch.manual_seed(0)
    model = build(name).eval()
    folder = save_classifier(model, tmp_path / name)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["SDTForImageClassification"]
    assert config["model_type"] == "sdt"
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert sorted(f.keys()) == EXPECTED_KEYS[name]
    # In memory the encoder's modules sit under ``sdt.encoder``; saving drops that level. No non-persistent buffer.
    assert sorted(key.replace("sdt.encoder.", "sdt.", 1) for key in model.state_dict()) == EXPECTED_KEYS[name]

    loaded, info = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert type(loaded) is SDTForImageClassification
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    x = torch.rand(2, model.config.num_channels, *model.config.image_hw)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).logits, model(x).logits, rtol=0, atol=0)


CLASSIFIER_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "classifiers_v0"


@pytest.mark.parametrize("name", ["hierarchical", "isotropic", "probe"])
def test_classifiers_saved_before_the_encoder_split_compute_as_then(name):
    """``classifiers_v0``: a tiny classifier of each architecture (cag decay, perturbed weights) and its logits on
    fixed pixels, saved by ``save_classifier`` before the architectures became separate encoder modules."""
    folder = CLASSIFIER_FIXTURES / name
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    io = load_file(folder / "io.safetensors")
    with torch.no_grad():
        logits = model(pixel_values=io["pixel_values"]).logits
        changed = nudged(model, "classifier.weight")(pixel_values=io["pixel_values"]).logits
    # One forward pass, written on another CPU: within ONE_PASS of the logits' scale, not bitwise.
    assert_as_saved(logits, io["logits"])
    assert_not_as_saved(changed, io["logits"])
