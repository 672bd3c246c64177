"""sdt_gen.data.vae: the one place for the VAE's downsampling and latent scaling."""

import torch
from helpers import tiny_vae

from sdt_gen.data import decode_latents, encode_images, vae_downsampling


def test_vae_downsampling_of_a_vae_its_config_or_a_dict():
    vae = tiny_vae()
    assert vae_downsampling(vae) == 2
    assert vae_downsampling(vae.config) == 2
    assert vae_downsampling({"block_out_channels": [128, 256, 512, 512]}) == 8  # SD's VAE


def test_decode_latents_undoes_the_scaling_of_encode_images():
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.25)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = vae.decode(latents / 0.5 + 0.25).sample
        assert torch.equal(decode_latents(vae, latents), expected)
        images = decode_latents(vae, latents)
        assert images.shape == (2, 3, 16, 16)
        assert encode_images(vae, images).shape == latents.shape
