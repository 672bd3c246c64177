"""DiT's training objective: epsilon prediction plus, with learned sigma, ADM's hybrid VLB term.

The noise schedule is read from a diffusers ``DDPMScheduler`` (DiT's linear betas 1e-4..0.02 over
1000 steps), so training and sampling can never disagree about it. The maths follows Ho et al. 2020
and Nichol & Dhariwal 2021 (ADM, "improved DDPM"):

- forward process ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``;
- true posterior ``q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)``;
- model ``p(x_{t-1} | x_t) = N(mu_theta, Sigma_theta)`` with ``mu_theta`` from the predicted noise
  and ``log Sigma_theta = frac * log(beta_t) + (1 - frac) * log(beta~_t)`` ("learned range");
- loss ``L = MSE(eps, eps_theta) + L_vb * T / 1000`` where ``L_vb`` sees the mean through a
  ``detach`` so it trains only the variance (ADM's ``frozen_out``; DiT's ``RESCALED_MSE``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import DDPMScheduler

from .denoising_objective import DenoisingObjective

# DiT's schedule: the one definition that training, the pipeline's sampler and the benchmarks use.
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02
# DiT respaces its 1000 steps to the sampling steps evenly, ends included (``timestep_spacing="linspace"``).
SAMPLING_TIMESTEP_SPACING = "linspace"


def dit_schedule(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> dict[str, Any]:
    """DiT's noise schedule as keyword arguments of any DDPM-family diffusers scheduler (``DDPMScheduler``,
    ``DDIMScheduler``, ...): linear betas 1e-4..0.02 over ``num_train_timesteps``, no sample clipping."""
    return dict(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="linear",
        beta_start=BETA_START,
        beta_end=BETA_END,
        # DiT samples latents, whose range is not [-1, 1]: clipping x_0 would distort them.
        clip_sample=False,
    )


def make_scheduler(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, learn_sigma: bool = True, timestep_spacing: str | None = None
) -> DDPMScheduler:
    """DiT's ``DDPMScheduler``: ``dit_schedule()``, with the variance the model asks for.

    Args:
        num_train_timesteps: number of diffusion steps ``T``.
        learn_sigma: the model predicts the variance interpolation (``variance_type="learned_range"``);
            otherwise sampling uses the fixed posterior variance (``"fixed_small"``).
        timestep_spacing: how sampling picks its steps; ``None`` keeps diffusers' default (training does
            not sample). The pipeline's sampler passes ``SAMPLING_TIMESTEP_SPACING``.
    """
    extra = {} if timestep_spacing is None else {"timestep_spacing": timestep_spacing}
    return DDPMScheduler(
        **dit_schedule(num_train_timesteps), variance_type="learned_range" if learn_sigma else "fixed_small", **extra
    )


def float64_betas(scheduler: DDPMScheduler) -> torch.Tensor:
    """The scheduler's betas in float64: recomputed from its config for a linear schedule (as DiT's
    ``np.linspace(..., dtype=np.float64)``), otherwise its float32 betas widened."""
    config = scheduler.config
    if config.beta_schedule == "linear" and config.get("trained_betas") is None:
        return torch.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=torch.float64)
    return scheduler.betas.double()


def uniform_timesteps(
    batch_size: int, num_timesteps: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """DiT's timestep sampler: ``t ~ U{0, ..., T - 1}``, one per sample.

    Args:
        batch_size: number of timesteps to draw.
        num_timesteps: ``T``, the exclusive upper bound.
        device: where the result lives.
        generator: optional RNG (must live on ``device``) for reproducible draws.

    Returns:
        int64 tensor of shape ``(batch_size,)``.
    """
    return torch.randint(0, num_timesteps, (batch_size,), device=device, generator=generator)


# --------------------------------------------------------------------------------------
#                              Gaussian log-likelihood terms
# --------------------------------------------------------------------------------------

def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch one: ``(N, ...) -> (N,)``."""
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats.

    Arguments broadcast against each other; log-variances keep the formula stable for tiny variances.
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """ADM's and DiT's approximation of the standard normal CDF: ``(1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    bin_width: float = 2.0 / 255.0,
    exact_cdf: bool = False,
) -> torch.Tensor:
    """Elementwise log-probability of data ``x`` in [-1, 1] under a Gaussian discretised into bins.

    Each value owns the bin ``[x - bin_width / 2, x + bin_width / 2]``; the two edge bins extend to
    infinity so the probabilities of the 256 pixel levels sum to one. By default the normal CDF is
    DiT's tanh approximation, so the loss equals DiT's; ``exact_cdf`` uses ``torch.special`` instead
    (the two differ by up to ~1% in the t = 0 term).

    Args:
        x: ``(N, ...)`` targets in [-1, 1] (8-bit pixel levels rescaled, or latents in DiT's recipe).
        means: Gaussian means, same shape as ``x``.
        log_scales: Gaussian log standard deviations, broadcastable to ``x``.
        bin_width: width of one pixel bin, ``2 / 255`` for 8-bit images scaled to [-1, 1].
        exact_cdf: use the exact normal CDF rather than DiT's approximation.

    Returns:
        log-probabilities in nats, same shape as ``x``.
    """
    if x.shape != means.shape:
        raise ValueError(f"x and means must have the same shape, got {tuple(x.shape)} and {tuple(means.shape)}")
    inv_stdv = torch.exp(-log_scales)
    upper = inv_stdv * (x - means + bin_width / 2)  # standardised upper bin edge
    lower = inv_stdv * (x - means - bin_width / 2)  # standardised lower bin edge
    if exact_cdf:
        log_cdf_upper = torch.special.log_ndtr(upper)  # log P(z <= upper): the lowest bin
        log_sf_lower = torch.special.log_ndtr(-lower)  # log P(z >= lower): the highest bin
        bin_mass = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    else:
        cdf_upper, cdf_lower = approx_standard_normal_cdf(upper), approx_standard_normal_cdf(lower)
        log_cdf_upper = torch.log(cdf_upper.clamp(min=1e-12))
        log_sf_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
        bin_mass = cdf_upper - cdf_lower
    # Clamp so an empty bin gives a large finite penalty instead of -inf (and NaN gradients).
    log_bin_mass = torch.log(bin_mass.clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_bin_mass))


def _extract(schedule: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``schedule[t]`` of shape ``(N, 1, ..., 1)``, cast to ``like``'s dtype, to broadcast against ``like``.

    The float64 schedule is rounded once, to float32 for float32 data, exactly as DiT does.
    """
    values = schedule.to(t.device)[t].to(like.dtype)  # (N,)
    return values.reshape(-1, *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------------------
#                                     The objective
# --------------------------------------------------------------------------------------

class DiffusionLoss(DenoisingObjective):
    """DiT's per-sample training loss on top of a diffusers ``DDPMScheduler``.

    Calling it returns a dict of ``(N,)`` tensors: ``"loss"`` (what to average and backpropagate),
    ``"mse"`` and, with ``learn_sigma``, ``"vb"`` (the rescaled VLB term, bits/dim * T / 1000).

    Args:
        scheduler: source of the betas and cumulative alphas; defaults to ``make_scheduler()``.
        learn_sigma: the model output carries ``2 * C`` channels: predicted noise, then the variance
            interpolation ``v`` in [-1, 1]. Off: ``C`` channels and a plain MSE loss.
        exact_cdf: the t = 0 likelihood term with the exact normal CDF instead of DiT's tanh
            approximation (off: the loss equals DiT's reference code).
        snr_gamma: weight the noise MSE by ``min(SNR_t, gamma) / SNR_t`` (Min-SNR-gamma, Hang et al.
            2023; diffusers' ``--snr_gamma``), which stops the easy low-noise steps from dominating the
            gradient; ``None`` keeps DiT's unweighted MSE. The VLB term is never weighted.

    Example:
        >>> loss_fn = DiffusionLoss()
        >>> t = uniform_timesteps(x0.shape[0], loss_fn.num_timesteps, x0.device)
        >>> losses = loss_fn(model, x0, t, model_kwargs={"class_labels": y})
        >>> losses["loss"].mean().backward()
    """

    def __init__(
        self,
        scheduler: DDPMScheduler | None = None,
        learn_sigma: bool = True,
        exact_cdf: bool = False,
        snr_gamma: float | None = None,
    ):
        if snr_gamma is not None and not snr_gamma > 0:
            raise ValueError(f"snr_gamma must be a positive number or None, got {snr_gamma!r}")
        scheduler = make_scheduler(learn_sigma=learn_sigma) if scheduler is None else scheduler
        self.scheduler = scheduler
        self.learn_sigma = learn_sigma
        self.exact_cdf = exact_cdf
        self.snr_gamma = snr_gamma
        self.num_timesteps = int(scheduler.config.num_train_timesteps)

        # The scheduler's schedule, but every term in float64 (as DiT): the scheduler's float32
        # cumprod carries ~1e-4 relative error in 1 - abar_t near t=0, which the posterior divides by.
        betas = float64_betas(scheduler)  # (T,)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (T,)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])  # (T,)
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.sqrt_alphas_cumprod = torch.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - alphas_cumprod)
        self.log_betas = torch.log(betas)
        self.sqrt_recip_alphas_cumprod = torch.rsqrt(alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / alphas_cumprod - 1.0)
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # beta~_0 = 0: use beta~_1 in its place so the log (and the learned range's lower end) stays finite.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * torch.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)
        # Min-SNR-gamma for noise prediction: min(SNR_t, gamma) / SNR_t; 1 (DiT's loss) without gamma.
        snr = alphas_cumprod / (1.0 - alphas_cumprod)  # (T,)
        self.mse_weights = snr.clamp(max=snr_gamma) / snr if snr_gamma is not None else torch.ones_like(snr)

    name = "ddpm"

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """DiT's training timesteps ``t ~ U{0, ..., T - 1}`` (``uniform_timesteps``)."""
        return uniform_timesteps(batch_size, self.num_timesteps, device, generator)

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input ``x_t`` (``q_sample``) and its noise-prediction target ``noise``."""
        return self.q_sample(x0, t, noise), noise

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise ~ q(x_t | x_0)``, coefficients from the float64 schedule."""
        return _extract(self.sqrt_alphas_cumprod, t, x0) * x0 + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of the true posterior ``q(x_{t-1} | x_t, x_0)``.

        Returns:
            ``mean`` shaped like ``x0``; ``variance`` and ``log_variance`` shaped ``(N, 1, ..., 1)``.
        """
        coef1 = _extract(self.posterior_mean_coef1, t, x0)
        coef2 = _extract(self.posterior_mean_coef2, t, x0)
        mean = coef1 * x0 + coef2 * xt  # (N, C, ...)
        variance = _extract(self.posterior_variance, t, x0)
        log_variance = _extract(self.posterior_log_variance_clipped, t, x0)
        return mean, variance, log_variance

    def split_output(self, model_output: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split a model output into predicted noise and (with ``learn_sigma``) the variance values ``v``."""
        channels = xt.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        expected_shape = (xt.shape[0], expected, *xt.shape[2:])
        if tuple(model_output.shape) != expected_shape:
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)}; expected {expected_shape} "
                f"(learn_sigma={self.learn_sigma}, input has {channels} channels)"
            )
        if not self.learn_sigma:
            return model_output, None
        eps, v = model_output.split(channels, dim=1)  # (N, C, ...) each
        return eps, v

    def p_mean_variance(self, model_output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's ``p(x_{t-1} | x_t)``: mean from the predicted noise, variance from the learned range.

        Args:
            model_output: ``(N, 2C, ...)`` (``learn_sigma``) or ``(N, C, ...)`` network output.
            xt: ``(N, C, ...)`` noisy input at step ``t``.
            t: ``(N,)`` int64 timesteps.

        Returns:
            dict with ``mean``, ``variance``, ``log_variance`` and ``pred_x0``. Without ``learn_sigma``
            the variance is the clipped posterior one, ``beta~_t`` (``beta~_1`` at ``t = 0``).
        """
        eps, v = self.split_output(model_output, xt)
        if v is None:
            log_variance = _extract(self.posterior_log_variance_clipped, t, xt)
        else:
            # v in [-1, 1] interpolates log-variances between beta~_t (v=-1) and beta_t (v=+1).
            frac = (v + 1) / 2
            min_log = _extract(self.posterior_log_variance_clipped, t, xt)
            max_log = _extract(self.log_betas, t, xt)
            log_variance = frac * max_log + (1 - frac) * min_log  # (N, C, ...)
        pred_x0 = _extract(self.sqrt_recip_alphas_cumprod, t, xt) * xt - _extract(
            self.sqrt_recipm1_alphas_cumprod, t, xt
        ) * eps
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, xt, t)
        return {"mean": mean, "variance": torch.exp(log_variance), "log_variance": log_variance, "pred_x0": pred_x0}

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """One term of the variational bound per sample, in bits per dimension.

        ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` for ``t > 0`` and the decoder's negative
        log-likelihood ``-log p(x_0 | x_1)`` for ``t == 0``.

        Returns:
            ``(N,)`` tensor.
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, xt, t)
        out = self.p_mean_variance(model_output, xt, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -mean_flat(
            discretized_gaussian_log_likelihood(
                x0, means=out["mean"], log_scales=0.5 * out["log_variance"], exact_cdf=self.exact_cdf
            )
        ) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def losses(
        self, output: torch.Tensor, target: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "mse"}``, plus ``"vb"`` with ``learn_sigma``, each ``(N,)``; ``t`` int64 in ``[0, T)``."""
        eps, v = self.split_output(output, xt)
        mse = mean_flat((target - eps) ** 2)  # (N,)
        weighted_mse = _extract(self.mse_weights, t, mse) * mse  # (N,)
        if v is None:
            return {"loss": weighted_mse, "mse": mse}
        # The VLB must only train the variance: the mean's gradient comes from the MSE alone.
        frozen_output = torch.cat([eps.detach(), v], dim=1)  # (N, 2C, H, W)
        # Rescaled so the VLB weighs as in ADM's RESCALED_MSE, whatever T is.
        vb = self.vb_terms_bpd(frozen_output, x0, xt, t) * (self.num_timesteps / 1000.0)  # (N,)
        return {"loss": weighted_mse + vb, "mse": mse, "vb": vb}
