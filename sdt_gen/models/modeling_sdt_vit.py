"""The isotropic SDT classifier backbone (``architecture="isotropic"``), ViT-style.

The denoiser's patch embedding, its positions (fixed 2D sin-cos, rotary or both) and one stack of blocks. Trained from
scratch the blocks are plain pre-norm ``SDTLayer`` blocks (``modeling_sdt_h``); a denoiser probe
(``denoiser_probe``) is this backbone with the denoiser's own adaLN blocks, a fixed conditioning and,
for a latent denoiser, its VAE's encoder in front. ``build_isotropic`` and ``isotropic_features`` are
the isotropic halves of ``SDTModel.__init__`` and ``SDTModel.forward_features`` (``modeling_sdt``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import PatchEmbed, position_tables
from .configuration_sdt import SDTConfig
from .modeling_sdt_h import SDTLayer, SDTPooler, linear_drop_rates


def build_isotropic(model: nn.Module, config: SDTConfig) -> None:
    """Give ``model`` (an ``SDTModel``) the isotropic modules: ``patch_embed``, ``pos_embed``, ``blocks``,
    ``norm`` and ``pooler``."""
    build_embedding(model, config, config.num_channels)
    drop_rates = linear_drop_rates(config.drop_path_rate, config.depth)
    model.blocks = nn.ModuleList(
        SDTLayer(
            config.hidden_size,
            config.num_heads,
            config.mlp_ratio,
            decay=config.decay,
            qkv_bias=config.qkv_bias,
            drop_path=drop_rates[i],
            layer_scale_init_value=config.layer_scale_init_value,
            norm_eps=config.layer_norm_eps,
        )
        for i in range(config.depth)
    )
    model.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
    model.pooler = SDTPooler(config.hidden_size, norm_eps=config.layer_norm_eps)


def build_embedding(model: nn.Module, config: SDTConfig, in_channels: int) -> None:
    """Give ``model`` the patch embedding of ``in_channels``-channel inputs, its ``grid_size`` and its position
    buffers ``pos_embed`` and ``rope`` (``positions``; non-persistent: rebuilt, not saved)."""
    height, width = config.image_hw
    stride = config.patch_size * config.vae_downsample
    model.grid_size = (height // stride, width // stride)
    model.patch_embed = PatchEmbed(config.patch_size, in_channels, config.hidden_size)
    pos_embed, rope = positions(config, model.grid_size)
    model.register_buffer("pos_embed", pos_embed, persistent=False)  # (1, N, D) or None
    model.register_buffer("rope", rope, persistent=False)  # (2, N, D_head / 2) or None


def positions(config: SDTConfig, grid_size: tuple[int, int]):
    """The isotropic backbone's position tables on a grid: ``(sincos (1, N, D) | None, rope (2, N, D_head/2) | None)``."""
    return position_tables(config.hidden_size, config.num_heads, grid_size, config.position_embedding, config.rope_base)


def isotropic_features(
    model: nn.Module, pixel_values: torch.Tensor, hidden_states: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """Pixels ``(B, C, H, W)`` through ``model``'s (VAE encoder,) patch embedding and blocks to tokens
    ``(B, N, D)`` (before the final norm); appends the tokens after the embedding and after every block
    to ``hidden_states`` if given. A denoiser probe's blocks take its fixed ``conditioning``."""
    # 1. Input
    if model.vae is not None:
        with torch.no_grad():
            latents = model.vae.encode(pixel_values.to(model.vae.dtype)).latent_dist.mean
        pixel_values = latents.to(pixel_values.dtype) * model.config.vae_scaling_factor  # (B, C_lat, h, w)
    p = model.config.patch_size
    grid_size = (pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)
    pos, rope = model.pos_embed, model.rope
    if grid_size != model.grid_size:  # another input size: positions for that grid
        pos, rope = (None if t is None else t.to(pixel_values.device) for t in positions(model.config, grid_size))
    x = model.patch_embed(pixel_values)  # (B, N, D)
    if pos is not None:
        x = x + pos.to(x.dtype)
    if hidden_states is not None:
        hidden_states.append(x)

    # 2. Blocks
    c = None if model.conditioning is None else model.conditioning.expand(x.shape[0], -1)  # (B, D)
    for block in model.blocks:
        x = block(x, grid_size, rope) if c is None else block(x, c, grid_size, rope)  # (B, N, D)
        if hidden_states is not None:
            hidden_states.append(x)
    return x
