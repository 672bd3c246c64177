"""SDTModel's encoders: one module per architecture, chosen by the config, and the keys of checkpoints saved
before the split (``sdt.stages...``, now ``sdt.encoder.stages...``) loading by every route."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageClassification

from sdt_gen import SDTForImageClassification, SDTModel, SDTTransformer2DModel
from sdt_gen.models.denoiser_probe import SDTProbeEncoder
from sdt_gen.models.modeling_sdt_h import SDTHierarchicalEncoder
from sdt_gen.models.modeling_sdt_vit import SDTIsotropicEncoder

from helpers import assert_as_saved, tiny_classifier_config, tiny_vae

CLASSIFIER_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "classifiers_v0"
NAMES = ["hierarchical", "isotropic", "probe"]


def saved_keys(path: Path) -> list[str]:
    with safe_open(path, "pt") as f:
        return sorted(f.keys())


def test_the_config_chooses_the_encoder_and_the_backbone_holds_only_it_and_the_pooler():
    denoiser = SDTTransformer2DModel(sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2,
                                     num_classes=10, attention_backend="sdpa")
    models = {
        SDTHierarchicalEncoder: SDTModel(tiny_classifier_config("hierarchical")),
        SDTIsotropicEncoder: SDTModel(tiny_classifier_config("isotropic")),
        SDTProbeEncoder: SDTForImageClassification.from_denoiser(denoiser, timestep=10).sdt,
    }
    for encoder_class, model in models.items():
        assert type(model.encoder) is encoder_class
        assert [name for name, _ in model.named_children()] == ["encoder", "pooler"]
        assert model.num_features == model.pooler.num_features


@pytest.mark.parametrize("name", NAMES)
def test_a_state_dict_saved_before_the_split_loads_with_load_state_dict(name):
    """What resuming a training checkpoint (accelerate's ``load_state``) of before the split does."""
    folder = CLASSIFIER_FIXTURES / name
    model = SDTForImageClassification(AutoModelForImageClassification.from_pretrained(folder).config)
    model.load_state_dict(load_file(folder / "model.safetensors"))  # strict
    io = load_file(folder / "io.safetensors")
    with torch.no_grad():
        logits = model.eval()(pixel_values=io["pixel_values"]).logits
    # One forward pass, written on another CPU (test_sdt_checkpoint_format shows this tolerance misses a 1e-3 change).
    assert_as_saved(logits, io["logits"])


@pytest.mark.parametrize("name", NAMES)
def test_the_backbone_alone_loads_a_classifier_saved_before_the_split_and_saves_the_same_keys(tmp_path, name):
    folder = CLASSIFIER_FIXTURES / name
    backbone, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(backbone) is SDTModel
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert set(info["unexpected_keys"]) == {"classifier.weight", "classifier.bias"}
    classifier = AutoModelForImageClassification.from_pretrained(folder)
    for key, tensor in classifier.sdt.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], tensor), key

    classifier.save_pretrained(tmp_path / "classifier")
    assert saved_keys(tmp_path / "classifier" / "model.safetensors") == saved_keys(folder / "model.safetensors")
    backbone.save_pretrained(tmp_path / "backbone")
    expected = sorted(key.removeprefix("sdt.") for key in saved_keys(folder / "model.safetensors")
                      if key.startswith("sdt."))
    assert saved_keys(tmp_path / "backbone" / "model.safetensors") == expected


def test_a_latent_probe_keeps_its_vae_frozen_and_in_eval_mode_after_loading(tmp_path):
    denoiser = SDTTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
                                     num_classes=10, attention_backend="sdpa")
    probe = SDTForImageClassification.from_denoiser(denoiser, timestep=5, freeze=False, vae=tiny_vae())
    probe.save_pretrained(tmp_path)
    assert any(key.startswith("sdt.vae.encoder.") for key in saved_keys(tmp_path / "model.safetensors"))
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).train()
    vae = loaded.sdt.encoder.vae
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training
    assert all(p.requires_grad for n, p in loaded.named_parameters() if not n.startswith("sdt.encoder.vae."))
    assert loaded.sdt.encoder.blocks.training
