"""Weight mapping from DiT checkpoints to ``SDTTransformer2DModel``.

Two sources hold DiT weights:

- **DiT's original checkpoints**: ``DiT-XL-2-256x256.pt`` (a state dict of EMA weights) or a DiT
  ``train.py`` checkpoint (``{"model", "ema", "opt", "args"}``), in DiT's key layout
  (``x_embedder.proj``, ``t_embedder.mlp.0``, ``blocks.N.mlp.fc1``, ...).
- **diffusers' ``DiTTransformer2DModel``** (e.g. ``facebook/DiT-XL-2-256``), converted from the former.
  Its timestep features use a frequency shift of 1 where DiT's use 0, and its MLP LayerNorm an
  epsilon of 1e-5 where DiT's uses 1e-6: ``timestep_convention`` picks which function to reproduce.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ..layers import sincos_2d

_EMBEDDER_PREFIX = "norm1.emb."

TIMESTEP_CONVENTIONS = {
    # DiT's own settings: the function its checkpoints were trained as.
    "original": dict(timestep_freq_shift=0.0, mlp_norm_eps=1e-6),
    # diffusers' DiTTransformer2DModel: sinusoidal features with downscale_freq_shift=1, MLP LayerNorm eps 1e-5.
    "diffusers": dict(timestep_freq_shift=1.0, mlp_norm_eps=1e-5),
}

# Attention heads of DiT's four widths (S, B, L, XL): no tensor shape holds the head count.
DIT_NUM_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}

CHECKPOINT_WEIGHTS = ("ema", "model")


#################################################################################
#                               diffusers' DiT                                  #
#################################################################################

def sdt_config_from_dit(dit_config: Mapping, timestep_convention: str = "diffusers") -> dict:
    """SDT config keys that reproduce a diffusers DiT config under ``timestep_convention``."""
    if dit_config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise ValueError(f"only adaLN-Zero DiT models can be converted, got norm_type={dit_config['norm_type']!r}")
    heads, head_dim = dit_config["num_attention_heads"], dit_config["attention_head_dim"]
    in_channels = dit_config["in_channels"]
    out_channels = dit_config.get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"DiT out_channels {out_channels} is neither in_channels nor 2 * in_channels ({in_channels})")
    convention = timestep_settings(timestep_convention)
    if timestep_convention == "diffusers":
        convention["mlp_norm_eps"] = dit_config.get("norm_eps", convention["mlp_norm_eps"])
    return dict(
        sample_size=dit_config["sample_size"],
        patch_size=dit_config["patch_size"],
        in_channels=in_channels,
        hidden_size=heads * head_dim,
        depth=dit_config["num_layers"],
        num_heads=heads,
        num_classes=dit_config["num_embeds_ada_norm"],
        learn_sigma=out_channels == 2 * in_channels,
        **convention,
    )


def timestep_settings(name: str) -> dict:
    """The SDT config keys of ``TIMESTEP_CONVENTIONS[name]``."""
    if name not in TIMESTEP_CONVENTIONS:
        raise ValueError(f"unknown timestep_convention {name!r}; expected one of {', '.join(TIMESTEP_CONVENTIONS)}")
    return dict(TIMESTEP_CONVENTIONS[name])


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


#################################################################################
#                            DiT's original checkpoints                         #
#################################################################################

def load_dit_checkpoint(path: str | os.PathLike, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The weights of an original DiT checkpoint file, loaded without running any pickled code.

    ``.pt`` / ``.pth`` files go through ``torch.load(..., weights_only=True)`` (a ``train.py``
    checkpoint's ``args`` namespace is the one non-tensor object allowed); ``.safetensors`` files
    through safetensors.

    Args:
        path: ``DiT-XL-2-256x256.pt``, a ``train.py`` checkpoint, or a ``.safetensors`` state dict.
        weights: which weights of a ``train.py`` checkpoint: ``"ema"`` (DiT samples with these) or ``"model"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"DiT checkpoint {str(path)!r} does not exist; download one of DiT's checkpoints (e.g. "
            "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt) or pass a train.py checkpoint"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return select_dit_weights(load_file(path), weights)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors, which only an unsafe "
            f"unpickling could build (torch.load(weights_only=True) said: {str(error).splitlines()[0]})"
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(checkpoint).__name__}; expected a DiT state dict")
    return select_dit_weights(checkpoint, weights)


def select_dit_weights(checkpoint: Mapping, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The state dict in ``checkpoint``: itself, or its ``weights`` entry for a ``train.py`` checkpoint."""
    if weights not in CHECKPOINT_WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; expected one of {', '.join(CHECKPOINT_WEIGHTS)}")
    if any(key in checkpoint for key in CHECKPOINT_WEIGHTS):  # DiT train.py: {"model", "ema", "opt", "args"}
        if weights not in checkpoint:
            raise ValueError(f"the checkpoint has no {weights!r} weights; it holds {', '.join(map(str, checkpoint))}")
        checkpoint = checkpoint[weights]
    return dict(checkpoint)


def _count_blocks(state: Mapping[str, torch.Tensor]) -> int:
    indices = {int(key.split(".")[1]) for key in state if key.startswith("blocks.") and key.split(".")[1].isdigit()}
    if indices != set(range(len(indices))):
        raise ValueError(f"DiT checkpoint blocks are not numbered 0..N-1: found {sorted(indices)}")
    return len(indices)


def original_dit_keys(depth: int) -> dict[str, str]:
    """DiT's original parameter names and their SDT names (``pos_embed``, DiT's fixed table, is not one)."""
    keys = {
        "x_embedder.proj.weight": "x_embedder.proj.weight",
        "x_embedder.proj.bias": "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight": "t_embedder.linear_1.weight",
        "t_embedder.mlp.0.bias": "t_embedder.linear_1.bias",
        "t_embedder.mlp.2.weight": "t_embedder.linear_2.weight",
        "t_embedder.mlp.2.bias": "t_embedder.linear_2.bias",
        "y_embedder.embedding_table.weight": "y_embedder.embedding_table.weight",
    }
    for i in range(depth):
        for src, dst in (("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"), ("mlp.fc1", "mlp.0"),
                         ("mlp.fc2", "mlp.2"), ("adaLN_modulation.1", "adaLN_modulation.1")):
            for kind in ("weight", "bias"):
                keys[f"blocks.{i}.{src}.{kind}"] = f"blocks.{i}.{dst}.{kind}"
    for name in ("linear", "adaLN_modulation.1"):
        for kind in ("weight", "bias"):
            keys[f"final_layer.{name}.{kind}"] = f"final_layer.{name}.{kind}"
    return keys


def sdt_config_from_original_dit(state: Mapping[str, torch.Tensor], **overrides) -> dict:
    """The SDT config of an original DiT state dict: shape read from the tensors, DiT's own settings.

    Args:
        state: DiT's parameters in its original key layout.
        **overrides: other config keys (decay settings, ...). Keys the tensors determine must agree
            with them; ``num_heads`` is required unless the width is one of DiT's (384, 768, 1024, 1152).
    """
    for key in ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight", "pos_embed"):
        if key not in state:
            first = next(iter(state), None)
            raise ValueError(
                f"not an original DiT checkpoint: key {key!r} is missing (expected DiT's layout: x_embedder.proj, "
                f"t_embedder.mlp.0/2, y_embedder.embedding_table, pos_embed, blocks.N.attn.qkv, ...; "
                f"the first key found is {first!r})"
            )
    hidden_size, in_channels, patch_size, _ = state["x_embedder.proj.weight"].shape
    num_tokens = state["pos_embed"].shape[-2]
    grid = math.isqrt(num_tokens)
    if grid * grid != num_tokens:
        raise ValueError(f"DiT pos_embed holds {num_tokens} positions, not a square grid")
    out_channels = state["final_layer.linear.weight"].shape[0] // (patch_size * patch_size)
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"DiT final layer predicts {out_channels} channels for {in_channels} input channels")
    depth = _count_blocks(state)
    inferred = dict(
        sample_size=grid * patch_size,
        patch_size=patch_size,
        in_channels=in_channels,
        hidden_size=hidden_size,
        depth=depth,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / hidden_size if depth else 4.0,
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,  # the last row is the null class
        learn_sigma=out_channels == 2 * in_channels,
    )
    for key, value in inferred.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(f"{key}={overrides[key]!r} does not match the DiT checkpoint, whose tensors give {value!r}")
    if "num_heads" not in overrides and hidden_size not in DIT_NUM_HEADS:
        raise ValueError(
            f"a DiT of width {hidden_size} is not one of DiT's presets ({', '.join(map(str, DIT_NUM_HEADS))}): "
            "pass --num-heads to sdt_gen.convert (num_heads= in Python), which no tensor shape holds"
        )
    return {**inferred, "num_heads": DIT_NUM_HEADS.get(hidden_size), **TIMESTEP_CONVENTIONS["original"], **overrides}


def convert_original_dit_state_dict(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """Rename an original DiT state dict into SDT's layout, checking every key and shape on the way.

    Args:
        state: DiT's parameters (``pos_embed`` included, as DiT saves it).
        config: the SDT config it converts to (``sdt_config_from_original_dit``).
    """
    keys = original_dit_keys(config["depth"])
    unexpected = [key for key in state if key not in keys and key != "pos_embed"]
    missing = [key for key in keys if key not in state]
    if missing or unexpected:
        what = f"key {missing[0]!r} is missing" if missing else f"key {unexpected[0]!r} is not one of DiT's"
        raise ValueError(f"not an original DiT checkpoint of depth {config['depth']}: {what}")
    grid = config["sample_size"] // config["patch_size"]
    expected_pos = sincos_2d(config["hidden_size"], grid, grid)
    pos = state["pos_embed"].reshape(-1, config["hidden_size"]).float()
    if pos.shape != expected_pos.shape or not torch.allclose(pos, expected_pos, atol=1e-5):
        raise ValueError("the checkpoint's pos_embed is not DiT's 2D sin-cos table; SDT cannot reproduce it")
    return {dst: state[src] for src, dst in keys.items()}


__all__ = [
    "DIT_NUM_HEADS",
    "TIMESTEP_CONVENTIONS",
    "convert_dit_state_dict",
    "convert_original_dit_state_dict",
    "load_dit_checkpoint",
    "original_dit_keys",
    "sdt_config_from_dit",
    "sdt_config_from_original_dit",
    "select_dit_weights",
    "timestep_settings",
]
