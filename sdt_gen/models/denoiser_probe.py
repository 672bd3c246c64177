"""Linear probes of a trained denoiser: ``SDTForImageClassification.from_denoiser``'s parts.

A probe is an isotropic SDT classifier (``modeling_sdt_vit``) whose encoder (``SDTProbeEncoder``) is a
trained ``SDTTransformer2DModel``'s patch embedding, positions and first blocks, those blocks being the
denoiser's own adaLN blocks (``SDTProbeBlock``) with the conditioning fixed to one timestep and the
null label, so that its features are exactly the denoiser's hidden states. A latent denoiser's probe
keeps its VAE's encoder, frozen, in front. Here: loading the denoiser and its VAE (``load_denoiser``),
the probe's config (``probe_config``) and its encoder, which copies the denoiser's weights
(``SDTProbeEncoder.load_denoiser_weights``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import initialization as init  # skips tensors already loaded from a checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from ..data.vae import vae_downsampling
from ..layers import DecayConfig
from .configuration_sdt import SDTConfig
from .modeling_sdt_vit import SDTPatchEncoder
from .transformer_sdt import SDTBlock, SDTTransformer2DModel


class SDTProbeBlock(SDTBlock, GradientCheckpointingLayer):
    """The denoiser's adaLN block (``SDTBlock``) as a transformers ``GradientCheckpointingLayer``.

    Same modules and forward as ``SDTBlock``, so a denoiser's block state dict loads into it unchanged;
    only transformers' checkpointing switch is added.
    """


#################################################################################
#                                Loading a denoiser                             #
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


def probe_config(
    transformer: SDTTransformer2DModel,
    vae: nn.Module | None,
    id2label: dict | None,
    timestep: int | float,
    layer: int | None,
    pool: str,
    freeze: bool,
    config_overrides: dict[str, Any],
) -> SDTConfig:
    """The ``SDTConfig`` of a probe of ``transformer`` (with its ``vae`` and saved ``id2label``, if any).

    The other arguments are ``SDTForImageClassification.from_denoiser``'s (see there).
    """
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
        factor = vae_downsampling(vae)
    height, width = transformer.sample_hw
    image_size = height * factor if height == width else [height * factor, width * factor]

    labels: dict[str, Any] = {}
    if "id2label" not in config_overrides and "num_labels" not in config_overrides:
        if id2label:
            labels["id2label"] = {int(k): v for k, v in id2label.items()}
        else:
            labels["num_labels"] = denoiser_config["num_classes"]
    return SDTConfig(
        architecture="isotropic",
        image_size=image_size,
        num_channels=channels,
        patch_size=denoiser_config["patch_size"],
        hidden_size=denoiser_config["hidden_size"],
        depth=layer + 1,
        num_heads=denoiser_config["num_heads"],
        mlp_ratio=denoiser_config["mlp_ratio"],
        **DecayConfig.from_config(denoiser_config).config_keys(),
        position_embedding=denoiser_config["position_embedding"],
        rope_base=denoiser_config["rope_base"],
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


#################################################################################
#                                 The probe's encoder                           #
#################################################################################

class SDTProbeEncoder(SDTPatchEncoder):
    """A denoiser probe's encoder: the denoiser's patch embedding, positions and first blocks with the adaLN
    conditioning fixed, so its tokens ``(B, N, D)`` are the denoiser's hidden states, not normalised; for a latent
    denoiser its VAE's encoder (frozen) in front. Random until ``load_denoiser_weights``.

    Args:
        config: a probe's ``SDTConfig`` (``probe_config``: ``denoiser_config`` set); read besides
            ``SDTPatchEncoder``'s keys: ``num_channels``, ``depth`` (blocks kept), ``mlp_ratio``, the decay,
            ``vae_config``, ``denoiser_timestep`` and ``denoiser_label``.

    Attributes:
        num_features: the width of the output tokens.
        head_hidden_size: the pooler's projection width (0: none).
        fc_norm: whether the pooler normalises after pooling (yes: the denoiser's hidden states are not).
        conditioning: the denoiser's adaLN input ``t_emb(timestep) + y_emb(null label)`` ``(1, D)``, a saved buffer.
    """

    head_hidden_size = 0
    fc_norm = True

    def __init__(self, config: SDTConfig):
        denoiser = config.denoiser_config
        in_channels = denoiser["in_channels"]
        vae = None
        if config.vae_config:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_config(config.vae_config)
            vae.decoder = vae.post_quant_conv = None  # only the encoder is used (and saved)
        elif in_channels != config.num_channels:
            raise ValueError(
                f"the denoiser takes {in_channels}-channel samples but num_channels is {config.num_channels}; "
                "a latent denoiser needs its VAE (vae_config)"
            )
        super().__init__(config, in_channels, vae)
        self.blocks = nn.ModuleList(
            SDTProbeBlock(
                config.hidden_size,
                config.num_heads,
                config.mlp_ratio,
                mlp_norm_eps=denoiser.get("mlp_norm_eps", 1e-6),
                decay=config.decay,
            )
            for _ in range(config.depth)
        )
        self.register_buffer("conditioning", torch.zeros(1, config.hidden_size))  # load_denoiser_weights sets it
        self.num_features = config.hidden_size

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Rebuild the position tables and zero the conditioning unless a checkpoint gave it."""
        super().init_buffers()
        init.zeros_(self.conditioning)

    @torch.no_grad()
    def load_denoiser_weights(self, denoiser: SDTTransformer2DModel, vae: nn.Module | None = None) -> None:
        """Copy a denoiser's patch embedding and first ``depth`` blocks, and fix its conditioning.

        The conditioning is ``denoiser.conditioning(denoiser_timestep, denoiser_label)``, computed in
        eval mode (no label dropout) and kept as the ``conditioning`` buffer.
        """
        config = self.config
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

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Pixels to the denoiser's hidden states after block ``denoiser_layer`` ``(B, N, D)`` and, with
        ``output_hidden_states``, the tokens after the embedding and after every block."""
        x, grid_size, rope = self.embed(pixel_values)  # (B, N, D)
        hidden_states = [x] if output_hidden_states else None
        c = self.conditioning.expand(x.shape[0], -1)  # (B, D)
        for block in self.blocks:
            x = block(x, c, grid_size, rope)  # (B, N, D)
            if hidden_states is not None:
                hidden_states.append(x)
        return x, (tuple(hidden_states) if hidden_states is not None else None)
