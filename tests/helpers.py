"""Helpers shared by the test modules (on the path through pytest's ``pythonpath = ["tests"]``)."""

import torch


def perturbed(model, scale=0.05, seed=0):
    """Random offsets on every parameter, so zero-initialised paths (adaLN-Zero, CAG W_g, output layers) are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def tiny_vae(seed=0):
    """A random 2-level ``AutoencoderKL``: 16x16x3 images <-> 8x8x4 latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    ).eval()


def tiny_classifier_config(architecture: str = "hierarchical", **overrides):
    """A CPU-sized classifier config: 64px SDT-H (grids 16, 8, 4, 2) or 32px isotropic (8x8), 5 labels."""
    from sdt_gen import SDTConfig

    if architecture == "hierarchical":
        config = dict(
            architecture="hierarchical", image_size=64, dims=[16, 32, 48, 64], depths=[1, 1, 2, 1], heads=[2, 2, 4, 4],
            mlp_ratios=[2.0, 2.0, 2.0, 2.0], head_hidden_size=32, layer_scale_init_values=[0.0, 0.0, 0.1, 0.1],
        )
    else:
        config = dict(architecture="isotropic", image_size=32, patch_size=4, hidden_size=32, depth=2, num_heads=2,
                      layer_scale_init_value=0.1)
    return SDTConfig(**{**config, "attention_backend": "sdpa", "num_labels": 5, **overrides})
