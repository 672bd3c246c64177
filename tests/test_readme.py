"""Every README block runs as written, in README order, in one temporary folder.

The blocks are read from README.md when the test runs, so what is tested is what the README says.
What a user has and this machine has not is replaced by tiny stand-ins made here:

- external paths (``/data/...``, ``/models/...``, DiT's checkpoints, a diffusers DiT folder, a Hub repo
  in a hand-laid Hugging Face cache, Inception and VGG16 weights in torch's hub cache);
- presets bigger than a CPU trains in seconds (``SDT-XL/2``, ``SDT-B/2``, ``SDT-H-T``) become one-block
  models of the same kind, so run folders keep the names the README uses;
- budgets (steps, samples, epochs, seeds), appended as flags after the command's own flags, so every
  flag the README gives is still parsed and checked as written.

Run numbers (``results/003-...``) depend on what ran before: a run path whose number is absent is read
as the newest run of that name. ``accelerate launch`` of one process on CPU runs the script as ``python``
does. What cannot run here is skipped visibly (a warning per command, with the reason): installs, several
GPUs or machines, and template lines (``...``). A server (the demo) is built and not started.
It is a slow test: ``python -m pytest -m slow tests/test_readme.py``.
"""

from __future__ import annotations

import json
import re
import runpy
import shlex
import sys
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from helpers import (
    cache_in_hub,
    library_warnings,
    random_inception_weights,
    random_vgg16_weights,
    refuse_network,
    tiny_dit,
    tiny_vae,
)

ROOT = Path(__file__).resolve().parents[1]
WORDNET_IDS = [f"n{i:08d}" for i in range(1000)]
TINY_DENOISER = dict(depth=1, hidden_size=32, num_heads=2)
TINY_CLASSIFIER = dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], heads=[2, 2, 4, 4], head_hidden_size=32)
RUN_PATH = re.compile(r"results/\d{3}-([\w.-]+)")
# Library warnings a README command may print here and not on a user's machine: the ImageNet recipe's 4 data
# loader workers on this 2-core machine.
MACHINE_WARNINGS = re.compile(r"This DataLoader will create \d+ worker processes in total")


class ReadmeCommandSkipped(UserWarning):
    """A README command that cannot run on this machine, with the reason."""


@dataclass
class Block:
    line: int
    language: str
    code: str


def readme_blocks() -> list[Block]:
    text = (ROOT / "README.md").read_text()
    return [
        Block(text[: match.start()].count("\n") + 2, match.group(1), match.group(2))
        for match in re.finditer(r"^```(bash|python)\n(.*?)^```", text, flags=re.S | re.M)
    ]


def shell_commands(code: str) -> list[list[str]]:
    """The block's commands as argument lists: continuations joined, comments dropped, ``&&`` split."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while "&&" in words:
            commands.append(words[: words.index("&&")])
            words = words[words.index("&&") + 1:]
        if words:
            commands.append(words)
    return commands


# ---------------------------------------------------------------------------------------------------- stand-ins


def image(path: Path, size: int, seed: int) -> None:
    """A smooth random RGB image: 4x4 colours upsampled (small PNGs, unlike noise)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(coarse).resize((size, size), Image.BILINEAR).save(path)


def imagenet_folders(root: Path) -> None:
    """ImageNet-1k's layout, one 8x8 image per WordNet-id class, in ``train/`` and ``val/``."""
    for split in ("train", "val"):
        for index, name in enumerate(WORDNET_IDS):
            image(root / split / name / "0.png", 8, index)


def original_dit_file(path: Path, train_checkpoint: bool = False) -> None:
    """A DiT-S-wide, one-block DiT of ImageNet's 1000 classes on SD's 32x32x4 latents, in DiT's own format."""
    from dit_reference import original_dit

    weights = original_dit(scale=0.01, hidden=384, depth=1, heads=6, patch=2, channels=4, size=32, classes=1000)
    state = weights.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "ema": state, "opt": {}, "args": None} if train_checkpoint else state, path)


def diffusers_dit_folder(path: Path) -> None:
    from diffusers import DDIMScheduler, DiTPipeline

    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False)
    DiTPipeline(transformer=tiny_dit(sample_size=32), vae=sd_sized_vae(), scheduler=scheduler).save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "id2label": {"207": "golden retriever"}}))


def sd_sized_vae():
    return tiny_vae(levels=4, sample_size=256)  # SD's factor of 8: 256 px <-> 32x32x4


def hub_pipeline(workspace: Path) -> None:
    from sdt_gen import SDTPipeline, SDTTransformer2DModel

    torch.manual_seed(0)
    transformer = SDTTransformer2DModel(sample_size=8, patch_size=2, in_channels=3, num_classes=10, **TINY_DENOISER)
    pipe = SDTPipeline(transformer=transformer, scheduler=SDTPipeline.dit_scheduler(), vae=None,
                       id2label={i: str(i) for i in range(10)})
    pipe.save_pretrained(workspace / "hub-pipeline")
    cache_in_hub(workspace / "hub-pipeline", workspace / "hf", "org/sdt-xl-2-256")


def reference_npz(path: Path, size: int = 256) -> None:
    """ADM's reference batch layout (``arr_0``: N x H x W x 3 uint8) at ImageNet 256's size."""
    for i in range(16):
        image(path.parent / "reference" / f"{i}.png", size, 300 + i)
    np.savez(path, arr_0=np.stack([np.asarray(Image.open(path.parent / "reference" / f"{i}.png")) for i in range(16)]))


def study_evaluator(path: Path) -> None:
    """A random-weights 1-channel digits evaluator: training one is the slow study test's job."""
    from sdt_gen import SDTConfig, SDTForImageClassification, save_classifier

    torch.manual_seed(0)
    config = SDTConfig.from_preset("SDT-H-XT", num_labels=10, id2label={i: str(i) for i in range(10)}, image_size=32,
                                   num_channels=1, decay_mode="none")
    save_classifier(SDTForImageClassification(config).eval(), path)


# Made when a block first names them (DiT's results/ folder must not take a run number earlier than the README's).
STAND_INS = {
    "/data/imagenet": lambda w: imagenet_folders(w / "data" / "imagenet"),
    "/models/sd-vae-ft-ema": lambda w: sd_sized_vae().save_pretrained(w / "models" / "sd-vae-ft-ema"),
    "DiT-XL-2-256x256.pt": lambda w: original_dit_file(w / "DiT-XL-2-256x256.pt"),
    "results/000-DiT-XL-2/checkpoints/0400000.pt": lambda w: original_dit_file(
        w / "results" / "000-DiT-XL-2" / "checkpoints" / "0400000.pt", train_checkpoint=True),
    "local/DiT-XL-2-256": lambda w: diffusers_dit_folder(w / "local" / "DiT-XL-2-256"),
    "org/sdt-xl-2-256": hub_pipeline,
    "my_images/": lambda w: [image(w / "my_images" / f"{i}.png", 64, 100 + i) for i in range(10)],
    "/data/ref_images/": lambda w: [image(w / "data" / "ref_images" / f"{i}.png", 64, 200 + i) for i in range(10)],
    "/data/VIRTUAL_imagenet256_labeled.npz": lambda w: reference_npz(w / "data" / "VIRTUAL_imagenet256_labeled.npz"),
    "/models/weights-inception-2015-12-05-6726825d.pth": lambda w: random_inception_weights(
        w / "models" / "weights-inception-2015-12-05-6726825d.pth"),
    "eval_fid.py": lambda w: (
        random_inception_weights(w / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"),
        random_vgg16_weights(w / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth")),
    "decay_study.py": lambda w: study_evaluator(w / "evaluator"),
}


def budget(script: str, args: list[str], workspace: Path) -> list[str]:
    """Flags appended to a README command so it runs in seconds (its own flags are still parsed first)."""
    if script == "train_dit.py":
        return ["--max-steps", "2", "--global-batch-size", "4", "--num-workers", "0", "--sample-steps", "2",
                "--samples-per-class", "1", "--sample-classes", "0", "1"]
    if script == "train_classifier.py":
        return ["--epochs", "1", *(["--image-size", "32"] if "--data-path" in args else [])]
    if script == "sample.py":
        return ["--steps", "2"]
    if script == "eval_fid.py" and "--model" in args:
        return ["--num-samples", "8", "--steps", "2", "--batch-size", "8", "--kid-subset-size", "4"]
    if script == "benchmarks/decay_study.py":
        flags = ["--steps", "4", "--evals", "2", "--seeds", "0", "--num-samples", "12", "--sample-steps", "2",
                 "--batch-size", "64", "--heldout-images", "20", "--reference-images", "100",
                 "--bootstrap-replicates", "5"]
        # The MNIST evaluator's stand-in; a latents study is scored with Inception against its --ref.
        return flags if "--latents-path" in args else [*flags, "--classifier", str(workspace / "evaluator")]
    return []


# ---------------------------------------------------------------------------------------------------- running


def resolve_runs(text: str, workspace: Path) -> str:
    """``results/NNN-<name>`` that does not exist -> the newest run of that name (run numbers depend on history)."""

    def newest(match: re.Match) -> str:
        if (workspace / match.group(0)).exists():
            return match.group(0)
        runs = sorted((workspace / "results").glob(f"[0-9][0-9][0-9]-{match.group(1)}"))
        return f"results/{runs[-1].name}" if runs else match.group(0)

    return RUN_PATH.sub(newest, text)


def make_stand_ins(text: str, workspace: Path, made: set[str]) -> None:
    for name in STAND_INS:
        if name in text and name not in made:
            STAND_INS[name](workspace)
            made.add(name)


def skip(block: Block, words: list[str], reason: str) -> None:
    warnings.warn(ReadmeCommandSkipped(f"README.md:{block.line}: {shlex.join(words)}: {reason}"), stacklevel=2)


def run_command(block: Block, words: list[str], workspace: Path) -> None:
    if words[0] == "pip":
        return skip(block, words, "an install: the test runs in the installed project")
    if words[:3] == ["python", "-m", "pytest"]:
        return skip(block, words, "the test suite, which this test is part of")
    if "..." in words:
        return skip(block, words, "a template ('...' stands for a command's flags)")
    if words[:2] == ["accelerate", "launch"]:
        script_at = next(i for i, w in enumerate(words) if w.endswith(".py"))
        launch = words[2:script_at]
        if "--num_machines" in launch:
            return skip(block, words, "needs several machines")
        if launch:
            return skip(block, words, f"needs several GPUs ({shlex.join(launch)})")
        words = ["python", *words[script_at:]]  # one process on CPU: what accelerate launch runs
    assert words[0] == "python", f"README.md:{block.line}: no runner for {shlex.join(words)}"
    words = [f"{workspace}{w}" if w.startswith(("/data/", "/models/")) else w for w in words]
    if words[1] == "-m":
        module, args = words[2], words[3:]
        argv = [module, *args, *budget(module, args, workspace)]
        call = partial(runpy.run_module, module, run_name="__main__", alter_sys=True)
    else:
        script, args = words[1], words[2:]
        argv = [str(ROOT / script), *args, *budget(script, args, workspace)]
        call = partial(runpy.run_path, str(ROOT / script), run_name="__main__")
    old_argv, old_path = sys.argv, sys.path
    sys.argv = argv
    sys.path = [str((ROOT / argv[0]).parent) if words[1] != "-m" else str(workspace), *sys.path]  # as python puts it
    AcceleratorState._reset_state(reset_partial_state=True)  # each command is a new process
    try:
        with library_warnings() as caught:
            call()
    except SystemExit as done:
        assert done.code in (0, None), f"README.md:{block.line}: {shlex.join(words)} exited with {done.code}"
    finally:
        sys.argv, sys.path = old_argv, old_path
    return [f"README.md:{block.line}: {shlex.join(words)}: {message}" for message in caught
            if not MACHINE_WARNINGS.search(message)]


def run_block(block: Block, workspace: Path, made: set[str]) -> list[str]:
    """Runs the block's commands; returns the library warnings they printed."""
    code = resolve_runs(block.code, workspace)
    make_stand_ins(code, workspace, made)
    if block.language == "python":
        with library_warnings() as caught:
            exec(compile(code, f"README.md:{block.line}", "exec"), {"__name__": "__main__"})
        return [f"README.md:{block.line}: {message}" for message in caught]
    return [line for words in shell_commands(code) for line in run_command(block, words, workspace) or []]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    import gradio
    from huggingface_hub import constants as hub_constants

    from sdt_gen import SDT_CLASSIFIER_PRESETS, SDT_PRESETS

    refuse_network(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read both when it was imported: a new process would read them as set here.
    monkeypatch.setattr(hub_constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("SDT-XL/2", "SDT-B/2"):
        monkeypatch.setitem(SDT_PRESETS, name, {**SDT_PRESETS[name], **TINY_DENOISER})
    monkeypatch.setitem(SDT_CLASSIFIER_PRESETS, "SDT-H-T", {**SDT_CLASSIFIER_PRESETS["SDT-H-T"], **TINY_CLASSIFIER})
    launched = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    return tmp_path, launched


def test_readme_is_read_whole():
    blocks = readme_blocks()
    text = (ROOT / "README.md").read_text()
    assert len(blocks) == text.count("```python") + text.count("```bash") >= 15
    assert ["pip", "install", "-e", ".[dev]"] in shell_commands(blocks[0].code)


@pytest.mark.slow  # about 15 minutes on 2 CPU cores, most of it in the six decay-study commands
def test_every_readme_block_runs_in_order(workspace):
    folder, launched = workspace
    made: set[str] = set()
    noise = [line for block in readme_blocks() for line in run_block(block, folder, made)]
    assert noise == [], "README commands printed library warnings:\n" + "\n".join(noise)
    assert (folder / "results" / "000-SDT-Ti-2-digits" / "pipeline" / "model_index.json").is_file()  # quick start
    assert len(launched) == 3 and launched[-1]["share"] is True  # the demo's three commands built their app
