"""The isotropic SDT classifier encoder (``architecture="isotropic"``), ViT-style.

The denoiser's patch embedding, its positions (fixed 2D sin-cos, rotary or both) and one stack of blocks.
``SDTPatchEncoder`` is that input side, shared with the denoiser probe's encoder (``denoiser_probe``), which
adds the denoiser's own adaLN blocks with a fixed conditioning and, for a latent denoiser, its VAE's encoder in
front. ``SDTIsotropicEncoder`` trains from scratch: plain pre-norm ``SDTLayer`` blocks (``modeling_sdt_h``).
Both are encoders that ``SDTModel`` (``modeling_sdt``) runs.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init  # skips tensors already loaded from a checkpoint

from ..layers import PatchEmbed, position_tables
from .configuration_sdt import SDTConfig, check_image_size
from .modeling_sdt_h import SDTLayer, linear_drop_rates


class SDTPatchEncoder(nn.Module):
    """The isotropic encoders' input side: pixels (through a frozen VAE encoder, if any) to patch tokens with
    their positions. Subclasses add the blocks and the ``forward`` that runs them.

    Args:
        config: the classifier's ``SDTConfig``; read: ``image_size``, ``patch_size``, ``hidden_size``,
            ``num_heads``, ``position_embedding``, ``rope_base`` and, with a VAE, ``vae_config`` and
            ``vae_scaling_factor``.
        in_channels: channels of what the patch embedding sees (the latent channels behind a VAE).
        vae: an ``AutoencoderKL`` whose encoder turns the pixels into latents ``latent_dist.mean *
            vae_scaling_factor``; kept frozen and in eval mode.

    Attributes:
        grid_size: the token grid of ``config.image_size``; other input sizes get positions for their own grid.
        pos_embed: the fixed 2D sin-cos positions ``(1, N, D)`` added to the patch tokens, or None.
        rope: the 2D rotary positions ``(2, N, D_head / 2)`` of every attention layer, or None.
    """

    def __init__(self, config: SDTConfig, in_channels: int, vae: nn.Module | None = None):
        super().__init__()
        self.config = config
        if vae is not None:
            vae.requires_grad_(False)
        self.vae = vae  # registered first: the order of model.parameters() is that of saved optimizer/EMA states
        height, width = config.image_hw
        stride = config.patch_size * config.vae_downsample
        self.grid_size = (height // stride, width // stride)
        self.patch_embed = PatchEmbed(config.patch_size, in_channels, config.hidden_size)
        pos_embed, rope = self.position_tables(self.grid_size)
        # Non-persistent: rebuilt (init_buffers), never saved.
        self.register_buffer("pos_embed", pos_embed, persistent=False)
        self.register_buffer("rope", rope, persistent=False)

    def position_tables(self, grid_size: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The position tables of a token grid: ``(sincos (1, N, D) | None, rope (2, N, D_head / 2) | None)``."""
        config = self.config
        return position_tables(config.hidden_size, config.num_heads, grid_size, config.position_embedding,
                               config.rope_base)

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Rebuild the position tables (``SDTPreTrainedModel._init_weights``: a checkpoint never holds them)."""
        for buffer, table in zip((self.pos_embed, self.rope), self.position_tables(self.grid_size)):
            if buffer is not None:
                init.copy_(buffer, table)

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.patch_embed = value

    def frozen_modules(self) -> tuple[nn.Module, ...]:
        """The modules that never train: the VAE, if any."""
        return () if self.vae is None else (self.vae,)

    def train(self, mode: bool = True) -> "SDTPatchEncoder":
        """Train mode for all but the VAE, which stays in eval mode."""
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        """Pixels ``(B, C, H, W)`` to ``(tokens (B, N, D) with their sin-cos positions, grid size, rope table)``."""
        stride = self.config.patch_size * self.config.vae_downsample
        check_image_size(tuple(pixel_values.shape[-2:]), stride, "the patch embedding")
        if self.vae is not None:
            with torch.no_grad():
                latents = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist.mean
            pixel_values = latents.to(pixel_values.dtype) * self.config.vae_scaling_factor  # (B, C_lat, h, w)
        p = self.config.patch_size
        grid_size = (pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)
        pos, rope = self.pos_embed, self.rope
        if grid_size != self.grid_size:  # another input size: positions for that grid
            pos, rope = (None if t is None else t.to(pixel_values.device) for t in self.position_tables(grid_size))
        x = self.patch_embed(pixel_values)  # (B, N, D)
        if pos is not None:
            x = x + pos.to(x.dtype)
        return x, grid_size, rope


class SDTIsotropicEncoder(SDTPatchEncoder):
    """The isotropic encoder: patch tokens with positions through pre-norm ``SDTLayer`` blocks and a final
    LayerNorm, ``(B, C, H, W) -> (B, N, hidden_size)``.

    Args:
        config: an ``SDTConfig`` with ``architecture="isotropic"``; read besides ``SDTPatchEncoder``'s keys:
            ``num_channels``, ``depth``, ``mlp_ratio``, the decay, ``qkv_bias``, ``drop_path_rate``,
            ``layer_scale_init_value`` and ``layer_norm_eps``.

    Attributes:
        num_features: the width of the output tokens.
        head_hidden_size: the pooler's projection width (0: none).
        fc_norm: whether the pooler normalises after pooling (no: these tokens are normalised).
    """

    head_hidden_size = 0
    fc_norm = False

    def __init__(self, config: SDTConfig):
        super().__init__(config, config.num_channels)
        drop_rates = linear_drop_rates(config.drop_path_rate, config.depth)
        self.blocks = nn.ModuleList(
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
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.num_features = config.hidden_size

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Pixels to normalised tokens ``(B, N, D)`` and, with ``output_hidden_states``, the tokens after the
        embedding and after every block."""
        x, grid_size, rope = self.embed(pixel_values)  # (B, N, D)
        hidden_states = [x] if output_hidden_states else None
        for block in self.blocks:
            x = block(x, grid_size, rope)  # (B, N, D)
            if hidden_states is not None:
                hidden_states.append(x)
        return self.norm(x), (tuple(hidden_states) if hidden_states is not None else None)
