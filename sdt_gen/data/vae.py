"""The VAE between images and the latents a latent denoiser sees: loading, scaling, encoding."""

from __future__ import annotations

import os
from collections.abc import Mapping

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


def vae_downsampling(vae_or_config) -> int:
    """How many pixels one latent cell spans per side (8 for SD's VAE): ``2 ** (len(block_out_channels) - 1)``.

    Args:
        vae_or_config: an ``AutoencoderKL``, its config, or that config as a plain dict.
    """
    config = getattr(vae_or_config, "config", vae_or_config)
    channels = config["block_out_channels"] if isinstance(config, Mapping) else config.block_out_channels
    return 2 ** (len(channels) - 1)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] ``(B, 3, H, W)`` to one posterior sample each, shifted and scaled as the denoiser sees it.

    Returns ``(latent - shift_factor) * scaling_factor`` of shape ``(B, C, H/f, W/f)`` in the VAE's dtype.
    """
    latents = vae.encode(images.to(vae.dtype)).latent_dist.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of ``encode_images``' scaling, then the decoder: latents as the denoiser sees them to images
    in about [-1, 1] ``(B, 3, H*f, W*f)``. Undoes ``scaling_factor`` and ``shift_factor`` in the VAE's dtype."""
    config = vae.config
    latents = latents.to(vae.dtype) / config.scaling_factor
    if getattr(config, "shift_factor", None):
        latents = latents + config.shift_factor
    return vae.decode(latents).sample
