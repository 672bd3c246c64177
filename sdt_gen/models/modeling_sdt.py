"""SDT classifiers as Hugging Face transformers models: ``SDTModel`` and ``SDTForImageClassification``.

Two backbones from the same attention core (``sdt_gen.layers.SpatialDecayAttention``):

- **SDT-H** (``architecture="hierarchical"``), RMT's four-stage layout with SDT attention
  (docs/method.md, section 6): a conv stem of stride 4, conv patch merging (3x3, stride 2) between
  stages, a 3x3 depthwise CPE before each block, a 5x5 LePE on ``v``, decomposed decay in stages
  1-2 and full decay in stages 3-4, drop path and layer scale, pre-norm blocks.
- **isotropic** (``architecture="isotropic"``), ViT-style: the denoiser's patch embedding, fixed
  2D sin-cos positions and one stack of blocks. Trained from scratch the blocks are plain pre-norm
  blocks; built by ``SDTForImageClassification.from_denoiser`` they are the denoiser's own adaLN
  blocks with the conditioning fixed to one timestep and the null label, so the features are
  exactly the denoiser's hidden states.

Importing ``sdt_gen`` registers model type ``"sdt"`` with ``AutoConfig``, ``AutoModel`` and
``AutoModelForImageClassification``. ``save_classifier`` writes a folder that
``transformers.pipeline("image-classification", model=folder)`` reads (after ``import sdt_gen``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, PreTrainedModel
from transformers import initialization as init  # skips tensors already loaded from a checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from ..layers import DropPath, PatchEmbed, SpatialDecayAttention, rmt_gammas, sincos_2d
from .configuration_sdt import HIERARCHICAL_STRIDE, SDT_CLASSIFIER_PRESETS, SDTConfig, check_image_size
from .transformer_sdt import SDTBlock, SDTTransformer2DModel


IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]


def to_image(x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Tokens to a feature map: ``(B, N, C) -> (B, C, h, w)``, a channels-last view (no copy)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid_size)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """A feature map to tokens: ``(B, C, h, w) -> (B, N, C)``; a view when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def _linear_drop_rates(rate: float, count: int) -> list[float]:
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
        decay_mode, decay_layout, decay_init, attention_backend, initial_value, heads_range,
            qkv_bias, lepe_kernel_size: passed to ``SpatialDecayAttention``.
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
        decay_mode: str = "cag",
        decay_layout: str = "full",
        decay_init: str = "rmt",
        attention_backend: str = "auto",
        initial_value: float = 2.0,
        heads_range: float = 6.0,
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
        self.attn = SpatialDecayAttention(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            decay_mode=decay_mode,
            decay_layout=decay_layout,
            decay_init=decay_init,
            attention_backend=attention_backend,
            initial_value=initial_value,
            heads_range=heads_range,
            lepe_kernel_size=lepe_kernel_size,
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = SDTMlp(dim, int(dim * mlp_ratio), mlp_dwconv)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layer_scale_init_value > 0:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.layer_scale_1 = self.layer_scale_2 = None

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        if self.cpe is not None:
            x = x + to_tokens(self.cpe(to_image(x, grid_size)))  # (B, N, C)
        attn = self.attn(self.norm1(x), grid_size)  # (B, N, C)
        x = x + self.drop_path(attn if self.layer_scale_1 is None else self.layer_scale_1 * attn)
        mlp = self.mlp(self.norm2(x), grid_size)  # (B, N, C)
        x = x + self.drop_path(mlp if self.layer_scale_2 is None else self.layer_scale_2 * mlp)
        return x


class SDTProbeBlock(SDTBlock, GradientCheckpointingLayer):
    """The denoiser's adaLN block (``SDTBlock``) as a transformers ``GradientCheckpointingLayer``.

    Same modules and forward as ``SDTBlock``, so a denoiser's block state dict loads into it unchanged;
    only transformers' checkpointing switch is added.
    """


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
#                                    Models                                     #
#################################################################################

class SDTPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the transformers plumbing shared by the SDT classifiers."""

    config_class = SDTConfig
    base_model_prefix = "sdt"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SDTLayer", "SDTProbeBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """timm/RMT initialisation; also rebuilds every non-persistent buffer (gammas, positions).

        transformers >= 5 builds a model on the meta device before loading a checkpoint and calls
        this for what the checkpoint did not hold, which includes all non-persistent buffers; its
        ``init`` functions skip tensors that were loaded.
        """
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # PyTorch's default conv init (kaiming-uniform), which RMT keeps for its convs.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight[0].numel())
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, SpatialDecayAttention):
            # Runs after its children, so after the generic Linear init of the gate.
            _init_decay(module)
        elif isinstance(module, SDTLayer):
            for scale in (module.layer_scale_1, module.layer_scale_2):
                if scale is not None:
                    init.constant_(scale, module.layer_scale_init_value)
        elif isinstance(module, SDTModel):
            if module.pos_embed is not None:
                init.copy_(module.pos_embed, sincos_2d(module.pos_embed.shape[-1], *module.grid_size).unsqueeze(0))
            if module.conditioning is not None:
                init.zeros_(module.conditioning)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' ``from_pretrained``, then the config's freezing (loading makes new parameters)."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_freeze()
        return loaded

    def apply_freeze(self) -> None:
        """With ``freeze_backbone`` only the pooler (and the classifier) train; a probe's VAE never does."""
        backbone = self if isinstance(self, SDTModel) else self.sdt
        if self.config.freeze_backbone:
            for name, param in backbone.named_parameters():
                param.requires_grad_(name.startswith("pooler."))
        if backbone.vae is not None:
            backbone.vae.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters to train without weight decay (timm's convention, full names).

        Every 1-D parameter: biases, norm scales, layer scales, the CAG scales ``alpha``.
        """
        return {name for name, param in self.named_parameters() if param.ndim <= 1 or name.endswith("gate.alpha")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch for gradient (activation) checkpointing of every block."""
        if enable:
            switch = getattr(self, "activation_checkpointing_enable", None) or self.gradient_checkpointing_enable
        else:
            switch = getattr(self, "activation_checkpointing_disable", None) or self.gradient_checkpointing_disable
        switch()


class SDTModel(SDTPreTrainedModel):
    """The SDT backbone: pixels ``(B, C, H, W)`` to tokens and pooled features.

    Returns a ``BaseModelOutputWithPooling``: ``last_hidden_state`` ``(B, N, C)`` (tokens of the last
    stage; for a denoiser probe exactly the denoiser's hidden states after block ``denoiser_layer``),
    ``pooler_output`` ``(B, F)`` (the pre-logits) and, with ``output_hidden_states``, the tokens after
    the stem/embedding and after every stage (SDT-H) or block (isotropic).
    """

    def __init__(self, config: SDTConfig):
        super().__init__(config)
        self.register_buffer("pos_embed", None, persistent=False)  # isotropic: fixed sin-cos positions
        self.register_buffer("conditioning", None)  # denoiser probe: the fixed adaLN input
        self.vae = None
        if config.architecture == "hierarchical":
            self._build_hierarchical(config)
        elif config.is_denoiser_probe:
            self._build_denoiser_probe(config)
        else:
            self._build_isotropic(config)
        self.num_features = self.pooler.num_features
        self.post_init()
        self.apply_freeze()

    # ------------------------------------------------------------------ construction

    def _attention_kwargs(self, config: SDTConfig) -> dict[str, Any]:
        return dict(
            decay_mode=config.decay_mode,
            decay_init=config.decay_init,
            attention_backend=config.attention_backend,
            initial_value=config.initial_value,
            qkv_bias=config.qkv_bias,
        )

    def _build_hierarchical(self, config: SDTConfig) -> None:
        dims = config.stage_values("dims")
        drop_rates = _linear_drop_rates(config.drop_path_rate, sum(config.depths))
        self.stem = SDTStem(config.num_channels, dims[0])
        self.stages = nn.ModuleList()
        for i, depth in enumerate(config.depths):
            stage = nn.Module()
            stage.downsample = SDTPatchMerging(dims[i - 1], dims[i]) if i > 0 else None
            stage.blocks = nn.ModuleList(
                SDTLayer(
                    dims[i],
                    config.stage_values("heads")[i],
                    config.stage_values("mlp_ratios")[i],
                    decay_layout=config.stage_values("decay_layouts")[i],
                    heads_range=config.stage_values("heads_ranges")[i],
                    lepe_kernel_size=config.lepe_kernel_size,
                    cpe_kernel_size=config.cpe_kernel_size,
                    mlp_dwconv=config.mlp_dwconv,
                    drop_path=drop_rates.pop(0),
                    layer_scale_init_value=config.stage_values("layer_scale_init_values")[i],
                    norm_eps=config.layer_norm_eps,
                    **self._attention_kwargs(config),
                )
                for _ in range(depth)
            )
            self.stages.append(stage)
        self.norm = nn.Identity() if config.head_hidden_size else nn.LayerNorm(dims[-1], eps=config.layer_norm_eps)
        self.pooler = SDTPooler(dims[-1], config.head_hidden_size, norm_eps=config.layer_norm_eps)

    def _build_isotropic(self, config: SDTConfig) -> None:
        self._build_embedding(config, config.num_channels)
        drop_rates = _linear_drop_rates(config.drop_path_rate, config.depth)
        self.blocks = nn.ModuleList(
            SDTLayer(
                config.hidden_size,
                config.num_heads,
                config.mlp_ratio,
                decay_layout=config.decay_layout,
                heads_range=config.heads_range,
                drop_path=drop_rates[i],
                layer_scale_init_value=config.layer_scale_init_value,
                norm_eps=config.layer_norm_eps,
                **self._attention_kwargs(config),
            )
            for i in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = SDTPooler(config.hidden_size, norm_eps=config.layer_norm_eps)

    def _build_denoiser_probe(self, config: SDTConfig) -> None:
        denoiser = config.denoiser_config
        in_channels = denoiser["in_channels"]
        if config.vae_config:
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL.from_config(config.vae_config)  # frozen: see apply_freeze
            self.vae.decoder = self.vae.post_quant_conv = None  # only the encoder is used (and saved)
        elif in_channels != config.num_channels:
            raise ValueError(
                f"the denoiser takes {in_channels}-channel samples but num_channels is {config.num_channels}; "
                "a latent denoiser needs its VAE (vae_config)"
            )
        self._build_embedding(config, in_channels)
        self.blocks = nn.ModuleList(
            SDTProbeBlock(
                config.hidden_size,
                config.num_heads,
                config.mlp_ratio,
                mlp_norm_eps=denoiser.get("mlp_norm_eps", 1e-6),
                decay_mode=config.decay_mode,
                decay_layout=config.decay_layout,
                decay_init=config.decay_init,
                attention_backend=config.attention_backend,
                initial_value=config.initial_value,
                heads_range=config.heads_range,
            )
            for _ in range(config.depth)
        )
        # The denoiser's adaLN input t_emb(timestep) + y_emb(null label), computed once (from_denoiser).
        self.register_buffer("conditioning", torch.zeros(1, config.hidden_size))
        self.norm = nn.Identity()  # the features are the denoiser's hidden states, untouched
        self.pooler = SDTPooler(config.hidden_size, fc_norm=True, norm_eps=config.layer_norm_eps)

    def _build_embedding(self, config: SDTConfig, in_channels: int) -> None:
        height, width = config.image_hw
        stride = config.patch_size * config.vae_downsample
        self.grid_size = (height // stride, width // stride)
        self.patch_embed = PatchEmbed(config.patch_size, in_channels, config.hidden_size)
        self.register_buffer(
            "pos_embed", sincos_2d(config.hidden_size, *self.grid_size).unsqueeze(0), persistent=False
        )  # (1, N, D)

    @torch.no_grad()
    def load_denoiser_weights(self, denoiser: SDTTransformer2DModel, vae: nn.Module | None = None) -> None:
        """Copy a denoiser's patch embedding and first ``depth`` blocks, and fix its conditioning.

        The conditioning is ``denoiser.conditioning(denoiser_timestep, denoiser_label)``, computed in
        eval mode (no label dropout) and kept as the ``conditioning`` buffer.
        """
        config = self.config
        if not config.is_denoiser_probe:
            raise ValueError("load_denoiser_weights needs a config built by SDTForImageClassification.from_denoiser")
        self.patch_embed.load_state_dict(denoiser.x_embedder.state_dict())
        for mine, theirs in zip(self.blocks, denoiser.blocks):
            mine.load_state_dict(theirs.state_dict())
        was_training = denoiser.training
        denoiser.eval()
        device = denoiser.x_embedder.proj.weight.device
        timestep = torch.as_tensor([config.denoiser_timestep], device=device)
        label = torch.tensor([config.denoiser_label], device=device)
        self.conditioning.copy_(denoiser.conditioning(timestep, label))  # (1, D)
        denoiser.train(was_training)
        if self.vae is not None:
            if vae is None:
                raise ValueError("this probe encodes images with a VAE: pass the denoiser's vae")
            encoder = {k: v for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
            self.vae.load_state_dict(encoder)

    def get_input_embeddings(self) -> nn.Module:
        """The pixel embedding: the conv stem (SDT-H) or the patch embedding (isotropic), as ViT returns its
        patch embeddings."""
        return self.stem if self.config.architecture == "hierarchical" else self.patch_embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the module ``get_input_embeddings`` returns (it must give the same output shape)."""
        if self.config.architecture == "hierarchical":
            self.stem = value
        else:
            self.patch_embed = value

    # ------------------------------------------------------------------ forward

    def train(self, mode: bool = True) -> "SDTModel":
        """A frozen backbone (linear probe) and the VAE stay in eval mode: BatchNorm statistics and drop path frozen."""
        super().train(mode)
        if self.config.freeze_backbone:
            for name, child in self.named_children():
                if name != "pooler":
                    child.eval()
        if self.vae is not None:
            self.vae.eval()
        return self

    def _check_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        config = self.config
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
        channels = pixel_values.shape[1]
        if channels != config.num_channels:
            if config.num_channels == 1 and channels == 3:
                pixel_values = pixel_values.mean(dim=1, keepdim=True)  # grey images converted to RGB
            else:
                raise ValueError(f"pixel_values must have {config.num_channels} channels, got {channels}")
        size = tuple(pixel_values.shape[-2:])
        if config.architecture == "hierarchical":
            check_image_size(size, HIERARCHICAL_STRIDE, "the SDT-H stem and patch merging (stride 32)")
        else:
            check_image_size(size, config.patch_size * config.vae_downsample, "the patch embedding")
        return pixel_values

    def forward_features(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Pixels to the last stage's tokens ``(B, N, C)`` (normalised, except for denoiser probes)."""
        # 1. Input
        pixel_values = self._check_pixels(pixel_values)
        hidden_states = []
        if self.config.architecture == "hierarchical":
            x = self.stem(pixel_values)  # (B, C0, H/4, W/4)
            grid_size = (x.shape[-2], x.shape[-1])
            x = to_tokens(x)  # (B, N, C0)
        else:
            if self.vae is not None:
                with torch.no_grad():
                    latents = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist.mean
                pixel_values = latents.to(pixel_values.dtype) * self.config.vae_scaling_factor  # (B, C_lat, h, w)
            p = self.config.patch_size
            grid_size = (pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)
            pos = self.pos_embed
            if grid_size != self.grid_size:  # another input size: positions for that grid
                pos = sincos_2d(pos.shape[-1], *grid_size).unsqueeze(0).to(pos.device)
            x = self.patch_embed(pixel_values) + pos.to(pixel_values.dtype)  # (B, N, D)
        if output_hidden_states:
            hidden_states.append(x)

        # 2. Blocks
        if self.config.architecture == "hierarchical":
            for stage in self.stages:
                if stage.downsample is not None:
                    x, grid_size = stage.downsample(x, grid_size)  # (B, N/4, C')
                for block in stage.blocks:
                    x = block(x, grid_size)  # (B, N, C)
                if output_hidden_states:
                    hidden_states.append(x)
        else:
            c = None if self.conditioning is None else self.conditioning.expand(x.shape[0], -1)  # (B, D)
            for block in self.blocks:
                x = block(x, grid_size) if c is None else block(x, c, grid_size)  # (B, N, D)
                if output_hidden_states:
                    hidden_states.append(x)

        # 3. Output
        x = self.norm(x)  # (B, N, C)
        return x, (tuple(hidden_states) if output_hidden_states else None)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """Args:
        pixel_values: ``(B, num_channels, H, W)`` images normalised as by ``image_processor_for``.
        output_hidden_states: also return the tokens after the embedding and after each stage / block.
        return_dict: return a ``BaseModelOutputWithPooling`` instead of a tuple.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        features, hidden_states = self.forward_features(pixel_values, output_hidden_states=bool(output_hidden_states))
        pooled = self.pooler(features)  # (B, F)
        if not return_dict:
            return (features, pooled) + ((hidden_states,) if hidden_states is not None else ())
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=pooled, hidden_states=hidden_states)


class SDTForImageClassification(SDTPreTrainedModel):
    """An SDT backbone (``self.sdt``) with a linear classifier on its pooled features.

    ``forward(pixel_values, labels)`` returns an ``ImageClassifierOutput``; with ``labels`` the loss is
    chosen by ``config.problem_type`` exactly as for transformers' classifiers (``self.loss_function``):
    ``"regression"`` (MSE), ``"single_label_classification"`` (cross-entropy on class indices),
    ``"multi_label_classification"`` (BCE with logits on float targets), inferred on the first loss when
    None. One addition: with ``"single_label_classification"``, float labels of the logits' shape are
    soft targets (mixup/cutmix) and give the cross-entropy of that distribution. Label smoothing is
    the training script's business.

    Example:
        ```python
        import sdt_gen
        from sdt_gen import SDTConfig, SDTForImageClassification, save_classifier
        from transformers import pipeline

        model = SDTForImageClassification(SDTConfig.from_preset("SDT-H-T", num_labels=1000))
        probe = SDTForImageClassification.from_denoiser("results/003/pipeline", timestep=100)
        save_classifier(model, "cls")  # weights, config and image processor
        pipeline("image-classification", model="cls")("cat.jpg")
        ```
    """

    def __init__(self, config: SDTConfig):
        super().__init__(config)
        self.sdt = SDTModel(config)
        self.num_features = self.sdt.num_features
        self.classifier = nn.Linear(self.num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    # ------------------------------------------------------------------ timm-style API

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels to the backbone's tokens ``(B, N, C)``."""
        return self.sdt.forward_features(pixel_values)[0]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``(B, N, C)`` to logits ``(B, num_labels)``, or the pooled pre-logits ``(B, F)``."""
        pooled = self.sdt.pooler(features)
        return pooled if pre_logits else self.classifier(pooled)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_labels: int, id2label: dict[int, str] | None = None) -> None:
        """A fresh head for ``num_labels`` classes (0: no head, logits are the pre-logits); updates the config."""
        if id2label is not None and len(id2label) != num_labels:
            raise ValueError(f"num_labels={num_labels} does not match id2label with {len(id2label)} labels")
        device = next(self.parameters()).device
        if num_labels > 0:
            self.classifier = nn.Linear(self.num_features, num_labels, device=device)
            init.trunc_normal_(self.classifier.weight, std=self.config.initializer_range)
            init.zeros_(self.classifier.bias)
        else:
            self.classifier = nn.Identity()
        if id2label is not None:
            self.config.id2label = {int(k): v for k, v in id2label.items()}
            self.config.label2id = {v: k for k, v in self.config.id2label.items()}
        else:
            self.config.num_labels = num_labels

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """Args:
        pixel_values: ``(B, num_channels, H, W)`` images normalised as by ``image_processor_for``.
        labels: targets of the loss selected by ``config.problem_type`` (see the class docstring): class
            indices ``(B,)``, float targets ``(B, num_labels)`` (multi-label, or soft targets with
            ``"single_label_classification"``), or regression values ``(B,)`` / ``(B, num_labels)``.
        output_hidden_states: also return the backbone's hidden states.
        return_dict: return an ``ImageClassifierOutput`` instead of a tuple.
        **kwargs: passed to the loss (e.g. the Trainer's ``num_items_in_batch``).
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.sdt(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)  # (B, num_labels)
        loss = None
        if labels is not None:
            soft_targets = (
                self.config.problem_type == "single_label_classification"
                and labels.dtype.is_floating_point
                and labels.shape == logits.shape
            )
            if soft_targets:  # transformers' loss takes only class indices here
                loss = F.cross_entropy(logits, labels.to(logits.device))
            else:
                loss = self.loss_function(labels, logits, self.config, **kwargs)
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_preset(cls, name: str, **config_overrides) -> "SDTForImageClassification":
        """A randomly initialised classifier of preset ``name`` (see ``SDT_CLASSIFIER_PRESETS``)."""
        return cls(SDTConfig.from_preset(name, **config_overrides))

    @classmethod
    def from_denoiser(
        cls,
        denoiser: str | Path | SDTTransformer2DModel | Any,
        timestep: int | float = 100,
        layer: int | None = None,
        pool: str = "mean",
        freeze: bool = True,
        vae: nn.Module | None = None,
        **config_overrides,
    ) -> "SDTForImageClassification":
        """A classifier on the hidden states of a trained ``SDTTransformer2DModel``.

        The backbone is the denoiser's patch embedding, positions and blocks ``0..layer`` with the
        adaLN conditioning fixed to ``timestep`` and the null label (computed once, stored as a buffer),
        so ``forward_features(image)`` equals the denoiser's hidden states after block ``layer`` for
        ``denoiser(image, timestep, null_label)``: the image is fed as the clean sample, no noise added.

        Pixel-space denoisers take the image in [-1, 1] (the image processor's mean and std are 0.5).
        A latent denoiser needs its ``AutoencoderKL``: found in the pipeline folder's ``vae``
        subfolder or passed as ``vae``; the image is encoded to ``latent_dist.mean * scaling_factor``
        (the VAE's encoder is kept, frozen, inside the classifier, so it saves and loads with it).

        Args:
            denoiser: an ``SDTPipeline`` folder (``model_index.json``, subfolder ``transformer``), an
                ``SDTTransformer2DModel`` folder, a loaded pipeline or a loaded ``SDTTransformer2DModel``.
            timestep: the diffusion step of the fixed conditioning.
            layer: the block whose output is the feature (0-based, negative counts from the end;
                None: the last block). Later blocks are dropped.
            pool: token pooling, ``"mean"``.
            freeze: True for a linear probe (only the pooler's LayerNorm and the classifier train),
                False to fine-tune the backbone too.
            vae: the VAE of a latent denoiser (overrides one found in the folder).
            **config_overrides: any ``SDTConfig`` key, e.g. ``num_labels`` or ``id2label``
                (default: the pipeline's ``id2label`` if saved, else the denoiser's ``num_classes``).
        """
        transformer, found_vae, found_id2label = load_denoiser(denoiser)
        vae = vae if vae is not None else found_vae
        denoiser_config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
        depth = denoiser_config["depth"]
        if layer is None:
            layer = depth - 1
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is out of range for a denoiser with {depth} blocks")
        layer = layer % depth
        if float(timestep) < 0:
            raise ValueError(f"timestep must be non-negative, got {timestep}")

        channels, factor, vae_config, scaling = denoiser_config["in_channels"], 1, None, None
        if vae is not None:
            from diffusers import AutoencoderKL

            if not isinstance(vae, AutoencoderKL):
                raise TypeError(f"only an AutoencoderKL VAE is supported, got {type(vae).__name__}")
            if vae.config.latent_channels != channels:
                raise ValueError(
                    f"the VAE has {vae.config.latent_channels} latent channels but the denoiser takes {channels}"
                )
            vae_config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
            scaling = float(vae.config.scaling_factor)
            channels = vae.config.in_channels
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
        height, width = transformer.sample_hw
        image_size = height * factor if height == width else [height * factor, width * factor]

        labels: dict[str, Any] = {}
        if "id2label" not in config_overrides and "num_labels" not in config_overrides:
            if found_id2label:
                labels["id2label"] = {int(k): v for k, v in found_id2label.items()}
            else:
                labels["num_labels"] = denoiser_config["num_classes"]
        config = SDTConfig(
            architecture="isotropic",
            image_size=image_size,
            num_channels=channels,
            patch_size=denoiser_config["patch_size"],
            hidden_size=denoiser_config["hidden_size"],
            depth=layer + 1,
            num_heads=denoiser_config["num_heads"],
            mlp_ratio=denoiser_config["mlp_ratio"],
            decay_mode=denoiser_config["decay_mode"],
            decay_layout=denoiser_config["decay_layout"],
            decay_init=denoiser_config["decay_init"],
            attention_backend=denoiser_config["attention_backend"],
            initial_value=denoiser_config["initial_value"],
            heads_range=denoiser_config["heads_range"],
            pool=pool,
            denoiser_config=denoiser_config,
            denoiser_timestep=timestep,
            denoiser_layer=layer,
            denoiser_label=denoiser_config["num_classes"],  # the null class
            freeze_backbone=freeze,
            vae_config=vae_config,
            vae_scaling_factor=scaling,
            image_mean=[0.5] * channels,
            image_std=[0.5] * channels,
            **{**labels, **config_overrides},
        )
        model = cls(config)
        model.sdt.load_denoiser_weights(transformer, vae)
        return model.to(transformer.x_embedder.proj.weight.device)


#################################################################################
#                           Denoisers, processors, I/O                          #
#################################################################################

def load_denoiser(source: Any) -> tuple[SDTTransformer2DModel, nn.Module | None, dict | None]:
    """``(transformer, vae or None, id2label or None)`` from a pipeline/transformer folder or object."""
    if isinstance(source, SDTTransformer2DModel):
        return source, None, None
    if isinstance(getattr(source, "transformer", None), SDTTransformer2DModel):  # a loaded pipeline
        config = getattr(source, "config", None) or {}
        id2label = getattr(source, "id2label", None) or config.get("id2label")
        return source.transformer, getattr(source, "vae", None), id2label
    if not isinstance(source, (str, Path)):
        raise TypeError(
            f"expected an SDTPipeline or SDTTransformer2DModel (or a folder of one), got {type(source).__name__}"
        )
    path = Path(source)
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text())
        if not (path / "transformer" / "config.json").is_file():
            raise FileNotFoundError(f"pipeline folder {path} has no transformer/config.json")
        transformer = SDTTransformer2DModel.from_pretrained(path, subfolder="transformer")
        vae = None
        if (path / "vae" / "config.json").is_file():
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        return transformer, vae, index.get("id2label")
    if (path / "config.json").is_file():
        return SDTTransformer2DModel.from_pretrained(path), None, None
    raise FileNotFoundError(
        f"{path} is neither an SDTPipeline folder (model_index.json and a transformer subfolder) "
        "nor an SDTTransformer2DModel folder (config.json)"
    )


def default_normalization(config: SDTConfig) -> tuple[list[float], list[float]]:
    """The image mean and std the model expects (per model channel)."""
    if config.image_mean is not None and config.image_std is not None:
        return list(config.image_mean), list(config.image_std)
    if config.is_denoiser_probe or config.num_channels != 3:
        return [0.5] * config.num_channels, [0.5] * config.num_channels  # images in [-1, 1]
    return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


def image_processor_for(config: SDTConfig, crop_pct: float | None = None) -> "BitImageProcessor":  # noqa: F821
    """A transformers image processor for an SDT classifier: RGB, resize, centre crop, normalise.

    Resizes the shorter side to ``image_size / crop_pct`` (bicubic), centre-crops ``image_size`` and
    normalises with the config's mean and std (see ``default_normalization``). A 1-channel model gets
    its grey mean/std repeated over RGB: it averages the three identical channels back to one.

    Args:
        config: the classifier's config.
        crop_pct: crop fraction; None: 0.875 (ImageNet evaluation) for 3-channel models trained from
            scratch, 1.0 (ADM's centre crop) for denoiser probes and 1-channel models.
    """
    from transformers import BitImageProcessor  # imports torchvision: only when asked for

    if config.num_channels not in (1, 3):
        raise ValueError(f"no RGB image processor fits a {config.num_channels}-channel model")
    if crop_pct is None:
        crop_pct = 1.0 if (config.is_denoiser_probe or config.num_channels == 1) else 0.875
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    mean, std = default_normalization(config)
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    height, width = config.image_hw
    return BitImageProcessor(
        size={"shortest_edge": int(round(max(height, width) / crop_pct))},
        crop_size={"height": height, "width": width},
        image_mean=mean,
        image_std=std,
    )


def save_classifier(
    model: SDTForImageClassification,
    path: str | Path,
    image_processor: Any | None = None,
    crop_pct: float | None = None,
) -> Path:
    """Save ``model`` and its image processor in one folder, ready for
    ``pipeline("image-classification", model=path)`` (after ``import sdt_gen``).

    Args:
        model: the classifier.
        path: output folder.
        image_processor: a processor to save instead of ``image_processor_for(model.config, crop_pct)``.
        crop_pct: see ``image_processor_for``.
    """
    path = Path(path)
    model.save_pretrained(path)
    (image_processor or image_processor_for(model.config, crop_pct)).save_pretrained(path)
    return path


#################################################################################
#                           Initialisation helpers                              #
#################################################################################

def _init_decay(attn: SpatialDecayAttention) -> None:
    """RMT gammas (a non-persistent buffer shared with the gate) and the CAG's start values."""
    gammas = rmt_gammas(attn.num_heads, attn.initial_value, attn.heads_range)
    if attn.gammas.is_meta:  # left on meta by a checkpoint load
        attn.gammas = torch.empty_like(gammas)
    init.copy_(attn.gammas, gammas.to(attn.gammas.device))
    gate = attn.gate
    if gate is not None:
        gate.gammas = attn.gammas  # one tensor, as SpatialDecayAttention builds it (a load may have split them)
        init.zeros_(gate.proj.weight)
        init.copy_(gate.proj.bias, torch.logit(gammas.double()).float().to(gate.proj.bias.device))
        init.constant_(gate.alpha, 1.0 if gate.decay_init == "rmt" else 0.0)


#################################################################################
#                                 Registration                                  #
#################################################################################

def register_auto_classes() -> None:
    """Register model type ``"sdt"`` with transformers' auto classes (done on ``import sdt_gen``)."""
    AutoConfig.register("sdt", SDTConfig, exist_ok=True)
    AutoModel.register(SDTConfig, SDTModel, exist_ok=True)
    AutoModelForImageClassification.register(SDTConfig, SDTForImageClassification, exist_ok=True)


register_auto_classes()

__all__ = [
    "SDT_CLASSIFIER_PRESETS",
    "SDTConfig",
    "SDTForImageClassification",
    "SDTModel",
    "SDTPreTrainedModel",
    "default_normalization",
    "image_processor_for",
    "load_denoiser",
    "register_auto_classes",
    "save_classifier",
]
