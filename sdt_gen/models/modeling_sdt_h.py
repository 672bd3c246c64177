"""SDT-H, the hierarchical SDT classifier backbone (``architecture="hierarchical"``), and its layers.

RMT's four-stage layout with SDT attention (docs/method.md, section 6): a conv stem of stride 4, conv
patch merging (3x3, stride 2) between stages, a 3x3 depthwise CPE before each block, a 5x5 LePE on
``v``, decomposed decay in stages 1-2 and full decay in stages 3-4, drop path and layer scale,
pre-norm blocks. ``SDTLayer`` and ``SDTPooler`` also serve the isotropic encoders
(``modeling_sdt_vit``). ``SDTHierarchicalEncoder`` is the encoder ``SDTModel`` (``modeling_sdt``) runs for
``architecture="hierarchical"``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ..layers import DecayConfig, DropPath, SpatialDecayAttention
from .configuration_sdt import HIERARCHICAL_STRIDE, SDTConfig, check_image_size


def to_image(x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Tokens to a feature map: ``(B, N, C) -> (B, C, h, w)``, a channels-last view (no copy)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid_size)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """A feature map to tokens: ``(B, C, h, w) -> (B, N, C)``; a view when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def linear_drop_rates(rate: float, count: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to ``rate`` over ``count`` blocks (plain floats: meta-safe)."""
    return [rate * i / max(count - 1, 1) for i in range(count)]


#################################################################################
#                                Building blocks                                #
#################################################################################

class SDTStem(nn.Module):
    """RMT's conv stem, stride 4: 3x3 convs with strides 2, 1, 2, 1, each with BatchNorm (GELU between).

    Args:
        in_channels: image channels.
        dim: output width (the first stage's width); the first two convs use ``dim // 2``.
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        mid = dim // 2
        layers: list[nn.Module] = []
        convs = ((in_channels, mid, 2, True), (mid, mid, 1, True), (mid, dim, 2, True), (dim, dim, 1, False))
        for c_in, c_out, stride, act in convs:
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)]
            if act:
                layers.append(nn.GELU())
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, dim, H/4, W/4)


class SDTPatchMerging(nn.Module):
    """Conv patch merging between stages: a 3x3 stride-2 conv and BatchNorm, ``(h, w) -> (h/2, w/2)``."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1, bias=False)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.norm(self.reduction(to_image(x, grid_size)))  # (B, C', h/2, w/2)
        return to_tokens(x), (x.shape[-2], x.shape[-1])


class SDTMlp(nn.Module):
    """RMT's feed-forward: ``fc1 -> GELU -> (+ 3x3 depthwise conv, residual) -> fc2``.

    Args:
        dim: token width.
        hidden_dim: inner width.
        dwconv: add the depthwise-conv residual on the inner features (needs the token grid).
    """

    def __init__(self, dim: int, hidden_dim: int, dwconv: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim) if dwconv else None
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        x = self.act(self.fc1(x))  # (B, N, hidden)
        if self.dwconv is not None:
            x = x + to_tokens(self.dwconv(to_image(x, grid_size)))
        return self.fc2(x)  # (B, N, C)


class SDTLayer(GradientCheckpointingLayer):
    """A pre-norm SDT block without conditioning (the classifier's block, SDT-H and isotropic).

    ``x = x + CPE(x)``; ``x = x + DropPath(ls1 * Attn(LN(x)))``; ``x = x + DropPath(ls2 * MLP(LN(x)))``.
    A ``GradientCheckpointingLayer``: transformers' ``model.gradient_checkpointing_enable()`` (v5:
    ``activation_checkpointing_enable()``) checkpoints it.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP inner width over ``dim``.
        decay, qkv_bias, lepe_kernel_size: passed to ``SpatialDecayAttention``.
        cpe_kernel_size: depthwise conv positional encoding before the block (0: none).
        mlp_dwconv: RMT's depthwise conv inside the MLP.
        drop_path: stochastic depth of both residual branches.
        layer_scale_init_value: per-channel scale of both branches at init (0: no layer scale).
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        decay: DecayConfig = DecayConfig(),
        qkv_bias: bool = True,
        lepe_kernel_size: int = 0,
        cpe_kernel_size: int = 0,
        mlp_dwconv: bool = False,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.layer_scale_init_value = layer_scale_init_value
        self.cpe = (
            nn.Conv2d(dim, dim, cpe_kernel_size, padding=cpe_kernel_size // 2, groups=dim) if cpe_kernel_size else None
        )
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SpatialDecayAttention(dim, num_heads, decay, qkv_bias=qkv_bias, lepe_kernel_size=lepe_kernel_size)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = SDTMlp(dim, int(dim * mlp_ratio), mlp_dwconv)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layer_scale_init_value > 0:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.layer_scale_1 = self.layer_scale_2 = None

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], rope: torch.Tensor | None = None) -> torch.Tensor:
        if self.cpe is not None:
            x = x + to_tokens(self.cpe(to_image(x, grid_size)))  # (B, N, C)
        attn = self.attn(self.norm1(x), grid_size, rope)  # (B, N, C)
        x = x + self.drop_path(attn if self.layer_scale_1 is None else self.layer_scale_1 * attn)
        mlp = self.mlp(self.norm2(x), grid_size)  # (B, N, C)
        x = x + self.drop_path(mlp if self.layer_scale_2 is None else self.layer_scale_2 * mlp)
        return x


class SDTPooler(nn.Module):
    """Tokens ``(B, N, C)`` to pre-logits ``(B, F)``.

    Args:
        dim: token width ``C``.
        head_hidden_size: if > 0, RMT's projection before pooling (Linear -> BatchNorm -> SiLU),
            ``F = head_hidden_size``.
        fc_norm: a LayerNorm after pooling (the linear probe of a denoiser: its features are not normalised).
        norm_eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, head_hidden_size: int = 0, fc_norm: bool = False, norm_eps: float = 1e-6):
        super().__init__()
        if head_hidden_size:
            self.proj = nn.Linear(dim, head_hidden_size)
            self.norm = nn.BatchNorm1d(head_hidden_size)
            self.act = nn.SiLU()
        else:
            self.proj = self.norm = self.act = None
        self.num_features = head_hidden_size or dim
        self.fc_norm = nn.LayerNorm(self.num_features, eps=norm_eps) if fc_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            x = self.act(self.norm(self.proj(x).transpose(1, 2)).transpose(1, 2))  # (B, N, F)
        x = x.mean(dim=1)  # (B, F)
        return x if self.fc_norm is None else self.fc_norm(x)


#################################################################################
#                                  SDT-H encoder                                #
#################################################################################

class SDTStage(nn.Module):
    """One SDT-H stage: patch merging from the previous stage's width (none in the first stage), then blocks.

    Args:
        in_dim: the previous stage's width; None for the first stage, which takes the stem's tokens as they are.
        dim: the stage's width.
        drop_path_rates: the stochastic depth of each block; their number is the stage's depth.
        **block_kwargs: the remaining ``SDTLayer`` arguments, the same for every block.
    """

    def __init__(self, in_dim: int | None, dim: int, drop_path_rates: list[float], **block_kwargs):
        super().__init__()
        self.downsample = SDTPatchMerging(in_dim, dim) if in_dim is not None else None
        self.blocks = nn.ModuleList(SDTLayer(dim, drop_path=rate, **block_kwargs) for rate in drop_path_rates)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.downsample is not None:
            x, grid_size = self.downsample(x, grid_size)  # (B, N/4, C')
        for block in self.blocks:
            x = block(x, grid_size)  # (B, N, C)
        return x, grid_size


class SDTHierarchicalEncoder(nn.Module):
    """SDT-H's encoder: pixels ``(B, C, H, W)`` through the conv stem and the stages to tokens ``(B, N, dims[-1])``.

    The tokens leave normalised by a final LayerNorm, except with RMT's pre-head projection
    (``head_hidden_size``), whose BatchNorm in the pooler normalises instead.

    Args:
        config: an ``SDTConfig`` with ``architecture="hierarchical"``; read: ``num_channels``, the per-stage keys
            (``dims``, ``depths``, ``heads``, ``mlp_ratios``, ``heads_ranges``, ``decay_layouts``,
            ``layer_scale_init_values``), the decay, ``qkv_bias``, ``lepe_kernel_size``, ``cpe_kernel_size``,
            ``mlp_dwconv``, ``drop_path_rate``, ``head_hidden_size`` and ``layer_norm_eps``.

    Attributes:
        num_features: the width of the output tokens.
        head_hidden_size: the width of RMT's projection before pooling (0: none), for the pooler.
        fc_norm: whether the pooler normalises after pooling (never: these tokens are normalised).
    """

    fc_norm = False

    def __init__(self, config: SDTConfig):
        super().__init__()
        dims = config.stage_values("dims")
        drop_rates = linear_drop_rates(config.drop_path_rate, sum(config.depths))
        self.stem = SDTStem(config.num_channels, dims[0])
        self.stages = nn.ModuleList()
        for i, depth in enumerate(config.depths):
            self.stages.append(SDTStage(
                dims[i - 1] if i > 0 else None,
                dims[i],
                [drop_rates.pop(0) for _ in range(depth)],
                num_heads=config.stage_values("heads")[i],
                mlp_ratio=config.stage_values("mlp_ratios")[i],
                decay=replace(
                    config.decay,
                    layout=config.stage_values("decay_layouts")[i],
                    heads_range=config.stage_values("heads_ranges")[i],
                ),
                qkv_bias=config.qkv_bias,
                lepe_kernel_size=config.lepe_kernel_size,
                cpe_kernel_size=config.cpe_kernel_size,
                mlp_dwconv=config.mlp_dwconv,
                layer_scale_init_value=config.stage_values("layer_scale_init_values")[i],
                norm_eps=config.layer_norm_eps,
            ))
        self.norm = nn.Identity() if config.head_hidden_size else nn.LayerNorm(dims[-1], eps=config.layer_norm_eps)
        self.num_features = dims[-1]
        self.head_hidden_size = config.head_hidden_size

    def get_input_embeddings(self) -> nn.Module:
        return self.stem

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.stem = value

    def frozen_modules(self) -> tuple[nn.Module, ...]:
        """The modules that never train (none here)."""
        return ()

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Pixels to tokens ``(B, N, C)`` and, with ``output_hidden_states``, the tokens after the stem and after
        every stage (before the final norm)."""
        size = tuple(pixel_values.shape[-2:])
        check_image_size(size, HIERARCHICAL_STRIDE, "the SDT-H stem and patch merging (stride 32)")
        # 1. Input
        x = self.stem(pixel_values)  # (B, C0, H/4, W/4)
        grid_size = (x.shape[-2], x.shape[-1])
        x = to_tokens(x)  # (B, N, C0)
        hidden_states = [x] if output_hidden_states else None

        # 2. Stages
        for stage in self.stages:
            x, grid_size = stage(x, grid_size)  # (B, N, C)
            if hidden_states is not None:
                hidden_states.append(x)
        return self.norm(x), (tuple(hidden_states) if hidden_states is not None else None)
