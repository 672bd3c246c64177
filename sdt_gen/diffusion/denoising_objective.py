"""``DenoisingObjective``: what every training loss of a denoiser is, so a training loop needs no branch on it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch


class DenoisingObjective(ABC):
    """A training loss of a denoiser (``DiffusionLoss``, ``FlowMatchingLoss``).

    Subclasses say how training draws timesteps (``sample_timesteps``), what the model sees at ``t`` and
    must predict (``noised``) and how a prediction is scored (``losses``); calling one runs the model.
    """

    name: str
    num_timesteps: int

    @abstractmethod
    def sample_timesteps(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training timesteps as the model sees them, ``(batch_size,)`` in ``[0, num_timesteps)``."""

    @abstractmethod
    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input at ``t`` and the target the model is trained to predict there."""

    @abstractmethod
    def losses(
        self, output: torch.Tensor, target: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses ``(N,)`` of the model ``output`` at ``xt``: ``"loss"``, ``"mse"`` and any others."""

    def __call__(
        self,
        model_fn: Callable[..., Any],
        x0: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample training losses of clean data ``x0`` at timesteps ``t``.

        Args:
            model_fn: called as ``model_fn(x_t, t, **model_kwargs)``; returns the prediction as a tensor, or a
                tuple / diffusers output whose first entry is that tensor.
            x0: ``(N, C, H, W)`` clean latents or pixels.
            t: ``(N,)`` timesteps (``sample_timesteps``).
            model_kwargs: extra model arguments, e.g. ``{"class_labels": y}``.
            noise: the noise end of the path; ``randn_like(x0)`` when omitted.

        Returns:
            dict of ``(N,)`` tensors: ``"loss"`` (what to average and backpropagate), ``"mse"``, and what
            else the objective reports (DDPM with a learned variance: ``"vb"``).
        """
        if t.shape != (x0.shape[0],):
            raise ValueError(f"t must have shape ({x0.shape[0]},) to match x0, got {tuple(t.shape)}")
        if noise is None:
            noise = torch.randn_like(x0)
        xt, target = self.noised(x0, t, noise)  # (N, C, H, W) each
        output = model_fn(xt, t, **(model_kwargs or {}))
        if not isinstance(output, torch.Tensor):
            output = output[0]  # a tuple or a diffusers BaseOutput: both index their first field with [0]
        return self.losses(output, target, x0, xt, t)


__all__ = ["DenoisingObjective"]
