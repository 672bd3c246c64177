"""The samplers of SDT pipelines: diffusers schedulers by short name, and the one each model is exported with."""

from __future__ import annotations

from collections.abc import Mapping

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdt_gen.diffusion import SAMPLING_TIMESTEP_SPACING, ObjectiveRules, make_scheduler, objective_of

SCHEDULERS = {
    "ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler,  # DDPM-trained models
    "euler": FlowMatchEulerDiscreteScheduler, "heun": FlowMatchHeunDiscreteScheduler,  # flow-trained models
}
"""Short scheduler names used by ``sample.py`` and ``scheduler_by_name``."""
# Schedulers that integrate a velocity field (a ``"flow"`` model's output) rather than denoise.
FLOW_SCHEDULERS = (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)


#################################################################################
#                                   Schedulers                                  #
#################################################################################

def dit_scheduler(learn_sigma: bool = True) -> DDPMScheduler:
    """DiT's sampler as a diffusers scheduler: 1000 linear betas in 1e-4..0.02, ancestral DDPM.

    With ``learn_sigma`` the model's variance channels are used (``"learned_range"``, DiT's
    default); ``timestep_spacing="linspace"`` reproduces DiT's respacing of 1000 steps to 250. The schedule
    is training's (``sdt_gen.diffusion.make_scheduler``), so the two cannot disagree.
    """
    return make_scheduler(learn_sigma=learn_sigma, timestep_spacing=SAMPLING_TIMESTEP_SPACING)


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The sampler of flow models: diffusers' Euler over 1000 train timesteps, no shift (SiT's ODE)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def default_scheduler(transformer_config: Mapping) -> SchedulerMixin:
    """The scheduler a pipeline is exported with, its objective's ``exported_scheduler``: DiT's for DDPM models
    (``dit_scheduler``, with the model's variance), ``flow_scheduler()`` for flow models."""
    name = objective_of(transformer_config).exported_scheduler
    if name == "ddpm":
        return dit_scheduler(transformer_config["learn_sigma"])
    if name == "euler":
        return flow_scheduler()
    return scheduler_by_name(name)


def scheduler_names(transformer_config: Mapping) -> list[str]:
    """The names of ``SCHEDULERS`` that can sample a model of this config (its objective's ``samplers``)."""
    return list(objective_of(transformer_config).samplers)


def samples_velocity(rules: ObjectiveRules) -> bool:
    """Whether the models of an objective are sampled by flow-matching schedulers (they predict a velocity)."""
    return issubclass(SCHEDULERS[rules.default_sampler], FLOW_SCHEDULERS)


def scheduler_by_name(name: str, config: Mapping | None = None) -> SchedulerMixin:
    """A scheduler of ``SCHEDULERS`` (``"ddpm"``, ``"ddim"``, ``"dpm"`` for DDPM models; ``"euler"``,
    ``"heun"`` for flow models), built from ``config`` if given."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    return cls.from_config(config) if config is not None else cls()


def chosen_scheduler(current: SchedulerMixin, name: str | None = None, flow_shift: float | None = None) -> SchedulerMixin:
    """The sampler a command line asks for: ``current`` (a pipeline's), or ``SCHEDULERS[name]`` built from its
    config, with a flow scheduler's time shift (diffusers' ``shift``: ``sigma' = s sigma / (1 + (s - 1) sigma)``,
    more steps at high noise for ``s > 1``) if ``flow_shift`` is given."""
    scheduler = scheduler_by_name(name, current.config) if name is not None else current
    if flow_shift is None:
        return scheduler
    if not isinstance(scheduler, FLOW_SCHEDULERS):
        raise ValueError(
            f"a flow shift ({flow_shift}) applies to the flow schedulers (euler, heun); this samples with "
            f"{type(scheduler).__name__}"
        )
    if flow_shift <= 0:
        raise ValueError(f"the flow shift must be positive, got {flow_shift}")
    return type(scheduler).from_config(scheduler.config, shift=flow_shift)


__all__ = [
    "FLOW_SCHEDULERS",
    "chosen_scheduler",
    "SCHEDULERS",
    "default_scheduler",
    "dit_scheduler",
    "flow_scheduler",
    "samples_velocity",
    "scheduler_by_name",
    "scheduler_names",
]
