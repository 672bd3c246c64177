"""SiT's flow-matching objective: the path, its target, the loss, and the factory of both objectives."""

import pytest
import torch
from torch import nn

from sdt_gen.diffusion import DiffusionLoss, FlowMatchingLoss, make_objective


def test_path_and_target_are_diffusers_flow_matching_convention():
    loss_fn = FlowMatchingLoss()
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0.0, 250.0, 1000.0])  # s = 0 (data), 0.25, 1 (noise)
    xt, target = loss_fn.noised(x0, t, noise)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    torch.testing.assert_close(xt[2], noise[2])
    torch.testing.assert_close(target, noise - x0)

    # diffusers' flow-matching scheduler noises the same way: scale_noise(x0, sigma * 1000, noise).
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(4)
    sigma = scheduler.sigmas[1]
    noised = scheduler.scale_noise(x0[:1], scheduler.timesteps[1:2], noise[:1])
    torch.testing.assert_close(noised, loss_fn.noised(x0[:1], (sigma * 1000).reshape(1), noise[:1])[0])


@pytest.mark.parametrize("time_sampling, median", [("uniform", 500), ("logit_normal", 500)])
def test_training_times(time_sampling, median):
    loss_fn = FlowMatchingLoss(time_sampling=time_sampling)
    t = loss_fn.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.shape == (20000,)
    assert 0 <= t.min() and t.max() <= 1000
    assert abs(t.median().item() - median) < 15
    middle = ((t > 250) & (t < 750)).float().mean().item()
    # uniform puts half the times in the middle half; the logit-normal (SD3) about 0.74 of them.
    assert middle == pytest.approx(0.5 if time_sampling == "uniform" else 0.74, abs=0.02)


def test_loss_is_zero_for_the_exact_velocity_of_one_point_and_minimal_for_two_points():
    loss_fn = FlowMatchingLoss()
    point = torch.randn(1, 1, 2, 2)
    x0 = point.expand(64, -1, -1, -1)
    t = loss_fn.sample_timesteps(64, generator=torch.Generator().manual_seed(1))

    def one_point_velocity(x, t):  # x_s = (1 - s) x* + s eps  =>  v = eps - x* = (x_s - x*) / s
        return (x - point) / (t / 1000).reshape(-1, 1, 1, 1)

    assert loss_fn(one_point_velocity, x0, t)["loss"].abs().max() < 1e-8

    # Two points +-1 (1-D): the exact field is E[eps - x0 | x_s]; any other field has a larger loss.
    torch.manual_seed(0)
    x0 = torch.where(torch.rand(20000, 1, 1, 1) < 0.5, -1.0, 1.0)
    t = loss_fn.sample_timesteps(20000, generator=torch.Generator().manual_seed(2)).clamp(1, 999)
    noise = torch.randn_like(x0)

    def two_point_velocity(x, t):
        s = (t / 1000).reshape(-1, 1, 1, 1)
        # posterior of x0 = +1 given x_s: the two Gaussians N((1 - s) x0, s^2) weighted equally
        p_plus = torch.sigmoid(2 * (1 - s) * x / s**2)
        x0_mean = 2 * p_plus - 1
        return (x - x0_mean) / s - x0_mean

    exact = loss_fn(two_point_velocity, x0, t, noise=noise)["loss"].mean()
    for wrong in (lambda x, t: 1.1 * two_point_velocity(x, t), lambda x, t: two_point_velocity(x, t) + 0.1):
        assert loss_fn(wrong, x0, t, noise=noise)["loss"].mean() > exact


def test_gradients_flow_and_shapes_are_checked():
    loss_fn = FlowMatchingLoss()
    conv = nn.Conv2d(2, 2, 1)
    x0 = torch.randn(4, 2, 4, 4)
    losses = loss_fn(lambda x, t: conv(x), x0, loss_fn.sample_timesteps(4))
    assert set(losses) == {"loss", "mse"} and losses["loss"].shape == (4,)
    losses["loss"].mean().backward()
    assert conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"predicts the velocity, shaped like its input \(4, 2, 4, 4\)"):
        loss_fn(lambda x, t: torch.cat([x, x], dim=1), x0, loss_fn.sample_timesteps(4))
    with pytest.raises(ValueError, match="unknown time_sampling 'beta'"):
        FlowMatchingLoss(time_sampling="beta")


def test_make_objective_picks_and_checks():
    assert isinstance(make_objective("ddpm"), DiffusionLoss)
    flow = make_objective("flow", learn_sigma=False, time_sampling="logit_normal")
    assert isinstance(flow, FlowMatchingLoss) and flow.time_sampling == "logit_normal"
    with pytest.raises(ValueError, match="learn_sigma must be False"):
        make_objective("flow", learn_sigma=True)
    with pytest.raises(ValueError, match="snr_gamma weights DDPM's noise MSE"):
        make_objective("flow", learn_sigma=False, snr_gamma=5.0)
    with pytest.raises(ValueError, match="time_sampling=.logit_normal. is not one of the DDPM objective.s: uniform"):
        make_objective("ddpm", time_sampling="logit_normal")
    with pytest.raises(ValueError, match="unknown objective 'edm'; expected one of ddpm, flow"):
        make_objective("edm")
