import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

import sdt_gen
from sdt_gen import SDTPipeline
from sdt_gen.pipelines import chosen_scheduler, dit_scheduler, flow_scheduler, scheduler_by_name

from helpers import assert_pipeline_samples_as_saved

STEPS = 3


def seeded(n=None, seed=0):
    """One generator, or one per image."""
    if n is None:
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def record_calls(transformer):
    """Record (batch, class_labels) of every transformer forward."""
    calls = []

    def hook(_module, args, kwargs):
        labels = kwargs.get("class_labels", args[2] if len(args) > 2 else None)
        calls.append((args[0].shape[0], labels.clone()))

    return calls, transformer.register_forward_pre_hook(hook, with_kwargs=True)


@torch.no_grad()
def reference_loop(transformer, scheduler, labels, noise, guidance_scale, generator, steps=STEPS, guided_channels=None):
    """Hand-written DiT sampling: model call, guidance, ``scheduler.step``; returns every step's sample."""
    channels = transformer.config.in_channels
    k = guided_channels or channels
    null = torch.full_like(labels, transformer.config.num_classes)
    scheduler.set_timesteps(steps)
    x, trajectory = noise.clone(), []
    for t in scheduler.timesteps:
        if guidance_scale == 1:
            out = transformer(x, t.expand(len(x)), labels).sample
        else:
            both = transformer(torch.cat([x, x]), t.expand(2 * len(x)), torch.cat([labels, null])).sample
            cond, uncond = both.chunk(2)
            eps = uncond[:, :k] + guidance_scale * (cond[:, :k] - uncond[:, :k])
            out = torch.cat([eps, cond[:, k:]], dim=1)
        if scheduler.config.variance_type not in ("learned", "learned_range"):
            out = out[:, :channels]
        x = scheduler.step(out, t, x, generator=generator).prev_sample
        trajectory.append(x)
    return trajectory


def recording_steps(scheduler):
    """Wrap ``scheduler.step`` so every ``prev_sample`` is kept."""
    trajectory = []
    step = scheduler.step

    @functools.wraps(step)
    def wrapped(*args, **kwargs):
        out = step(*args, **kwargs)
        trajectory.append(out.prev_sample.clone())
        return out

    scheduler.step = wrapped
    return trajectory


# ---------------------------------------------------------------------- API and outputs


def test_importable_from_package_and_pipelines():
    assert sdt_gen.SDTPipeline is SDTPipeline
    assert sdt_gen.pipelines.SDTPipeline is SDTPipeline


def test_dit_scheduler_is_dits_sampler():
    s = dit_scheduler()
    assert isinstance(s, DDPMScheduler)
    cfg = s.config
    assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end) == (1000, "linear", 1e-4, 0.02)
    assert (cfg.variance_type, cfg.clip_sample, cfg.timestep_spacing) == ("learned_range", False, "linspace")
    assert dit_scheduler(learn_sigma=False).config.variance_type == "fixed_small"
    s.set_timesteps(250)  # DiT's respacing "250": round(i * 999 / 249)
    expected = np.round(np.arange(250) * 999 / 249).astype(int)[::-1]
    assert s.timesteps.tolist() == expected.tolist()


def test_dit_scheduler_config_is_unchanged_and_shares_trainings_schedule():
    from sdt_gen.diffusion import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, dit_schedule, make_scheduler

    def comparable(config):
        return {k: sorted(v) if k == "_use_default_values" else v for k, v in config.items()}

    for learn_sigma in (True, False):
        # The sampler as the pipeline defined it with its own literals before it used training's schedule.
        before = DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
            variance_type="learned_range" if learn_sigma else "fixed_small", clip_sample=False,
            timestep_spacing="linspace",
        )
        assert comparable(dit_scheduler(learn_sigma).config) == comparable(before.config)
        public = dit_scheduler(learn_sigma).config
        training = make_scheduler(learn_sigma=learn_sigma).config
        assert {k: training[k] for k in dit_schedule()} == {k: public[k] for k in dit_schedule()}
        assert training.variance_type == public["variance_type"] and training.timestep_spacing == "leading"
    assert (NUM_TRAIN_TIMESTEPS, BETA_START, BETA_END) == (1000, 1e-4, 0.02)


def test_latent_pipeline_output_types(make_pipeline):
    pipe = make_pipeline()
    kwargs = dict(class_labels=[1, 2, 3], num_inference_steps=STEPS)
    pt = pipe(**kwargs, generator=seeded(), output_type="pt").images
    npy = pipe(**kwargs, generator=seeded(), output_type="np").images
    pil = pipe(**kwargs, generator=seeded()).images
    assert pt.shape == (3, 3, 16, 16) and npy.shape == (3, 16, 16, 3)
    assert pt.min() >= 0 and pt.max() <= 1 and pt.std() > 0
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), npy, atol=1e-6)
    assert len(pil) == 3 and pil[0].size == (16, 16) and pil[0].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(pil[0]), (npy[0] * 255).round().astype(np.uint8))
    as_tuple = pipe(**kwargs, generator=seeded(), output_type="np", return_dict=False)
    assert isinstance(as_tuple, tuple) and np.array_equal(as_tuple[0], npy)
    assert isinstance(pipe(**kwargs, output_type="np"), ImagePipelineOutput)


def test_pixel_pipeline_returns_the_transformer_sample(make_pipeline, tmp_path):
    pipe = make_pipeline(pixel=True)
    assert pipe.vae is None
    images = pipe([0, 5], num_inference_steps=STEPS, generator=seeded(2), output_type="pt").images
    assert images.shape == (2, 3, 8, 8)
    generators = seeded(2)  # the pipeline draws the noise, then the DDPM step noise, from each image's generator
    noise = torch.cat([torch.randn(1, 3, 8, 8, generator=g) for g in generators])
    ref = reference_loop(pipe.transformer, dit_scheduler(), torch.tensor([0, 5]), noise, 4.0, generators)
    torch.testing.assert_close(images, (ref[-1] / 2 + 0.5).clamp(0, 1))
    pipe.save_pretrained(tmp_path / "pixel")
    index = json.loads((tmp_path / "pixel" / "model_index.json").read_text())
    assert index["vae"] == [None, None] and not (tmp_path / "pixel" / "vae").exists()
    loaded = SDTPipeline.from_pretrained(tmp_path / "pixel")
    assert loaded.vae is None
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(loaded([0, 5], num_inference_steps=STEPS, generator=seeded(2), output_type="pt").images, images)


# ---------------------------------------------------------------------- save / load


def test_save_then_load_in_a_fresh_process(make_pipeline, tmp_path):
    pipe = make_pipeline()
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_sdt", "SDTPipeline"]  # diffusers' custom-pipeline convention
    assert index["transformer"] == ["sdt_gen.models.transformer_sdt", "SDTTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["id2label"]["3"] == "Golden Retriever, retriever"

    expected = pipe([3, "otter", 7], num_inference_steps=STEPS, generator=seeded(), output_type="np").images
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np, torch
        from sdt_gen import SDTPipeline
        torch.set_num_threads({torch.get_num_threads()})
        pipe = SDTPipeline.from_pretrained({str(folder)!r})
        pipe.set_progress_bar_config(disable=True)
        images = pipe([3, "otter", 7], num_inference_steps={STEPS}, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
        np.save({str(tmp_path / "fresh.npy")!r}, images)
        print(json.dumps(pipe.config.id2label))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # Another process may split the matmuls differently (threads, load on the CI machine): float32 rounding only.
    np.testing.assert_allclose(np.load(tmp_path / "fresh.npy"), expected, rtol=0, atol=1e-6)
    id2label = json.loads(done.stdout.strip().splitlines()[-1])
    assert id2label == {str(k): v for k, v in pipe.id2label.items()}


def test_swapped_scheduler_saves_and_loads(make_pipeline, tmp_path):
    pipe = make_pipeline()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "dpm")
    loaded = SDTPipeline.from_pretrained(tmp_path / "dpm")
    assert isinstance(loaded.scheduler, DPMSolverMultistepScheduler)
    assert loaded.id2label == pipe.id2label and loaded.labels["otter"] == 4


# ---------------------------------------------------------------------- sampling


@pytest.mark.parametrize("pixel", [False, True])
def test_ddpm_learned_range_equals_reference_loop_step_for_step(make_pipeline, pixel):
    pipe = make_pipeline(pixel=pixel)
    channels = 3 if pixel else 4
    labels = torch.tensor([1, 4, 9])
    noise = torch.randn(3, channels, 8, 8, generator=seeded(seed=5))
    trajectory = recording_steps(pipe.scheduler)
    pipe(labels.tolist(), guidance_scale=3.0, latents=noise, num_inference_steps=STEPS, generator=seeded(3),
         output_type="pt")
    ref = reference_loop(pipe.transformer, dit_scheduler(), labels, noise, 3.0, seeded(3))
    assert len(trajectory) == len(ref) == STEPS
    for got, want in zip(trajectory, ref):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the learned variance reaches the scheduler: without it the samples differ
    fixed = reference_loop(pipe.transformer, dit_scheduler(learn_sigma=False), labels, noise, 3.0, seeded(3))
    assert not torch.allclose(fixed[-1], ref[-1], atol=1e-4)


def test_guidance_scale_one_is_a_single_conditional_pass(make_pipeline):
    pipe = make_pipeline(pixel=True)
    calls, handle = record_calls(pipe.transformer)
    noise = torch.randn(2, 3, 8, 8, generator=seeded())
    images = pipe([2, 6], guidance_scale=1.0, latents=noise, num_inference_steps=STEPS, generator=seeded(2),
                  output_type="pt").images
    handle.remove()
    assert len(calls) == STEPS
    assert all(batch == 2 and labels.tolist() == [2, 6] for batch, labels in calls)
    ref = reference_loop(pipe.transformer, dit_scheduler(), torch.tensor([2, 6]), noise, 1.0, seeded(2))
    torch.testing.assert_close(images, (ref[-1] / 2 + 0.5).clamp(0, 1), rtol=0, atol=0)


def test_guidance_uses_the_models_null_class(make_pipeline):
    pipe = make_pipeline()
    assert pipe.transformer.config.num_classes == 10
    calls, handle = record_calls(pipe.transformer)
    pipe([2, 6], guidance_scale=4.0, num_inference_steps=STEPS, output_type="pt")
    handle.remove()
    assert len(calls) == STEPS
    for batch, labels in calls:
        assert batch == 4 and labels.tolist() == [2, 6, 10, 10]


def test_guidance_zero_is_a_single_unconditional_pass(make_pipeline):
    pipe = make_pipeline(pixel=True)
    noise = torch.randn(2, 3, 8, 8, generator=seeded())
    calls, handle = record_calls(pipe.transformer)
    kwargs = dict(guidance_scale=0.0, latents=noise, num_inference_steps=STEPS, output_type="pt")
    a = pipe([2, 6], generator=seeded(2), **kwargs)
    handle.remove()
    assert len(calls) == STEPS and all(labels.tolist() == [10, 10] for _, labels in calls)
    b = pipe([7, 1], generator=seeded(2), **kwargs)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)


def test_guided_channels_opt_in_reproduces_dits_protocol(make_pipeline):
    pipe = make_pipeline()
    labels, noise = torch.tensor([0, 8]), torch.randn(2, 4, 8, 8, generator=seeded())

    def run(**kwargs):
        pipe(labels.tolist(), latents=noise, num_inference_steps=STEPS, generator=seeded(2), output_type="pt", **kwargs)

    trajectory = recording_steps(pipe.scheduler)
    run(guided_channels=3)
    ref3 = reference_loop(pipe.transformer, dit_scheduler(), labels, noise, 4.0, seeded(2), guided_channels=3)
    torch.testing.assert_close(trajectory[-1], ref3[-1], rtol=0, atol=0)
    trajectory.clear()
    run()
    ref_all = reference_loop(pipe.transformer, dit_scheduler(), labels, noise, 4.0, seeded(2))
    torch.testing.assert_close(trajectory[-1], ref_all[-1], rtol=0, atol=0)
    assert not torch.allclose(ref3[-1], ref_all[-1], atol=1e-4)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm"])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_schedulers_from_the_dit_config(make_pipeline, name, learn_sigma):
    pipe = make_pipeline(learn_sigma=learn_sigma)
    pipe.scheduler = scheduler_by_name(name, dit_scheduler(learn_sigma).config)
    config_before = dict(pipe.scheduler.config)
    images = pipe([1, 2], num_inference_steps=STEPS, generator=seeded(2), output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert dict(pipe.scheduler.config) == config_before  # the user's scheduler is left as set


def test_dpm_solver_with_learned_range_config_on_4_channels(make_pipeline):
    """diffusers' DPM-Solver slices a learned-variance output to 3 channels; 4-channel latents must still work."""
    pipe = make_pipeline()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(dit_scheduler().config)
    assert pipe.scheduler.config.variance_type == "learned_range"
    got = pipe([1, 2], num_inference_steps=STEPS, generator=seeded(), output_type="pt").images
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(dit_scheduler().config, variance_type=None)
    want = pipe([1, 2], num_inference_steps=STEPS, generator=seeded(), output_type="pt").images
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_learned_range_ddpm_on_a_model_without_learned_sigma(make_pipeline):
    """DiTPipeline crashes here; the scheduler falls back to its fixed variance."""
    pipe = make_pipeline(learn_sigma=False, scheduler=dit_scheduler(learn_sigma=True))
    got = pipe([1], num_inference_steps=STEPS, generator=seeded(1), output_type="pt").images
    pipe.scheduler = dit_scheduler(learn_sigma=False)
    want = pipe([1], num_inference_steps=STEPS, generator=seeded(1), output_type="pt").images
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_layerwise_cast_transformer_samples_close_to_the_float32_one(make_pipeline):
    """``enable_layerwise_casting`` on the transformer: the pipeline's noise takes the compute dtype, not float8."""
    pipe = make_pipeline()
    want = pipe([1, 2], num_inference_steps=STEPS, generator=seeded(), output_type="pt").images
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    got = pipe([1, 2], num_inference_steps=STEPS, generator=seeded(), output_type="pt").images
    assert got.dtype == torch.float32
    assert 0 < ((got - want).norm() / want.norm()).item() < 2**-4  # float8 e4m3's unit roundoff


def test_batch_size_splits_without_changing_images(make_pipeline):
    pipe = make_pipeline()
    labels = [0, 1, 2, 3, 4]
    whole = pipe(labels, num_inference_steps=STEPS, generator=seeded(5), output_type="np").images
    calls, handle = record_calls(pipe.transformer)
    split = pipe(labels, num_inference_steps=STEPS, generator=seeded(5), batch_size=2, output_type="np").images
    handle.remove()
    assert sorted({batch for batch, _ in calls}) == [2, 4]  # 2 + 2 + 1 images, doubled for guidance
    np.testing.assert_allclose(split, whole, atol=1e-5)


def test_one_generator_is_reproducible(make_pipeline):
    pipe = make_pipeline()
    a = pipe([1, 2], num_inference_steps=STEPS, generator=seeded(), output_type="np").images
    b = pipe([1, 2], num_inference_steps=STEPS, generator=seeded(), output_type="np").images
    c = pipe([1, 2], num_inference_steps=STEPS, generator=seeded(seed=1), output_type="np").images
    assert np.array_equal(a, b) and not np.allclose(a, c)


# ---------------------------------------------------------------------- labels


def test_labels_by_name_case_insensitive_and_synonyms(make_pipeline):
    pipe = make_pipeline()
    assert pipe.get_label_ids(["golden retriever", "RETRIEVER", "Golden Retriever, retriever", "Otter", 5, "7"]) == [
        3, 3, 3, 4, 5, 7,
    ]
    assert pipe.get_label_ids(torch.tensor([1, 2])) == [1, 2]
    assert pipe.label_name(3) == "Golden Retriever" and pipe.labels["synonym0"] == 0
    by_name = pipe(["otter", "golden retriever"], num_inference_steps=STEPS, generator=seeded(), output_type="np")
    by_id = pipe([4, 3], num_inference_steps=STEPS, generator=seeded(), output_type="np")
    np.testing.assert_array_equal(by_name.images, by_id.images)


@pytest.mark.parametrize(
    "labels, ids",
    [
        (3, [3]),
        ([1, 2], [1, 2]),
        ((1, 2), [1, 2]),
        (torch.tensor([1, 2]), [1, 2]),
        (torch.tensor(4), [4]),
        (np.array([5, 6]), [5, 6]),
        ([torch.tensor(3), np.int64(5)], [3, 5]),
        ("otter", [4]),
        (["otter", 3, "7"], [4, 3, 7]),
        ([[1], [1], [2]], [1, 1, 2]),
        ([["otter"], [3, [5]]], [4, 3, 5]),
        (torch.tensor([[1, 2], [3, 4]]), [1, 2, 3, 4]),
        (np.array([[5], [6]]), [5, 6]),
        ([torch.tensor([1, 2]), 3], [1, 2, 3]),
    ],
    ids=["int", "list", "tuple", "1d-tensor", "0d-tensor", "numpy", "list-of-0d", "name", "mixed", "nested-list",
         "nested-names", "2d-tensor", "2d-array", "list-of-tensors"],
)
def test_class_labels_in_every_form_dit_pipeline_takes(make_pipeline, labels, ids):
    """What ``DiTPipeline`` takes, read as it reads it (``torch.tensor(class_labels).reshape(-1)``), and names."""
    pipe = make_pipeline()
    assert pipe.get_label_ids(labels) == ids


def test_a_label_tensor_samples_what_the_list_samples(make_pipeline):
    pipe = make_pipeline(pixel=True)
    kwargs = dict(num_inference_steps=STEPS, output_type="np")
    from_tensor = pipe(torch.tensor([2, 6]), generator=seeded(), **kwargs).images
    np.testing.assert_array_equal(from_tensor, pipe([2, 6], generator=seeded(), **kwargs).images)
    from_int = pipe(2, generator=seeded(), **kwargs).images
    np.testing.assert_array_equal(from_int, pipe([2], generator=seeded(), **kwargs).images)


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (torch.tensor([0, 10]), ValueError, r"class id 10 is out of range.*0\.\.9"),
        (torch.tensor([1.0, 2.0]), TypeError, r"class label 1\.0 of type float is neither a class id \(int\)"),
        ([True], TypeError, "class label True of type bool"),
        ([[1, 2.5]], TypeError, r"class label 2\.5 of type float"),
        (None, TypeError, r"class_labels must be a class id, a class name, a list of them \(nested lists"),
    ],
    ids=["tensor-out-of-range", "float-tensor", "bool", "nested-float", "none"],
)
def test_bad_class_labels_name_the_value_and_what_is_expected(make_pipeline, labels, error, match):
    with pytest.raises(error, match=match):
        make_pipeline()(labels, num_inference_steps=STEPS)


def test_ambiguous_name_asks_for_the_id(make_pipeline):
    pipe = make_pipeline(id2label={0: "crane", 1: "crane, derrick"})
    assert pipe.get_label_ids(["derrick"]) == [1]
    with pytest.raises(ValueError, match=r"ambiguous.*0 \(crane\).*1 \(crane, derrick\)"):
        pipe.get_label_ids(["crane"])


# ---------------------------------------------------------------------- bad input


def test_unknown_class_name_suggests_closest(make_pipeline):
    pipe = make_pipeline()
    with pytest.raises(ValueError, match=r"unknown class name 'golden retreiver'.*'golden retriever'"):
        pipe(["golden retreiver"], num_inference_steps=STEPS)


def test_unknown_class_name_with_nothing_close_lists_the_classes():
    from sdt_gen.pipelines import ClassNames

    digits = ClassNames({i: str(i) for i in range(10)}, 10)
    with pytest.raises(ValueError, match=r"unknown class name 'sevn'; this pipeline's classes are '0', '1', .*'9'$"):
        digits.lookup("sevn")
    many = ClassNames({i: f"class {i}" for i in range(30)}, 30)
    with pytest.raises(ValueError, match=r"'zebra'; this pipeline's classes are 'class 0', .*'class 11' and 18 more"):
        many.lookup("zebra")


def test_name_without_id2label(make_pipeline):
    pipe = make_pipeline(id2label=None)
    assert pipe.config.id2label is None and pipe.id2label == {}
    with pytest.raises(ValueError, match="no id2label"):
        pipe(["otter"], num_inference_steps=STEPS)


@pytest.mark.parametrize("bad", [10, -1, 1000])
def test_class_id_out_of_range(make_pipeline, bad):
    pipe = make_pipeline()
    with pytest.raises(ValueError, match=rf"class id {bad} is out of range.*0\.\.9"):
        pipe([1, bad], num_inference_steps=STEPS)


def test_id2label_outside_the_model(make_transformer):
    with pytest.raises(ValueError, match="class id 10"):
        SDTPipeline(make_transformer(), dit_scheduler(), id2label={10: "extra"})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=-3), "num_inference_steps"),
        (dict(guidance_scale=-0.5), "guidance_scale"),
        (dict(output_type="jpg"), "output_type"),
        (dict(batch_size=0), "batch_size"),
        (dict(guided_channels=5), "guided_channels"),
        (dict(generator=[torch.Generator()]), "generators"),
        (dict(latents=torch.zeros(2, 4, 4, 4)), "latents"),
    ],
)
def test_bad_arguments(make_pipeline, kwargs, match):
    pipe = make_pipeline()
    with pytest.raises(ValueError, match=match):
        pipe([1, 2], **kwargs)


def test_empty_labels(make_pipeline):
    with pytest.raises(ValueError, match="empty"):
        make_pipeline()([])


@pytest.fixture
def saved(make_pipeline, tmp_path):
    folder = tmp_path / "saved"
    make_pipeline().save_pretrained(folder)
    return folder


def test_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SDTPipeline.from_pretrained(tmp_path / "nowhere")


def test_folder_without_model_index(saved):
    (saved / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        SDTPipeline.from_pretrained(saved)


@pytest.mark.parametrize("component", ["transformer", "vae", "scheduler"])
def test_folder_missing_a_component(saved, component):
    shutil.rmtree(saved / component)
    with pytest.raises(FileNotFoundError, match=f"lacks the '{component}' component"):
        SDTPipeline.from_pretrained(saved)


def test_folder_missing_weights(saved):
    (saved / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="'transformer' component's weights"):
        SDTPipeline.from_pretrained(saved)


def test_model_index_without_transformer(saved):
    index = json.loads((saved / "model_index.json").read_text())
    del index["transformer"]
    (saved / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="lacks the 'transformer' component"):
        SDTPipeline.from_pretrained(saved)


def test_ddim_scheduler_name_lookup():
    assert isinstance(scheduler_by_name("ddim", dit_scheduler().config), DDIMScheduler)
    with pytest.raises(ValueError, match="unknown scheduler"):
        scheduler_by_name("lms")


def test_diffusion_pipeline_from_pretrained_returns_an_sdt_pipeline_in_a_fresh_process(tmp_path, make_pipeline):
    pipe = make_pipeline(pixel=True)
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["_class_name"] == ["pipeline_sdt", "SDTPipeline"]
    script = textwrap.dedent(f"""
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path / "pipe")!r}, trust_remote_code=True)
        print(type(pipe).__name__, type(pipe.transformer).__name__, pipe.id2label[4])
        print(pipe(class_labels=[4], num_inference_steps=2, output_type="np").images.shape)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["SDTPipeline SDTTransformer2DModel otter", "(1, 8, 8, 3)"]


def test_a_changed_loader_file_is_not_run(tmp_path, make_pipeline):
    make_pipeline(pixel=True).save_pretrained(tmp_path / "pipe")
    assert type(SDTPipeline.from_pretrained(tmp_path / "pipe")) is SDTPipeline
    (tmp_path / "pipe" / "pipeline_sdt.py").write_text("raise SystemExit('ran untrusted code')\n")
    with pytest.raises(ValueError, match="is not the loader file SDTPipeline writes"):
        SDTPipeline.from_pretrained(tmp_path / "pipe")


def test_loading_a_pipeline_older_than_its_runs_newest_checkpoint_says_how_to_refresh_it(make_pipeline, tmp_path):
    from sdt_gen.files import write_manifest
    from sdt_gen.pipelines import EXPORT_RECORD, stale_export_note

    run_dir = tmp_path / "000-SDT-Ti-2-digits"
    make_pipeline().save_pretrained(run_dir / "pipeline")
    write_manifest(run_dir / "pipeline", EXPORT_RECORD, step=700)
    (run_dir / "checkpoints" / "step-0000700").mkdir(parents=True)
    assert stale_export_note(run_dir / "pipeline") is None  # the export is of the newest checkpoint
    (run_dir / "checkpoints" / "step-0001049").mkdir()
    note = stale_export_note(run_dir / "pipeline")
    assert "holds the EMA weights of step 700, but its run has a newer checkpoint, step-0001049" in note
    assert f"python train_dit.py --resume {run_dir / 'checkpoints' / 'step-0001049'} --max-steps 1049" in note
    from sdt_gen.pipelines.pipeline_sdt import StalePipelineWarning

    with pytest.warns(StalePipelineWarning, match="holds the EMA weights of step 700"):
        SDTPipeline.from_pretrained(run_dir / "pipeline")
    assert stale_export_note(tmp_path / "elsewhere") is None  # a pipeline outside a run folder: nothing to say


# ----------------------------------------------------------------------------- guidance interval


def timesteps_and_batches(pipe, labels, **kwargs) -> tuple[torch.Tensor, list]:
    timesteps = []

    def hook(_module, args, kwargs_):
        timesteps.append((float(args[1][0]), args[0].shape[0]))

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    images = pipe(labels, output_type="pt", **kwargs).images
    handle.remove()
    return images, timesteps


@pytest.mark.parametrize("scheduler", ["ddpm", "dpm", "euler"])
def test_a_guidance_interval_over_every_step_is_plain_guidance_and_an_empty_one_the_conditional_model(
    make_pipeline, scheduler
):
    flow = scheduler == "euler"
    pipe = make_pipeline(pixel=True, learn_sigma=not flow, objective="flow" if flow else "ddpm")
    pipe.scheduler = scheduler_by_name(scheduler, pipe.scheduler.config)
    noise = torch.randn(2, 3, 8, 8, generator=seeded())

    def run(**kwargs):  # a fresh generator each time: DDPM draws its step noise from it
        return timesteps_and_batches(pipe, [2, 6], latents=noise, num_inference_steps=STEPS, generator=seeded(2),
                                     **kwargs)

    plain, _ = run(guidance_scale=4.0)
    everywhere, _ = run(guidance_scale=4.0, guidance_interval=(0, 1))
    torch.testing.assert_close(everywhere, plain, rtol=0, atol=0)
    conditional, _ = run(guidance_scale=1.0)
    nowhere, batches = run(guidance_scale=4.0, guidance_interval=(0.123, 0.123))
    assert all(batch == 2 for _, batch in batches)  # no step sits at 0.123: one conditional pass each
    torch.testing.assert_close(nowhere, conditional, rtol=0, atol=0)


def test_the_guidance_interval_is_the_timestep_over_the_training_timesteps(make_pipeline):
    pipe = make_pipeline(pixel=True)
    _, calls = timesteps_and_batches(pipe, [2, 6], guidance_scale=4.0, guidance_interval=(0.2, 0.7),
                                     num_inference_steps=10)
    assert len(calls) == 10
    for timestep, batch in calls:  # DDPM timesteps 999, 888, ...: guided (two halves) exactly inside [200, 700]
        assert batch == (4 if 200 <= timestep <= 700 else 2), (timestep, batch)
    assert {batch for _, batch in calls} == {2, 4}


@pytest.mark.parametrize("interval", [(0.6, 0.4), (-0.1, 0.5), (0.2, 1.5), (0.3,), "ab"])
def test_a_bad_guidance_interval_is_named(make_pipeline, interval):
    with pytest.raises(ValueError, match="guidance_interval must"):
        make_pipeline(pixel=True)([1], guidance_interval=interval, num_inference_steps=1)


def test_the_flow_shift_reaches_the_flow_schedulers_only():
    shifted = chosen_scheduler(flow_scheduler(), "heun", 3.0)
    assert type(shifted).__name__ == "FlowMatchHeunDiscreteScheduler" and shifted.config.shift == 3.0
    assert chosen_scheduler(flow_scheduler(), None, 2.0).config.shift == 2.0
    shifted.set_timesteps(4)
    unshifted = chosen_scheduler(flow_scheduler(), "heun")
    unshifted.set_timesteps(4)
    assert (shifted.sigmas[1:-1] > unshifted.sigmas[1:-1]).all()  # more of the steps at high noise
    with pytest.raises(ValueError, match="flow shift .* applies to the flow schedulers"):
        chosen_scheduler(DDIMScheduler(), None, 3.0)


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_pipelines_saved_before_the_objective_table_sample_as_then(objective):
    """``pipelines_v0``: a tiny pipeline of each objective and 2 images of 4 guided steps, saved by the code before
    the objective's rules moved into ``sdt_gen.diffusion.OBJECTIVE_RULES``."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "fixtures" / "pipelines_v0" / objective
    assert_pipeline_samples_as_saved(folder, objective)
