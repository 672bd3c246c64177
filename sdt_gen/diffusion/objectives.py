"""The training objectives: their losses by name, and one table of what each implies.

Everything that depends on the objective asks this module: the model (may it learn a variance),
training (which loss; the preview sampler), pipelines (the scheduler they are exported with, the samplers
that can sample them), the demo and the studies (their default sampler). A new objective is a loss class
and a row of ``OBJECTIVE_RULES``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .denoising_objective import DenoisingObjective
from .flow_matching import TIME_SAMPLINGS, FlowMatchingLoss
from .gaussian_diffusion import DiffusionLoss, make_scheduler


#################################################################################
#                         What each objective implies                           #
#################################################################################

@dataclass(frozen=True)
class ObjectiveRules:
    """What follows from training with one objective. Samplers are named as ``sdt_gen.pipelines.SCHEDULERS``.

    Args:
        name: the objective's name (the model config's ``objective``, ``train_dit.py --objective``).
        title: its name in messages (``"DDPM"``, ``"flow"``).
        prediction: what the model outputs, in words (``"noise"``, ``"a velocity"``).
        learned_sigma: whether its models may also predict their variance (``learn_sigma``).
        time_samplings: the ways training may draw timesteps (``--time-sampling``).
        samplers: every sampler that can sample its models.
        default_sampler: the few-step sampler used unless one is asked for: training's preview grids, the
            demo, the studies.
        few_step_samplers: the samplers worth comparing at few steps (``experiments/objective_comparison.py``).
        exported_scheduler: the scheduler a pipeline is saved with (``"ddpm"``: DiT's, with its respacing).
    """

    name: str
    title: str
    prediction: str
    learned_sigma: bool
    time_samplings: tuple[str, ...]
    samplers: tuple[str, ...]
    default_sampler: str
    few_step_samplers: tuple[str, ...]
    exported_scheduler: str

    def check_learn_sigma(self, learn_sigma: bool) -> None:
        """Refuse a learned variance for an objective whose models predict none."""
        if learn_sigma and not self.learned_sigma:
            raise ValueError(
                f"a {self.title} model predicts {self.prediction} and no variance: learn_sigma must be False"
            )


OBJECTIVE_RULES = {
    "ddpm": ObjectiveRules(  # DiT: noise prediction, hybrid loss with a learned variance
        name="ddpm", title="DDPM", prediction="noise", learned_sigma=True, time_samplings=("uniform",),
        samplers=("ddpm", "ddim", "dpm"), default_sampler="dpm", few_step_samplers=("dpm", "ddim"),
        exported_scheduler="ddpm",
    ),
    "flow": ObjectiveRules(  # SiT: velocity on the linear path, sampled by integrating the ODE
        name="flow", title="flow", prediction="a velocity", learned_sigma=False, time_samplings=TIME_SAMPLINGS,
        samplers=("euler", "heun"), default_sampler="euler", few_step_samplers=("euler", "heun"),
        exported_scheduler="euler",
    ),
}
OBJECTIVES = tuple(OBJECTIVE_RULES)


def objective_rules(objective: str) -> ObjectiveRules:
    """The rules of ``objective`` (``"ddpm"`` or ``"flow"``); an unknown name is refused, naming the known ones."""
    if objective not in OBJECTIVE_RULES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVE_RULES[objective]


def objective_of(config: Mapping) -> ObjectiveRules:
    """The rules of the objective a denoiser's config names (configs saved before the key existed: DDPM)."""
    return objective_rules(config.get("objective", "ddpm"))


def make_objective(
    objective: str = "ddpm", learn_sigma: bool = True, snr_gamma: float | None = None, time_sampling: str = "uniform"
) -> DenoisingObjective:
    """The loss a model of ``objective`` trains with.

    Args:
        objective: ``"ddpm"`` (DiT: noise prediction, hybrid VLB with ``learn_sigma``) or ``"flow"``
            (SiT: velocity on the linear path; the model must not learn a variance).
        learn_sigma: the DDPM model also predicts the variance.
        snr_gamma: DDPM only: Min-SNR-gamma weighting of the noise MSE.
        time_sampling: how training draws timesteps, one of the objective's ``time_samplings`` (flow:
            ``"uniform"`` or ``"logit_normal"``; DDPM: ``"uniform"``).
    """
    rules = objective_rules(objective)
    rules.check_learn_sigma(learn_sigma)
    if time_sampling not in rules.time_samplings:
        raise ValueError(
            f"time_sampling={time_sampling!r} is not one of the {rules.title} objective's: {', '.join(rules.time_samplings)}"
        )
    if objective == "ddpm":
        return DiffusionLoss(make_scheduler(learn_sigma=learn_sigma), learn_sigma=learn_sigma, snr_gamma=snr_gamma)
    if snr_gamma is not None:
        raise ValueError("snr_gamma weights DDPM's noise MSE; the flow objective takes time_sampling instead")
    return FlowMatchingLoss(time_sampling=time_sampling)


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
    objective = make_objective(objective_of(model.config).name, learn_sigma=False)
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


__all__ = [
    "OBJECTIVES",
    "OBJECTIVE_RULES",
    "DenoisingObjective",
    "ObjectiveRules",
    "fixed_noise_mse",
    "make_objective",
    "objective_of",
    "objective_rules",
]
