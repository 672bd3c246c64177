"""DiT's objective against closed-form values, plus a tiny overfit run."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

from sdt_gen.diffusion import (
    DiffusionLoss,
    discretized_gaussian_log_likelihood,
    make_scheduler,
    normal_kl,
    uniform_timesteps,
)


@pytest.fixture(scope="module")
def loss_fn() -> DiffusionLoss:
    return DiffusionLoss(make_scheduler(learn_sigma=True), learn_sigma=True)


def test_schedule_is_dits(loss_fn):
    betas = loss_fn.betas
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-5)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-5)
    step = (betas[-1] - betas[0]) / 999
    assert torch.allclose(betas[1:] - betas[:-1], step.expand(999), atol=1e-9)  # linear


def test_uniform_timesteps_range():
    t = uniform_timesteps(4096, 1000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.shape == (4096,)
    assert t.min() >= 0 and t.max() <= 999


def test_normal_kl_closed_form():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(100, generator=g, dtype=torch.float64), torch.randn(100, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(100, generator=g, dtype=torch.float64), torch.randn(100, generator=g, dtype=torch.float64)
    s1, s2 = torch.exp(0.5 * lv1), torch.exp(0.5 * lv2)
    expected = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), expected, atol=1e-10)
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros_like(m1), atol=1e-12)


def test_discretized_log_likelihood_matches_scipy():
    levels = torch.tensor([0, 1, 17, 127, 128, 200, 254, 255], dtype=torch.float64)
    x = levels / 127.5 - 1.0  # pixel levels scaled to [-1, 1]
    means = torch.linspace(-0.9, 0.8, len(levels), dtype=torch.float64)
    log_scales = torch.log(torch.linspace(0.005, 0.5, len(levels), dtype=torch.float64))
    got = discretized_gaussian_log_likelihood(x, means, log_scales, exact_cdf=True)

    dist = stats.norm(loc=means.numpy(), scale=torch.exp(log_scales).numpy())
    half = 1.0 / 255.0
    cdf_hi, cdf_lo = dist.cdf(x.numpy() + half), dist.cdf(x.numpy() - half)
    expected = torch.tensor(cdf_hi - cdf_lo)
    expected[0] = float(cdf_hi[0])  # lowest level: bin extends to -inf
    expected[-1] = float(1.0 - cdf_lo[-1])  # highest level: bin extends to +inf
    assert torch.allclose(got, torch.log(expected), atol=1e-6)


@pytest.mark.parametrize("exact_cdf", [False, True])
def test_discretized_likelihood_sums_to_one_over_levels(exact_cdf):
    x = (torch.arange(256, dtype=torch.float64) / 127.5 - 1.0)
    log_probs = discretized_gaussian_log_likelihood(
        x, torch.full_like(x, 0.3), torch.full_like(x, math.log(0.2)), exact_cdf=exact_cdf
    )
    assert log_probs.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_q_sample_closed_form(loss_fn):
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    abar = loss_fn.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(loss_fn.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-6)


def test_posterior_matches_gaussian_product(loss_fn):
    # q(x_{t-1} | x_t, x_0) from Bayes: prior N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}),
    # likelihood x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t); precisions add.
    x0, xt = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 10, 999])
    beta = loss_fn.betas[t].view(-1, 1, 1, 1)
    abar_prev = loss_fn.alphas_cumprod[t - 1].view(-1, 1, 1, 1)
    precision = 1 / (1 - abar_prev) + (1 - beta) / beta
    variance = 1 / precision
    expected_mean = variance * (abar_prev.sqrt() * x0 / (1 - abar_prev) + (1 - beta).sqrt() * xt / beta)

    mean, var, log_var = loss_fn.q_posterior_mean_variance(x0, xt, t)
    assert torch.allclose(mean, expected_mean, atol=1e-5)
    assert torch.allclose(var.double(), variance, rtol=1e-5)
    assert torch.allclose(log_var.double(), variance.log(), atol=1e-5)


def test_schedule_matches_scheduler():
    scheduler = make_scheduler(learn_sigma=False)
    loss_fn = DiffusionLoss(scheduler, learn_sigma=False)
    assert torch.allclose(loss_fn.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=1e-5)
    for t in (1, 50, 999):
        # The scheduler computes in float32: agreement to ~1e-4 near t=0, where 1 - abar_t is tiny.
        assert loss_fn.posterior_variance[t].item() == pytest.approx(scheduler._get_variance(t).item(), rel=2e-4)


def test_learned_range_endpoints(loss_fn):
    xt, t = torch.randn(2, 2, 4, 4), torch.tensor([3, 700])
    eps = torch.randn_like(xt)
    upper = loss_fn.p_mean_variance(torch.cat([eps, torch.ones_like(xt)], 1), xt, t)["log_variance"]
    lower = loss_fn.p_mean_variance(torch.cat([eps, -torch.ones_like(xt)], 1), xt, t)["log_variance"]
    assert torch.allclose(upper, loss_fn.betas[t].log().float().view(-1, 1, 1, 1).expand_as(xt))
    assert torch.allclose(lower, loss_fn.posterior_variance[t].log().float().view(-1, 1, 1, 1).expand_as(xt))


def test_vb_at_t0_is_decoder_nll(loss_fn):
    x0 = torch.randint(0, 256, (2, 3, 4, 4)).float() / 127.5 - 1
    xt = x0 + 0.01 * torch.randn_like(x0)
    t = torch.zeros(2, dtype=torch.int64)
    output = torch.randn(2, 6, 4, 4)
    out = loss_fn.p_mean_variance(output, xt, t)
    nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"]).mean(dim=(1, 2, 3))
    assert torch.allclose(loss_fn.vb_terms_bpd(output, x0, xt, t), nll / math.log(2), atol=1e-6)


def test_vb_at_t_gt_0_is_kl(loss_fn):
    x0, xt, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([5, 400])
    output = torch.randn(2, 2, 4, 4)
    out = loss_fn.p_mean_variance(output, xt, t)
    mean, _, log_var = loss_fn.q_posterior_mean_variance(x0, xt, t)
    kl = normal_kl(mean, log_var, out["mean"], out["log_variance"]).mean(dim=(1, 2, 3))
    assert torch.allclose(loss_fn.vb_terms_bpd(output, x0, xt, t), kl / math.log(2), atol=1e-6)


def test_vb_trains_only_the_variance(loss_fn):
    x0 = torch.randn(4, 2, 4, 4)
    prediction = torch.randn(4, 4, 4, 4, requires_grad=True)
    losses = loss_fn(lambda x, t: prediction, x0, torch.tensor([0, 1, 300, 999]))
    losses["vb"].sum().backward()
    assert torch.count_nonzero(prediction.grad[:, :2]) == 0  # eps channels
    assert torch.count_nonzero(prediction.grad[:, 2:]) > 0  # variance channels

    prediction.grad = None
    losses["mse"].sum().backward()
    assert torch.count_nonzero(prediction.grad[:, 2:]) == 0


def test_plain_mse_without_learned_sigma():
    loss_fn = DiffusionLoss(make_scheduler(learn_sigma=False), learn_sigma=False)
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    losses = loss_fn(lambda x, t: torch.zeros_like(x), x0, torch.tensor([1, 2]), noise=noise)
    assert set(losses) == {"loss", "mse"}
    assert torch.allclose(losses["loss"], noise.pow(2).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_min_snr_gamma_weights_the_mse_as_diffusers_does(learn_sigma):
    from diffusers.training_utils import compute_snr

    scheduler = make_scheduler(learn_sigma=learn_sigma)
    plain = DiffusionLoss(scheduler, learn_sigma=learn_sigma)
    weighted = DiffusionLoss(scheduler, learn_sigma=learn_sigma, snr_gamma=5.0)
    torch.manual_seed(0)
    x0, noise = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    t = torch.tensor([0, 30, 200, 900])  # SNR far above 5, above, below, far below
    conv = nn.Conv2d(1, 2 if learn_sigma else 1, 1)
    expected, got = (loss_fn(lambda x, t: conv(x), x0, t, noise=noise) for loss_fn in (plain, weighted))

    snr = compute_snr(scheduler, t)  # diffusers' own SNR, as its --snr_gamma training scripts use
    weights = torch.minimum(snr, torch.full_like(snr, 5.0)) / snr
    assert weights[0] < 1e-3 and weights[-1] == 1
    torch.testing.assert_close(got["mse"], expected["mse"])  # reported unweighted
    # diffusers computes the SNR in float32, where 1 - abar_0 = 1e-4 keeps only ~3 digits; ours is float64.
    torch.testing.assert_close(got["loss"], weights * expected["mse"] + expected.get("vb", 0), rtol=1e-3, atol=1e-7)
    with pytest.raises(ValueError, match="snr_gamma must be a positive number or None, got 0"):
        DiffusionLoss(scheduler, snr_gamma=0)


def test_tuple_output_and_bad_channels(loss_fn):
    x0 = torch.randn(2, 1, 4, 4)
    losses = loss_fn(lambda x, t: (torch.zeros(2, 2, 4, 4),), x0, torch.tensor([1, 2]))
    assert losses["loss"].shape == (2,)
    with pytest.raises(ValueError, match=r"expected \(2, 2, 4, 4\)"):
        loss_fn(lambda x, t: torch.zeros(2, 1, 4, 4), x0, torch.tensor([1, 2]))


class TinyDenoiser(nn.Module):
    """An MLP on flattened 1x4x4 inputs plus the timestep; outputs noise and variance channels."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(17, 128), nn.SiLU(), nn.Linear(128, 32))

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.flatten(1), t[:, None].float() / 1000], dim=1)  # (N, 17)
        return self.net(h).view(-1, 2, 4, 4)  # (N, 2, 4, 4)


@pytest.fixture
def single_thread():
    # Tensors this small gain nothing from intra-op threads, which stall badly on a busy CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_loss_decreases_on_tiny_batch(loss_fn, single_thread):
    torch.manual_seed(0)
    model = TinyDenoiser()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    t, noise = uniform_timesteps(8, loss_fn.num_timesteps), torch.randn_like(x0)
    labels = torch.zeros(8, dtype=torch.int64)
    history = []
    for _ in range(100):
        losses = loss_fn(model, x0, t, model_kwargs={"class_labels": labels}, noise=noise)
        loss = losses["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.3 * history[0]


# --------------------------------------------------------------------------------------
#      DiT's reference objective (diffusion/gaussian_diffusion.py), restated in numpy
# --------------------------------------------------------------------------------------

def dit_reference_losses(x0, noise, t, model_output):
    """DiT's training_losses (learned sigma, RESCALED_MSE) for one sample in float64, from its formulas."""
    import numpy as np

    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)

    x_t = np.sqrt(alphas_cumprod[t]) * x0 + np.sqrt(1.0 - alphas_cumprod[t]) * noise
    eps, v = np.split(model_output, 2, axis=0)
    true_mean = coef1[t] * x0 + coef2[t] * x_t
    true_log_variance = posterior_log_variance_clipped[t]
    frac = (v + 1) / 2
    model_log_variance = frac * np.log(betas[t]) + (1 - frac) * posterior_log_variance_clipped[t]
    pred_x0 = np.sqrt(1.0 / alphas_cumprod[t]) * x_t - np.sqrt(1.0 / alphas_cumprod[t] - 1) * eps
    model_mean = coef1[t] * pred_x0 + coef2[t] * x_t
    if t == 0:
        def cdf(x):
            return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))

        inv_stdv = np.exp(-0.5 * model_log_variance)
        cdf_plus = cdf(inv_stdv * (x0 - model_mean + 1.0 / 255.0))
        cdf_min = cdf(inv_stdv * (x0 - model_mean - 1.0 / 255.0))
        log_probs = np.where(
            x0 < -0.999, np.log(np.maximum(cdf_plus, 1e-12)),
            np.where(x0 > 0.999, np.log(np.maximum(1.0 - cdf_min, 1e-12)),
                     np.log(np.maximum(cdf_plus - cdf_min, 1e-12))),
        )
        vb = -log_probs.mean() / np.log(2.0)
    else:
        kl = 0.5 * (-1.0 + model_log_variance - true_log_variance + np.exp(true_log_variance - model_log_variance)
                    + (true_mean - model_mean) ** 2 * np.exp(-model_log_variance))
        vb = kl.mean() / np.log(2.0)
    mse = ((noise - eps) ** 2).mean()
    return {"mse": mse, "vb": vb, "loss": mse + vb}


@pytest.mark.parametrize("t", [0, 1, 5, 999])
def test_objective_equals_dits_reference_in_float64(t):
    g = torch.Generator().manual_seed(t)
    x0 = torch.randint(0, 256, (1, 3, 4, 4), generator=g).double() / 127.5 - 1  # pixel levels, edges included
    x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    noise = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    # A model output near what a trained model gives, so the t = 0 bins are not all empty.
    eps = noise + 0.05 * torch.randn(noise.shape, generator=g, dtype=torch.float64)
    output = torch.cat([eps, torch.rand(noise.shape, generator=g, dtype=torch.float64) * 2 - 1], dim=1)

    got = DiffusionLoss()(lambda xt, ts: output, x0, torch.tensor([t]), noise=noise)
    expected = dit_reference_losses(x0[0].numpy(), noise[0].numpy(), t, output[0].numpy())
    for key in ("mse", "vb", "loss"):
        assert got[key].dtype == torch.float64
        # 1e-12 against the formula (measured: below 1e-14). DiT's code reads the schedule through float32, which
        # moves its float64 losses by up to 6e-6 relative (t = 5): the README says which is which.
        assert got[key].item() == pytest.approx(expected[key], rel=1e-12), key


def test_exact_cdf_option_changes_only_the_t0_term():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (2, 3, 4, 4), generator=g).double() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    output = torch.cat([noise + 0.05 * torch.randn(x0.shape, generator=g, dtype=torch.float64), torch.zeros_like(x0)], 1)
    dit_loss, exact_loss = DiffusionLoss(), DiffusionLoss(exact_cdf=True)
    t0, t5 = torch.zeros(2, dtype=torch.long), torch.full((2,), 5)
    model = lambda xt, ts: output  # noqa: E731
    assert torch.equal(dit_loss(model, x0, t5, noise=noise)["vb"], exact_loss(model, x0, t5, noise=noise)["vb"])
    approx, exact = dit_loss(model, x0, t0, noise=noise)["vb"], exact_loss(model, x0, t0, noise=noise)["vb"]
    relative = ((approx - exact).abs() / exact).max().item()
    assert 1e-4 < relative < 0.02  # DiT's tanh CDF is close to, not equal to, the exact one


def test_float32_x_t_rounds_the_float64_coefficients_as_dit_does(loss_fn):
    x0, noise = torch.randn(4, 2, 4, 4), torch.randn(4, 2, 4, 4)
    t = torch.tensor([0, 1, 5, 999])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[t]
    expected = abar.sqrt().float().view(-1, 1, 1, 1) * x0 + (1 - abar).sqrt().float().view(-1, 1, 1, 1) * noise
    assert torch.equal(loss_fn.q_sample(x0, t, noise), expected)
