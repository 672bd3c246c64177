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
