"""The vocabulary of SDT models: spatial decay, attention, embeddings, rotary positions. Depends on torch only."""

from .attention import (
    ATTENTION_BACKENDS,
    SpatialDecayAttention,
    attention_backends_in_use,
    attention_weights,
    check_backend_trains,
    recording_attentions,
    resolve_backend,
    set_attention_backend,
    spatial_decay_attention,
)
from .blockwise_attention import blockwise_decay_attention
from .decay_config import DecayConfig
from .drop import DropPath, drop_path
from .embeddings import LabelEmbedding, PatchEmbed, sincos_1d, sincos_2d
from .rotary import POSITION_EMBEDDINGS, apply_rope, position_tables, rope_rotation
from .spatial_decay import (
    DECAY_INITS,
    DECAY_LAYOUTS,
    DECAY_MODES,
    ContextAwareGate,
    check_choice,
    decay_bias,
    decay_map,
    fixed_rates,
    grid_coordinates,
    manhattan_distance,
    rmt_gammas,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "DECAY_INITS",
    "DECAY_LAYOUTS",
    "DECAY_MODES",
    "POSITION_EMBEDDINGS",
    "ContextAwareGate",
    "DecayConfig",
    "DropPath",
    "LabelEmbedding",
    "PatchEmbed",
    "SpatialDecayAttention",
    "apply_rope",
    "attention_backends_in_use",
    "check_backend_trains",
    "attention_weights",
    "blockwise_decay_attention",
    "check_choice",
    "decay_bias",
    "decay_map",
    "drop_path",
    "fixed_rates",
    "grid_coordinates",
    "manhattan_distance",
    "position_tables",
    "recording_attentions",
    "resolve_backend",
    "rmt_gammas",
    "rope_rotation",
    "set_attention_backend",
    "sincos_1d",
    "sincos_2d",
    "spatial_decay_attention",
]
