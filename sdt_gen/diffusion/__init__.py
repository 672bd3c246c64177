"""Training objectives. Depends on torch and diffusers schedulers only."""

from .flow_matching import TIME_SAMPLINGS, FlowMatchingLoss
from .gaussian_diffusion import (
    BETA_END,
    BETA_START,
    NUM_TRAIN_TIMESTEPS,
    SAMPLING_TIMESTEP_SPACING,
    DiffusionLoss,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    dit_schedule,
    float64_betas,
    make_scheduler,
    mean_flat,
    normal_kl,
    uniform_timesteps,
)
from .denoising_objective import DenoisingObjective
from .objectives import (
    OBJECTIVE_RULES,
    OBJECTIVES,
    ObjectiveRules,
    fixed_noise_mse,
    make_objective,
    objective_of,
    objective_rules,
)

__all__ = [
    "BETA_END",
    "BETA_START",
    "NUM_TRAIN_TIMESTEPS",
    "OBJECTIVES",
    "OBJECTIVE_RULES",
    "SAMPLING_TIMESTEP_SPACING",
    "TIME_SAMPLINGS",
    "DenoisingObjective",
    "DiffusionLoss",
    "FlowMatchingLoss",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "dit_schedule",
    "fixed_noise_mse",
    "float64_betas",
    "make_objective",
    "make_scheduler",
    "mean_flat",
    "normal_kl",
    "objective_of",
    "objective_rules",
    "ObjectiveRules",
    "uniform_timesteps",
]
