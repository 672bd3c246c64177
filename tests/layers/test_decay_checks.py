"""Decay settings are checked when a model is built, once, by ``DecayConfig``, and never while it runs."""

from collections import Counter

import pytest
import torch

from sdt_gen import SDTConfig, SDTForImageClassification, SDTTransformer2DModel
from sdt_gen.layers import attention, decay_config, rotary, spatial_decay
from sdt_gen.models import configuration_sdt, transformer_sdt

DECAY_KEYS = ("decay_mode", "decay_layout", "decay_init")


@pytest.fixture
def checks(monkeypatch) -> Counter:
    """Every ``check_choice`` call, counted by the name of the setting it checks."""
    counted, check_choice = Counter(), spatial_decay.check_choice

    def counting(name, value, choices):
        counted[name] += 1
        return check_choice(name, value, choices)

    for module in (spatial_decay, decay_config, attention, rotary, configuration_sdt, transformer_sdt):
        if hasattr(module, "check_choice"):
            monkeypatch.setattr(module, "check_choice", counting)
    return counted


@pytest.mark.parametrize("layout", ["full", "decomposed"])
def test_the_denoiser_checks_each_decay_setting_once_and_never_in_forward(checks, layout):
    depth = 3
    model = SDTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=depth, num_heads=2, num_classes=3,
        decay_mode="cag", decay_layout=layout,
    )
    # The model's one DecayConfig checks mode, layout and init; each gate its own decay_init argument.
    assert [checks[key] for key in DECAY_KEYS] == [1, 1, 1 + depth]
    checks.clear()
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([1, 500]), torch.tensor([0, 2])).sample
    out.square().mean().backward()
    with torch.no_grad():
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 500]), torch.tensor([0, 2]))
    assert not checks, f"checked while running: {dict(checks)}"


@pytest.mark.parametrize("preset", ["SDT-ViT-Ti/16", "SDT-H-XT"])
def test_the_classifiers_check_their_config_once_and_never_in_forward(checks, preset):
    config = SDTConfig.from_preset(preset, num_labels=3, image_size=32, num_channels=1, decay_mode="fixed")
    assert checks["decay_mode"] == 1 and checks["decay_init"] == 1
    checks.clear()
    model = SDTForImageClassification(config)
    checks.clear()
    model(pixel_values=torch.randn(2, 1, 32, 32)).logits.sum().backward()
    with torch.no_grad():
        model(pixel_values=torch.randn(2, 1, 32, 32))
    assert not checks, f"checked while running: {dict(checks)}"
