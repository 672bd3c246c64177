"""The demo's requests without a browser: same images as the pipeline and sample.py, the cap, clear errors, decay maps."""

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")

from sdt_gen import SDTPipeline, SDTTransformer2DModel  # noqa: E402
from sdt_gen.demo import DemoModel, build_demo  # noqa: E402
from sdt_gen.pipelines import image_seed  # noqa: E402

from helpers import perturbed, tiny_vae  # noqa: E402

ID2LABEL = {i: f"digit {i}, number {i}" for i in range(4)}


def tiny_pipeline(decay_mode: str = "cag", channels: int = 1, vae=None, objective: str = "ddpm") -> SDTPipeline:
    torch.manual_seed(0)
    transformer = SDTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4 if vae is not None else channels, hidden_size=32, depth=2,
        num_heads=2, num_classes=4, decay_mode=decay_mode, objective=objective, learn_sigma=objective == "ddpm",
    )
    perturbed(transformer)
    pipe = SDTPipeline(transformer.eval(), SDTPipeline.dit_scheduler(), vae, id2label=ID2LABEL)
    if objective == "flow":
        from sdt_gen.pipelines import flow_scheduler

        pipe.scheduler = flow_scheduler()
    return pipe


def test_samples_equal_the_pipelines_own_output_for_the_same_seed():
    pipe = tiny_pipeline()
    demo = DemoModel(pipe, "tiny")
    made = demo.sample(["Number 2", "digit 0"], per_class=2, guidance_scale=3.0, steps=3, scheduler="ddim", seed=5)
    assert made.labels == [2, 2, 0, 0]
    from sdt_gen.pipelines import scheduler_by_name

    pipe.scheduler = scheduler_by_name("ddim", pipe.scheduler.config)
    expected = pipe([2, 2, 0, 0], guidance_scale=3.0, num_inference_steps=3,
                    generator=[torch.Generator().manual_seed(image_seed(5, i)) for i in range(4)]).images
    for got, want in zip(made.images, expected):
        assert np.array_equal(np.array(got), np.array(want))
    assert made.grid.width > 2 * 8 and made.grid.height > 2 * 8


def test_the_cap_unknown_classes_and_wrong_schedulers_are_refused_clearly():
    demo = DemoModel(tiny_pipeline(), "tiny", max_work=20)
    with pytest.raises(ValueError, match=r"2 classes x 4 images x 3 steps = 24 image-steps is more than this demo's 20"):
        demo.sample([0, 1], per_class=4, steps=3)
    with pytest.raises(ValueError, match=r"unknown class name 'digit 9'.*closest names"):
        demo.sample(["digit 9"], per_class=1, steps=2)
    with pytest.raises(ValueError, match=r"scheduler 'euler' cannot sample this model; expected one of ddpm, ddim, dpm"):
        demo.sample([0], per_class=1, steps=2, scheduler="euler")
    with pytest.raises(ValueError, match="at least one class"):
        demo.sample([], per_class=1, steps=2)
    assert DemoModel(tiny_pipeline(objective="flow"), "flow").schedulers == ["euler", "heun"]


@pytest.mark.parametrize("latent", [False, True])
def test_decay_maps_of_a_clicked_point(latent):
    demo = DemoModel(tiny_pipeline(vae=tiny_vae() if latent else None), "tiny")
    made = demo.sample([1], per_class=1, steps=2)
    corner = np.array(demo.decay_picture(made.images[0], 1, 500, (0.0, 0.0)))
    centre = np.array(demo.decay_picture(made.images[0], 1, 500, (0.6, 0.6)))
    assert corner.shape == centre.shape and corner.ndim == 3 and not np.array_equal(corner, centre)
    with pytest.raises(ValueError, match="timestep must be in 0..999"):
        demo.decay_picture(made.images[0], 1, 1000, (0.5, 0.5))


def test_the_app_builds_with_and_without_compare_and_for_none_models():
    import gradio as gr

    assert isinstance(build_demo(DemoModel(tiny_pipeline(), "a")), gr.Blocks)
    assert isinstance(build_demo(DemoModel(tiny_pipeline("none"), "a"), DemoModel(tiny_pipeline(), "b")), gr.Blocks)


def test_missing_model_is_one_clear_line(tmp_path: Path, capsys):
    from sdt_gen.demo import build_parser, main
    from sdt_gen.cli import run_main

    with pytest.raises(SystemExit) as stopped:
        run_main(main, build_parser(), ["--model", str(tmp_path / "nothing")])
    assert stopped.value.code == 2 and "error:" in capsys.readouterr().err
