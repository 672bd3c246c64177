"""SDTPipeline with flow models: diffusers' flow-matching schedulers, guidance on the velocity."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from sdt_gen import SDTPipeline
from sdt_gen.pipelines import default_scheduler, flow_scheduler, scheduler_by_name


def flow_pipeline(make_pipeline, scheduler=None):
    return make_pipeline(pixel=True, learn_sigma=False, objective="flow", scheduler=scheduler or flow_scheduler())


def exact_velocity_of(pipe, point: torch.Tensor, calls: list):
    """Replace the transformer's forward by the exact velocity field of data that is one point."""

    def forward(sample, timestep, class_labels, return_dict=True):
        calls.append(class_labels.clone())
        s = (timestep.float() / 1000).reshape(-1, 1, 1, 1)
        velocity = (sample - point) / s  # x_s = (1 - s) x* + s eps  =>  v = (x_s - x*) / s
        return type("Output", (), {"sample": velocity})()

    pipe.transformer.forward = forward


@pytest.mark.parametrize("scheduler_cls", [FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler])
def test_sampling_an_exact_velocity_lands_on_the_data(make_pipeline, scheduler_cls):
    pipe = flow_pipeline(make_pipeline, scheduler_cls())
    point = torch.rand(1, 3, 8, 8) * 1.6 - 0.8  # inside [-1, 1]: the image is (point + 1) / 2
    calls = []
    exact_velocity_of(pipe, point, calls)
    images = pipe([1, 2], num_inference_steps=8, guidance_scale=1.0, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(images, ((point + 1) / 2).expand(2, -1, -1, -1), atol=1e-4, rtol=0)
    # guidance 1: one pass per step with the requested labels only
    assert all(c.tolist() == [1, 2] for c in calls)


def test_guidance_uses_the_null_class_for_the_unconditional_half(make_pipeline):
    pipe = flow_pipeline(make_pipeline)
    calls = []
    exact_velocity_of(pipe, torch.zeros(1, 3, 8, 8), calls)
    pipe([4, 7], num_inference_steps=3, guidance_scale=3.0, output_type="pt")
    assert len(calls) == 3 and all(c.tolist() == [4, 7, 10, 10] for c in calls)  # 10: the null class


def test_schedulers_of_the_other_objective_are_refused(make_pipeline):
    pipe = flow_pipeline(make_pipeline, scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="trained with the flow objective .* DDIMScheduler cannot sample it"):
        pipe([1], num_inference_steps=2)
    ddpm = make_pipeline(pixel=True, learn_sigma=False, scheduler=flow_scheduler())
    with pytest.raises(ValueError, match="trained with the DDPM objective .* FlowMatchEulerDiscreteScheduler"):
        ddpm([1], num_inference_steps=2)
    # sample.py's names reach the flow schedulers
    assert isinstance(scheduler_by_name("heun", flow_scheduler().config), FlowMatchHeunDiscreteScheduler)


def test_save_load_keeps_the_objective_and_its_scheduler(make_pipeline, tmp_path):
    pipe = flow_pipeline(make_pipeline)
    assert isinstance(default_scheduler(pipe.transformer.config), FlowMatchEulerDiscreteScheduler)
    expected = pipe([3], num_inference_steps=4, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    pipe.save_pretrained(tmp_path / "flow")
    loaded = SDTPipeline.from_pretrained(tmp_path / "flow")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.config.objective == "flow" and not loaded.transformer.config.learn_sigma
    assert isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler)
    images = loaded([3], num_inference_steps=4, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(images, expected)


def test_a_flow_transformer_must_not_learn_a_variance(make_transformer):
    with pytest.raises(ValueError, match="flow model predicts a velocity and no variance"):
        make_transformer(in_channels=3, learn_sigma=True, objective="flow")
    with pytest.raises(ValueError, match="unknown objective 'edm'"):
        make_transformer(in_channels=3, learn_sigma=False, objective="edm")
