"""``DecayConfig``: every setting of the spatial decay, passed around as one object (as nanoGPT's GPTConfig).

Model configs keep these as flat, readable keys on disk (``decay_mode``, ``decay_layout``,
``decay_init``, ``initial_value``, ``heads_range``); ``DecayConfig.from_config``
reads them from any config, dict or argparse namespace, ``config_keys`` writes them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .spatial_decay import DECAY_INITS, DECAY_LAYOUTS, DECAY_MODES, check_choice

# DecayConfig field -> its flat key in model configs and on command lines.
CONFIG_KEYS = {
    "mode": "decay_mode",
    "layout": "decay_layout",
    "init": "decay_init",
    "initial_value": "initial_value",
    "heads_range": "heads_range",
}


@dataclass(frozen=True)
class DecayConfig:
    """The spatial decay of one attention layer.

    Args:
        mode: ``"none"`` (plain attention), ``"fixed"`` (RMT) or ``"cag"`` (SDT).
        layout: ``"full"`` or ``"decomposed"``.
        init: ``"rmt"`` or ``"zero"`` (``cag`` only; see ``ContextAwareGate``).
        initial_value: RMT's ``a`` of the per-head gammas.
        heads_range: RMT's ``b`` of the per-head gammas.
    """

    mode: str = "cag"
    layout: str = "full"
    init: str = "rmt"
    initial_value: float = 2.0
    heads_range: float = 6.0

    def __post_init__(self) -> None:
        check_choice("decay_mode", self.mode, DECAY_MODES)
        check_choice("decay_layout", self.layout, DECAY_LAYOUTS)
        check_choice("decay_init", self.init, DECAY_INITS)

    @classmethod
    def from_config(cls, config: Any) -> DecayConfig:
        """Read the flat keys from a model config, a dict or a namespace; a missing key keeps its default."""
        def get(key):
            return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)

        values = {field: get(key) for field, key in CONFIG_KEYS.items()}
        return cls(**{field: value for field, value in values.items() if value is not None})

    def config_keys(self) -> dict[str, Any]:
        """The flat keys, e.g. ``{"decay_mode": "cag", ...}``, for model configs."""
        return {CONFIG_KEYS[field]: value for field, value in asdict(self).items()}


__all__ = ["CONFIG_KEYS", "DecayConfig"]
