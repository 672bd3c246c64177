"""The training objectives by name, and the held-out loss that works for either."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .flow_matching import FlowMatchingLoss
from .gaussian_diffusion import DiffusionLoss, make_scheduler

OBJECTIVES = ("ddpm", "flow")


def make_objective(
    objective: str = "ddpm", learn_sigma: bool = True, snr_gamma: float | None = None, time_sampling: str = "uniform"
) -> DiffusionLoss | FlowMatchingLoss:
    """The loss a model of ``objective`` trains with; both share one interface (``sample_timesteps``,
    ``noised``, ``__call__``), so a training loop needs no branch on it.

    Args:
        objective: ``"ddpm"`` (DiT: noise prediction, hybrid VLB with ``learn_sigma``) or ``"flow"``
            (SiT: velocity on the linear path; the model must not learn a variance).
        learn_sigma: the DDPM model also predicts the variance.
        snr_gamma: DDPM only: Min-SNR-gamma weighting of the noise MSE.
        time_sampling: flow only: ``"uniform"`` or ``"logit_normal"``.
    """
    if objective == "ddpm":
        if time_sampling != "uniform":
            raise ValueError(f"time_sampling={time_sampling!r} is for the flow objective; DDPM samples t uniformly")
        return DiffusionLoss(make_scheduler(learn_sigma=learn_sigma), learn_sigma=learn_sigma, snr_gamma=snr_gamma)
    if objective == "flow":
        if learn_sigma:
            raise ValueError("a flow model predicts a velocity and no variance: learn_sigma must be False")
        if snr_gamma is not None:
            raise ValueError("snr_gamma weights DDPM's noise MSE; the flow objective takes time_sampling instead")
        return FlowMatchingLoss(time_sampling=time_sampling)
    raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")


@torch.no_grad()
def fixed_noise_mse(
    model: torch.nn.Module,
    x0: torch.Tensor,
    class_labels: torch.Tensor,
    timesteps: Sequence[int],
    seed: int = 0,
    batch_size: int = 250,
) -> dict[int, float]:
    """The prediction MSE of ``model`` on fixed data, at fixed timesteps, with fixed noise.

    A held-out loss with little variance and no sampler: the noise of timestep ``t`` is drawn
    from ``torch.Generator().manual_seed(seed + t)`` for all of ``x0`` at once, so every model
    (and every call) sees the same noisy inputs. The model runs in eval mode (no label dropout).
    Its objective (``model.config.objective``) says what is predicted: the noise of ``x_t``
    (DDPM) or the velocity at ``s = t / 1000`` (flow).

    Args:
        model: the denoiser, called as ``model(x_t, t, class_labels)``; its first ``C`` output
            channels are the prediction.
        x0: ``(N, C, H, W)`` clean data.
        class_labels: ``(N,)`` their labels.
        timesteps: the diffusion steps to evaluate, in ``[0, 1000)``.
        seed: base seed of the noise.
        batch_size: images per model call.

    Returns:
        ``{t: mean squared error over every image and pixel}``.
    """
    objective = make_objective(model.config.get("objective", "ddpm"), learn_sigma=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {}
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + int(t)))
        squared_error = 0.0
        for start in range(0, len(x0), batch_size):
            x = x0[start : start + batch_size].to(device)
            t_batch = torch.full((len(x),), int(t), device=device, dtype=torch.long)
            xt, target = objective.noised(x, t_batch, noise[start : start + batch_size].to(device))  # (B, C, H, W)
            prediction = model(xt, t_batch, class_labels[start : start + batch_size].to(device))[0]
            squared_error += ((prediction[:, : x.shape[1]].float() - target) ** 2).sum().item()
        out[int(t)] = squared_error / x0.numel()
    model.train(was_training)
    return out


__all__ = ["OBJECTIVES", "fixed_noise_mse", "make_objective"]
