"""train_dit.py end to end: bundled default, resume, atomic checkpoints, NaN guard, latents, 2 processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_dit  # noqa: E402

from sdt_gen import SDTPipeline  # noqa: E402

# A few cheap steps of the bundled default: tiny batches, grids of 2 classes x 1 sample, 2 sampling steps.
FAST = [
    "--global-batch-size", "8", "--log-every", "1", "--ckpt-every", "2", "--sample-steps", "2",
    "--samples-per-class", "1", "--sample-classes", "0", "1", "--num-workers", "0",
]


def run(tmp_path, *extra):
    args = train_dit.build_parser().parse_args(["--results-dir", str(tmp_path / "results"), *FAST, *extra])
    return train_dit.main(args)


def env_one_thread():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_short_default_run_writes_a_loadable_pipeline_and_grid(tmp_path):
    run_dir = run(tmp_path, "--max-steps", "2")
    assert run_dir.name == "000-SDT-Ti-2-digits"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "SDT-Ti/2" and config["lr"] == 2e-3  # the digits defaults were applied
    assert "step 0000002 loss" in (run_dir / "log.txt").read_text()
    grid = Image.open(run_dir / "samples" / "step-0000002.png")
    assert grid.height >= 2 * 64  # two rows of 16 px samples shown at 4x

    pipe = SDTPipeline.from_pretrained(run_dir / "pipeline")
    assert pipe.id2label == {i: str(i) for i in range(10)}
    assert pipe.scheduler.config.variance_type == "learned_range"
    images = pipe(class_labels=[3], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 1)


def test_flow_objective_run_exports_a_flow_pipeline_that_samples(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    run_dir = run(tmp_path, "--max-steps", "2", "--objective", "flow", "--time-sampling", "logit_normal")
    assert run_dir.name == "000-SDT-Ti-2-digits-flow"
    assert "step 0000002 loss" in (run_dir / "log.txt").read_text()
    assert (run_dir / "samples" / "step-0000002.png").is_file()  # the grid sampled with Euler

    pipe = SDTPipeline.from_pretrained(run_dir / "pipeline")
    assert pipe.transformer.config.objective == "flow" and not pipe.transformer.config.learn_sigma
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    images = pipe(class_labels=[3], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 1) and np.isfinite(images).all()
    # a later run of the other objective is a different run, numbered after it
    assert run(tmp_path, "--max-steps", "1").name == "001-SDT-Ti-2-digits"
    with pytest.raises(ValueError, match="snr_gamma weights DDPM's noise MSE"):
        run(tmp_path, "--max-steps", "1", "--objective", "flow", "--snr-gamma", "5")


def test_rope_run_exports_a_rope_pipeline_that_samples(tmp_path):
    run_dir = run(tmp_path, "--max-steps", "2", "--position-embedding", "rope", "--rope-base", "100", "--decay-mode", "cag")
    pipe = SDTPipeline.from_pretrained(run_dir / "pipeline")
    config = pipe.transformer.config
    assert (config.position_embedding, config.rope_base, config.decay_mode) == ("rope", 100.0, "cag")
    assert pipe.transformer.pos_embed is None and pipe.transformer.rope is not None
    images = pipe(class_labels=[3], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 1) and np.isfinite(images).all()
    assert "positions `rope`" in (run_dir / "pipeline" / "README.md").read_text()


def test_grids_follow_sample_every_and_the_loss_is_read_at_log_steps_only(tmp_path, monkeypatch):
    from accelerate import Accelerator

    reduces = []
    real_reduce = Accelerator.reduce
    monkeypatch.setattr(Accelerator, "reduce", lambda self, *a, **k: reduces.append(1) or real_reduce(self, *a, **k))
    run_dir = run(tmp_path, "--max-steps", "5", "--sample-every", "2", "--ckpt-every", "5", "--log-every", "5")
    grids = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert grids == ["step-0000002.png", "step-0000004.png", "step-0000005.png"]  # between checkpoints too
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith(".")) == ["step-0000005"]
    assert len(reduces) == 1  # one reduce (and host read) per log step, not one per step


def final_weights(run_dir: Path) -> dict:
    return load_file(str(sorted((run_dir / "checkpoints").iterdir())[-1] / "model.safetensors"))


def test_exact_resume_equals_uninterrupted_run(tmp_path):
    straight = run(tmp_path / "a", "--max-steps", "4")
    run(tmp_path / "b", "--max-steps", "2")
    resumed = run(tmp_path / "b", "--max-steps", "4", "--resume", "latest")
    assert resumed.name == "000-SDT-Ti-2-digits", "resume latest must continue the same run folder"
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-6, key
    ema_a = torch.load(straight / "checkpoints" / "step-0000004" / "custom_checkpoint_0.pkl", weights_only=False)
    ema_b = torch.load(resumed / "checkpoints" / "step-0000004" / "custom_checkpoint_0.pkl", weights_only=False)
    for x, y in zip(ema_a["shadow_params"], ema_b["shadow_params"]):
        assert (x - y).abs().max() <= 1e-6


def test_run_killed_while_checkpointing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import accelerate

    real_save = accelerate.Accelerator.save_state

    def dying_save(self, output_dir=None, **kwargs):
        if output_dir.endswith("step-0000004"):
            real_save(self, output_dir, **kwargs)  # the files land ...
            raise KeyboardInterrupt("killed")  # ... but the process dies before the rename
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "--max-steps", "6")
    monkeypatch.setattr(accelerate.Accelerator, "save_state", real_save)
    run_dir = tmp_path / "results" / "000-SDT-Ti-2-digits"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith(".")) == ["step-0000002"]
    resumed = run(tmp_path, "--max-steps", "4", "--resume", "latest")
    assert (resumed / "checkpoints" / "step-0000004" / "model.safetensors").is_file()


def test_nan_loss_stops_and_names_the_step_and_last_checkpoint(tmp_path, monkeypatch):
    from sdt_gen import SDTTransformer2DModel

    real_forward = SDTTransformer2DModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += self.training
        out = real_forward(self, *args, **kwargs)
        return (out[0] * float("nan"),) if self.training and calls["n"] > 2 else out

    monkeypatch.setattr(SDTTransformer2DModel, "forward", forward)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3; the last good checkpoint is .*step-0000002"):
        run(tmp_path, "--max-steps", "6")


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path, "--data-path", str(tmp_path / "missing"), "--vae", str(tmp_path))
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images found"):
        run(tmp_path, "--data-path", str(empty), "--vae", str(tmp_path))
    with pytest.raises(ValueError, match="--image-size 15 is not divisible by the patch size 2"):
        run(tmp_path, "--image-size", "15")
    with pytest.raises(ValueError, match="unknown --model 'SDT-M/2'"):
        run(tmp_path, "--model", "SDT-M/2")


@pytest.fixture
def image_folder_and_vae(tmp_path):
    """Six 32 px RGB images in 2 classes, one corrupt file, and a tiny random VAE (downsampling 2)."""
    from diffusers import AutoencoderKL

    root = tmp_path / "images"
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    vae = AutoencoderKL(
        block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    )
    vae.save_pretrained(tmp_path / "vae")
    return root, tmp_path / "vae"


def test_image_folder_training_in_latent_space(tmp_path, image_folder_and_vae):
    root, vae = image_folder_and_vae
    with pytest.raises(ValueError, match="needs --vae PATH"):
        run(tmp_path, "--data-path", str(root), "--image-size", "32")
    with pytest.raises(FileNotFoundError, match="expected a diffusers AutoencoderKL folder"):
        run(tmp_path, "--data-path", str(root), "--image-size", "32", "--vae", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="divisible by the VAE's downsampling 2 times the patch size 2"):
        run(tmp_path, "--data-path", str(root), "--image-size", "30", "--vae", str(vae), "--model", "SDT-Ti/2")
    with pytest.warns(UserWarning, match="broken.png"):
        run_dir = run(
            tmp_path, "--data-path", str(root), "--image-size", "32", "--vae", str(vae), "--model", "SDT-Ti/2",
            "--global-batch-size", "2", "--max-steps", "2", "--sample-classes", "0",
        )
    pipe = SDTPipeline.from_pretrained(run_dir / "pipeline")
    assert pipe.vae is not None and pipe.id2label == {0: "cat", 1: "dog"}
    assert pipe.transformer.config.in_channels == 4 and pipe.transformer.sample_hw == (16, 16)
    assert pipe(class_labels=["dog"], num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)


def test_latents_decode_with_the_vae_that_encoded_them_unless_told(tmp_path, image_folder_and_vae):
    root, vae = image_folder_and_vae
    latents = tmp_path / "latents"
    run(tmp_path, "--extract-latents", "--data-path", str(root), "--vae", str(vae), "--latents-path", str(latents),
        "--image-size", "32", "--num-workers", "0")
    run_dir = run(tmp_path, "--latents-path", str(latents), "--model", "SDT-Ti/2", "--global-batch-size", "2",
                  "--max-steps", "1", "--sample-classes", "0")
    pipe = SDTPipeline.from_pretrained(run_dir / "pipeline")
    assert pipe(class_labels=[1], num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)  # decoded
    vae.rename(tmp_path / "moved-vae")
    before = sorted(p.name for p in (tmp_path / "results").iterdir())
    with pytest.raises(ValueError, match=r"encoded with '.*vae'.*cannot be loaded.*pass --vae PATH"):
        run(tmp_path, "--latents-path", str(latents), "--model", "SDT-Ti/2", "--global-batch-size", "2")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == before
    run_dir = run(tmp_path, "--latents-path", str(latents), "--vae", str(tmp_path / "moved-vae"), "--model", "SDT-Ti/2",
                  "--global-batch-size", "2", "--max-steps", "1", "--sample-classes", "0")
    assert SDTPipeline.from_pretrained(run_dir / "pipeline").vae is not None


def accelerate_launch(*args, timeout=900):
    # accelerate's --cpu launcher starts one process; --multi_gpu starts torchrun, and the script's --cpu picks gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train_dit.py"), "--cpu", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env_one_thread(), timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.slow
def test_two_process_latent_extraction_then_training(tmp_path, image_folder_and_vae):
    from sdt_gen.data import LatentDataset

    root, vae = image_folder_and_vae
    latents = tmp_path / "latents"
    accelerate_launch("--extract-latents", "--data-path", str(root), "--vae", str(vae), "--latents-path",
                      str(latents), "--image-size", "32", "--extract-batch-size", "2", "--num-workers", "0")
    data = LatentDataset(latents)
    assert len(data) == 6 and sorted(data.targets) == [0, 0, 0, 1, 1, 1]  # each good image exactly once
    indices = torch.cat([load_file(str(p))["indices"] for p in latents.glob("shard-*.safetensors")])
    assert sorted(indices.tolist()) == sorted(set(indices.tolist()))

    accelerate_launch("--latents-path", str(latents), "--vae", str(vae), "--model", "SDT-Ti/2",
                      "--results-dir", str(tmp_path / "results"), *FAST, "--global-batch-size", "4", "--max-steps", "2")
    pipe = SDTPipeline.from_pretrained(next((tmp_path / "results").glob("*-latents16")) / "pipeline")
    assert pipe(class_labels=[1], num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)


@pytest.mark.slow
def test_two_process_training_on_the_bundled_default(tmp_path):
    accelerate_launch("--results-dir", str(tmp_path / "results"), *FAST, "--max-steps", "2")
    run_dir = tmp_path / "results" / "000-SDT-Ti-2-digits"
    assert (run_dir / "checkpoints" / "step-0000002" / "random_states_1.pkl").is_file()  # both processes saved
    pipe = SDTPipeline.from_pretrained(run_dir / "pipeline")
    assert pipe(class_labels=[7], num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 1)


def test_mnist_run_trains_on_the_train_split_at_32_pixels(tmp_path):
    run_dir = run(tmp_path, "--dataset", "mnist", "--max-steps", "2")
    assert run_dir.name == "000-SDT-Ti-4-mnist32"
    assert json.loads((run_dir / "config.json").read_text())["image_size"] == 32
    pipe = SDTPipeline.from_pretrained(run_dir / "pipeline")
    config = pipe.transformer.config
    assert (config.sample_size, config.patch_size, config.in_channels, config.num_classes) == (32, 4, 1, 10)
    assert train_dit.exported_step(run_dir / "pipeline") == 2


def test_train_size_trains_on_a_class_balanced_subset_named_in_the_run(tmp_path):
    run_dir = run(tmp_path, "--dataset", "mnist", "--train-size", "40", "--max-steps", "1")
    assert run_dir.name == "000-SDT-Ti-4-mnist32-n40"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["train_size"], config["subset_seed"]) == (40, 0)
    subset = json.loads((run_dir / "train_subset.json").read_text())
    from sdt_gen.data import MNISTDataset, balanced_indices

    assert subset["indices"] == balanced_indices(MNISTDataset("train").targets, 40, seed=0)
    # Another training seed trains on the same images.
    other = run(tmp_path, "--dataset", "mnist", "--train-size", "40", "--max-steps", "1", "--seed", "1")
    assert json.loads((other / "train_subset.json").read_text())["indices"] == subset["indices"]

    # eval_fid.py reads the subset from the run folder: copies of its images are memorized, MNIST's held-out are not.
    import eval_fid

    images = MNISTDataset("train").images[subset["indices"], 0]  # (40, 32, 32) in [-1, 1]
    samples = tmp_path / "copies"
    samples.mkdir()
    for index, image in enumerate(((images + 1) * 127.5).round().byte().numpy()):
        Image.fromarray(image).save(samples / f"{index:06d}_0.png")
    argv = ["--samples-dir", samples, "--metrics", "memorization", "--train-ref", run_dir, "--heldout-ref", "mnist",
            "--out", tmp_path / "eval"]
    scores = eval_fid.main(eval_fid.build_parser().parse_args(list(map(str, argv))))
    assert scores["train_images"] == 40 and scores["memorized_fraction"] == 1.0
    assert scores["heldout_memorized_fraction"] < 0.01  # 1 of the 500 when written: the test's false positives


def test_resume_with_nothing_left_to_train_replaces_a_stale_or_missing_pipeline(tmp_path):
    run_dir = run(tmp_path, "--max-steps", "2")
    exported = (run_dir / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    # Killed after its last checkpoint but before the export: the folder holds an older step.
    (run_dir / "pipeline" / train_dit.EXPORT_RECORD).write_text(json.dumps({"step": 1}))
    run(tmp_path, "--max-steps", "2", "--resume", "latest")
    assert train_dit.exported_step(run_dir / "pipeline") == 2
    assert (run_dir / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == exported
    assert len(list((run_dir / "checkpoints").iterdir())) == 1  # exported again, not checkpointed again

    shutil.rmtree(run_dir / "pipeline")
    run(tmp_path, "--max-steps", "2", "--resume", "latest")
    assert train_dit.exported_step(run_dir / "pipeline") == 2


def test_init_from_an_original_dit_checkpoint_file(tmp_path):
    from dit_reference import original_dit

    from sdt_gen import SDTTransformer2DModel

    # DiT-S's width (so the head count is DiT's preset), one block, on the digits' 1 x 16 x 16 inputs.
    dit = original_dit(scale=0.01, hidden=384, depth=1, heads=6, patch=4, channels=1, size=16, classes=10)
    checkpoint = tmp_path / "0000100.pt"
    torch.save({"model": dit.state_dict(), "ema": dit.state_dict()}, checkpoint)
    run_dir = run(tmp_path, "--max-steps", "1", "--init-from-dit", str(checkpoint), "--decay-mode", "cag")
    config = json.loads((run_dir / "pipeline" / "transformer" / "config.json").read_text())
    assert (config["hidden_size"], config["depth"], config["num_heads"], config["patch_size"]) == (384, 1, 6, 4)
    assert config["decay_mode"] == "cag" and config["decay_init"] == "zero" and config["timestep_freq_shift"] == 0.0
    start = SDTTransformer2DModel.from_dit(checkpoint, decay_mode="cag").eval()
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([3, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(start(x, t, y).sample, dit(x, t, y), rtol=1e-5, atol=1e-4)


def test_pipeline_folder_has_a_model_card_and_push_uploads_it(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, ModelCard

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    run_dir = run(tmp_path, "--max-steps", "2", "--push-to-hub", "me/sdt-digits")
    folder = run_dir / "pipeline"
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "diffusers" and card.data.license == "apache-2.0"
    assert "decay-cag" in card.data.tags and "sdt-gen" in card.data.tags
    assert "![EMA samples](samples.png)" in card.text and (folder / "samples.png").is_file()
    assert "after 2 optimizer steps" in card.text and "train loss" in card.text
    assert "Attention backend that ran in training: `sdpa on cpu (auto)`" in card.text
    assert 'SDTPipeline.from_pretrained("REPO_OR_FOLDER")' in card.text
    assert calls == [("create", "me/sdt-digits", {"exist_ok": True}),
                     ("upload", {"repo_id": "me/sdt-digits", "folder_path": str(folder),
                                 "commit_message": "digits, step 2"})]


@pytest.mark.slow
def test_compiled_training_exports_what_eager_training_does(tmp_path):
    """``--compile`` (Inductor builds C++ kernels: a minute or two on CPU) trains the same numbers as eager, to
    float rounding, through two checkpoints and a resume."""
    flags = ["--max-steps", "2", "--objective", "flow", "--model", "SDT-Ti/4", "--attention-backend", "sdpa"]
    eager = run(tmp_path / "eager", *flags)
    compiled = run(tmp_path / "compiled", *flags[:1], "1", *flags[2:], "--compile")
    compiled = run(tmp_path / "compiled", *flags, "--compile", "--resume", "latest")
    a, b = (load_file(str(d / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")) for d in (eager, compiled))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.parametrize("report_to", ["tensorboard", "none"])
def test_report_to_picks_the_tracker(tmp_path, report_to):
    run_dir = run(tmp_path, "--max-steps", "1", "--report-to", report_to)
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert bool(events) == (report_to == "tensorboard")
    assert json.loads((run_dir / "config.json").read_text())["report_to"] == report_to
    if events:
        assert events[0].parent == run_dir / "tensorboard" / "sdt-gen"
