"""Exponential moving average of the weights, on diffusers' ``EMAModel``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers.training_utils import EMAModel

from .fsdp import full_parameters


class DiTEMA(EMAModel):
    """``EMAModel`` with DiT's schedule: the average starts as a copy of the weights and every update
    uses the constant ``decay``. (diffusers' own schedule ramps the decay up as ``(1 + s) / (10 + s)``;
    pass ``warmup=True`` to keep it, which suits runs of only a few thousand steps.)

    Args:
        parameters: the model parameters to track.
        decay: the EMA decay (DiT: 0.9999).
        warmup: use diffusers' ramp instead of the constant decay.
        **kwargs: passed to ``EMAModel`` (``model_cls``, ``model_config``, ...).
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float = 0.9999, warmup: bool = False, **kwargs):
        super().__init__(parameters, decay=decay, **kwargs)
        self.warmup = warmup

    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        # Under FSDP2 the parameters are DTensor shards: the average is of the full weights, which checkpoints and
        # exports read. Gathering them is a collective, and every process steps the EMA.
        super().step(full_parameters(parameters))

    def get_decay(self, optimization_step: int) -> float:
        if self.warmup:
            return super().get_decay(optimization_step)
        return self.decay
