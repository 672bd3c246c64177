"""The VAE between images and the latents a latent denoiser sees: loading, scaling, encoding."""

from __future__ import annotations

import os

import torch


def load_vae(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """A diffusers ``AutoencoderKL`` from a local folder or a Hub repo id, frozen in eval mode.

    A folder without the VAE's files is a clear error, as is an id neither cached nor downloadable.
    """
    from diffusers import AutoencoderKL

    from ..hub import local_folder

    path = os.fspath(local_folder(path))
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"--vae {path!r}: expected a diffusers AutoencoderKL folder (config.json + "
            "diffusion_pytorch_model.safetensors) or a Hub repo id such as stabilityai/sd-vae-ft-ema"
        )
    return AutoencoderKL.from_pretrained(path).to(device).eval().requires_grad_(False)


def vae_downsampling(vae) -> int:
    """How many pixels one latent cell spans per side (8 for SD's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] ``(B, 3, H, W)`` to one posterior sample each, shifted and scaled as the denoiser sees it.

    Returns ``(latent - shift_factor) * scaling_factor`` of shape ``(B, C, H/f, W/f)`` in the VAE's dtype.
    """
    latents = vae.encode(images.to(vae.dtype)).latent_dist.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor
