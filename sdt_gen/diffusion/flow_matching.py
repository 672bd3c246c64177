"""SiT's flow-matching objective: a linear path between data and noise, velocity prediction.

The convention is diffusers' (``FlowMatchEulerDiscreteScheduler``, SD3): with ``s = t / T`` in
``[0, 1]`` and ``s = 1`` pure noise,

    x_s = (1 - s) x_0 + s eps,        v = dx_s / ds = eps - x_0,

the model sees ``t = s * T`` as its timestep (so the timestep embedding of a DDPM model and of a flow
model cover the same range) and is trained with the MSE between its output and ``v``. SiT writes the
same path with time running the other way (``t = 1 - s``, ``v`` of opposite sign); the learned field is
the same up to that sign, and diffusers' schedulers integrate ours from ``s = 1`` down to ``s = 0``.
"""

from __future__ import annotations


import torch

from .denoising_objective import DenoisingObjective
from .gaussian_diffusion import NUM_TRAIN_TIMESTEPS, mean_flat

TIME_SAMPLINGS = ("uniform", "logit_normal")


class FlowMatchingLoss(DenoisingObjective):
    """Velocity-prediction MSE on the linear interpolant (SiT; rectified flow).

    A ``DenoisingObjective``, like ``DiffusionLoss``: ``sample_timesteps`` draws the training times, ``noised``
    gives the model input and its target, calling it gives per-sample losses.

    Args:
        num_timesteps: ``T``, the timestep scale the model sees (``t = s * T``); 1000 as in diffusers'
            flow-matching schedulers.
        time_sampling: ``"uniform"`` (SiT: ``s ~ U(0, 1)``) or ``"logit_normal"`` (SD3:
            ``s = sigmoid(n)``, ``n ~ N(logit_mean, logit_std^2)``, which favours the middle of the path).
        logit_mean, logit_std: the logit-normal's parameters.

    Example:
        >>> loss_fn = FlowMatchingLoss()
        >>> t = loss_fn.sample_timesteps(x0.shape[0], x0.device)
        >>> losses = loss_fn(model, x0, t, model_kwargs={"class_labels": y})
        >>> losses["loss"].mean().backward()
    """

    name = "flow"

    def __init__(
        self,
        num_timesteps: int = NUM_TRAIN_TIMESTEPS,
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ):
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {time_sampling!r}; expected one of {', '.join(TIME_SAMPLINGS)}")
        if not logit_std > 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std!r}")
        self.num_timesteps = num_timesteps
        self.time_sampling = time_sampling
        self.logit_mean, self.logit_std = logit_mean, logit_std

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training times as the model sees them, ``t = s * T``: float32 ``(batch_size,)`` in ``(0, T)``."""
        if self.time_sampling == "uniform":
            s = torch.rand(batch_size, device=device, generator=generator)
        else:
            n = torch.randn(batch_size, device=device, generator=generator)
            s = torch.sigmoid(self.logit_mean + self.logit_std * n)
        return s * self.num_timesteps

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input ``x_s = (1 - s) x_0 + s eps`` and its target ``v = eps - x_0``, ``s = t / T``."""
        s = (t.to(x0.dtype) / self.num_timesteps).reshape(-1, *([1] * (x0.dim() - 1)))  # (N, 1, ..., 1)
        return (1 - s) * x0 + s * noise, noise - x0

    def losses(
        self, output: torch.Tensor, target: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "mse"}`` (equal: no variance term), each ``(N,)``, of the predicted velocity ``output``."""
        velocity = output
        if velocity.shape != x0.shape:
            raise ValueError(
                f"model output has shape {tuple(velocity.shape)}; a flow model predicts the velocity, shaped like "
                f"its input {tuple(x0.shape)} (learn_sigma must be False)"
            )
        mse = mean_flat((velocity - target) ** 2)  # (N,)
        return {"loss": mse, "mse": mse}


__all__ = ["TIME_SAMPLINGS", "FlowMatchingLoss"]
