"""Weight mapping from diffusers' ``DiTTransformer2DModel`` to ``SDTTransformer2DModel``."""

from __future__ import annotations

from collections.abc import Mapping

import torch

_EMBEDDER_PREFIX = "norm1.emb."


def sdt_config_from_dit(dit_config: Mapping) -> dict:
    """SDT config keys that reproduce a diffusers DiT config."""
    if dit_config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise ValueError(f"only adaLN-Zero DiT models can be converted, got norm_type={dit_config['norm_type']!r}")
    heads, head_dim = dit_config["num_attention_heads"], dit_config["attention_head_dim"]
    in_channels = dit_config["in_channels"]
    out_channels = dit_config.get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"DiT out_channels {out_channels} is neither in_channels nor 2 * in_channels ({in_channels})")
    return dict(
        sample_size=dit_config["sample_size"],
        patch_size=dit_config["patch_size"],
        in_channels=in_channels,
        hidden_size=heads * head_dim,
        depth=dit_config["num_layers"],
        num_heads=heads,
        num_classes=dit_config["num_embeds_ada_norm"],
        learn_sigma=out_channels == 2 * in_channels,
        timestep_freq_shift=1.0,  # diffusers' DiT embeds timesteps with downscale_freq_shift=1
        mlp_norm_eps=dit_config.get("norm_eps", 1e-5),
    )


def _shared_embedder(state: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The timestep/label embedder that diffusers' DiT copies into every block; all copies must agree."""
    first = f"transformer_blocks.0.{_EMBEDDER_PREFIX}"
    embedder = {k[len(first):]: v for k, v in state.items() if k.startswith(first)}
    for i in range(1, depth):
        prefix = f"transformer_blocks.{i}.{_EMBEDDER_PREFIX}"
        for name, value in embedder.items():
            other = state.get(prefix + name)
            if other is None or not torch.equal(other, value):
                raise ValueError(
                    f"DiT block {i} holds a timestep/label embedder ({prefix}{name}) that differs from block 0's; "
                    "SDT shares one embedder, so this checkpoint cannot be converted exactly"
                )
    return embedder


def convert_dit_state_dict(state: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Rename and fuse a diffusers DiT state dict into SDT's layout (fused qkv, one embedder)."""
    embedder = _shared_embedder(state, depth)
    out = {
        "x_embedder.proj.weight": state["pos_embed.proj.weight"],
        "x_embedder.proj.bias": state["pos_embed.proj.bias"],
        "t_embedder.linear_1.weight": embedder["timestep_embedder.linear_1.weight"],
        "t_embedder.linear_1.bias": embedder["timestep_embedder.linear_1.bias"],
        "t_embedder.linear_2.weight": embedder["timestep_embedder.linear_2.weight"],
        "t_embedder.linear_2.bias": embedder["timestep_embedder.linear_2.bias"],
        "y_embedder.embedding_table.weight": embedder["class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.1.weight": state["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": state["proj_out_1.bias"],
        "final_layer.linear.weight": state["proj_out_2.weight"],
        "final_layer.linear.bias": state["proj_out_2.bias"],
    }
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        attn = src + "attn1."
        for kind in ("weight", "bias"):
            out[dst + f"attn.qkv.{kind}"] = torch.cat([state[attn + f"to_{n}.{kind}"] for n in "qkv"])
            out[dst + f"attn.proj.{kind}"] = state[attn + f"to_out.0.{kind}"]
            out[dst + f"adaLN_modulation.1.{kind}"] = state[src + f"norm1.linear.{kind}"]
            out[dst + f"mlp.0.{kind}"] = state[src + f"ff.net.0.proj.{kind}"]
            out[dst + f"mlp.2.{kind}"] = state[src + f"ff.net.2.{kind}"]
    return out
