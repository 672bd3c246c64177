"""Every fenced ``bash`` / ``python`` block of README.md and docs/*.md runs as written, in file order.

The blocks are read from the files when the test runs, so what is tested is what the docs say. Each file runs in
a temporary folder of its own (README.md first); what a user has and this machine has not is replaced by tiny
stand-ins made here:

- external paths (``/data/...``, ``/models/...``, DiT's checkpoints, a diffusers DiT folder, a Hub repo
  in a hand-laid Hugging Face cache, Inception and VGG16 weights in torch's hub cache);
- presets bigger than a CPU trains in seconds (``SDT-XL/2``, ``SDT-B/2``, ``SDT-H-T``) become one-block
  models of the same kind, so run folders keep the names the docs use;
- budgets (steps, samples, epochs, seeds), appended as flags after the command's own flags, so every
  flag the docs give is still parsed and checked as written;
- what a block uses and another file's command makes (the quick start's run, a flow run, the latents run,
  the digits evaluator, a decay study): made first with that command, once per session, and copied in.

Run numbers (``results/003-...``) depend on what ran before: a run path whose number is absent is read
as the newest run of that name. ``accelerate launch`` of one process on CPU runs the script as ``python``
does. What cannot run here is skipped visibly (a warning per command, with the reason): installs, several
GPUs or machines, and template lines (``...``). A server (the demo) is built and not started. Every command
must print no library warning. A block marked ``<!-- slow -->`` on the line before its fence runs only in the
slow test of its file (``python -m pytest -m slow tests/test_docs.py``); every other block runs in the fast one.
"""

from __future__ import annotations

import json
import shutil
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
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WORDNET_IDS = [f"n{i:08d}" for i in range(1000)]
TINY_DENOISER = dict(depth=1, hidden_size=32, num_heads=2)
TINY_CLASSIFIER = dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], heads=[2, 2, 4, 4], head_hidden_size=32)
RUN_PATH = re.compile(r"results/\d{3}-([\w.-]+)")
FENCE = re.compile(r"^(?P<slow><!-- slow -->\n)?```(?P<language>bash|python)\n(?P<code>.*?)^```", flags=re.S | re.M)
SLOW_MARK = "<!-- slow -->"
# Library warnings a documented command may print here and not on a user's machine: the ImageNet recipe's 4 data
# loader workers on this 2-core machine.
MACHINE_WARNINGS = re.compile(r"This DataLoader will create \d+ worker processes in total")


class DocCommandSkipped(UserWarning):
    """A documented command that cannot run on this machine (or in this test), with the reason."""


@dataclass
class Block:
    path: str  # relative to the repository root
    line: int  # of the block's first line of code
    language: str
    code: str
    slow: bool = False

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def doc_blocks(doc: Path) -> list[Block]:
    """The fenced ``bash`` / ``python`` blocks of ``doc``, in order."""
    text = doc.read_text()
    name = str(doc.relative_to(ROOT))
    return [
        Block(name, text[: match.start("code")].count("\n") + 1, match.group("language"), match.group("code"),
              slow=match.group("slow") is not None)
        for match in FENCE.finditer(text)
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


# Made when a block first names them (DiT's results/ folder must not take a run number earlier than the docs').
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
    """Flags appended to a documented command so it runs in seconds (its own flags are still parsed first)."""
    if script == "train_dit.py":
        return ["--max-steps", "2", "--global-batch-size", "4", "--num-workers", "0", "--sample-steps", "2",
                "--samples-per-class", "1", "--sample-classes", "0", "1"]
    if script == "train_classifier.py":
        return ["--epochs", "1", *(["--image-size", "32"] if "--data-path" in args else [])]
    if script == "sample.py":
        return ["--steps", "2"]
    if script == "eval_fid.py" and "--model" in args:
        return ["--num-samples", "8", "--steps", "2", "--batch-size", "8", "--kid-subset-size", "4"]
    if script == "experiments/decay_study.py":
        flags = ["--steps", "4", "--evals", "2", "--seeds", "0", "--num-samples", "12", "--sample-steps", "2",
                 "--batch-size", "64", "--heldout-images", "20", "--reference-images", "100",
                 "--bootstrap-replicates", "5"]
        # The MNIST evaluator's stand-in; a latents study is scored with Inception against its --ref.
        return flags if "--latents-path" in args else [*flags, "--classifier", str(workspace / "evaluator")]
    return []


# ---------------------------------------------------------------------------------------------------- running


@dataclass
class Prerequisite:
    """What a block may use and a command of another file makes: made with that command (on the same budgets)."""

    pattern: str  # a regex: a block that names it needs what ``made`` finds
    commands: list[str]  # as the docs write them
    made: str  # a glob, relative to the workspace, of what the commands leave
    producer: str  # how a word of the commands that make it ends: a command with it is the maker, not a user

    def missing(self, workspace: Path) -> bool:
        return not any(workspace.glob(self.made))


PREREQUISITES = [
    Prerequisite(r"results/\d{3}-SDT-Ti-2-digits/", ["python train_dit.py"], "results/[0-9][0-9][0-9]-SDT-Ti-2-digits",
                 "train_dit.py"),
    Prerequisite(r"results/\d{3}-SDT-Ti-2-digits-flow/", ["python train_dit.py --objective flow"],
                 "results/[0-9][0-9][0-9]-SDT-Ti-2-digits-flow", "train_dit.py"),
    Prerequisite(r"/data/in256-latents", [
        "python train_dit.py --extract-latents --data-path /data/imagenet/train --vae /models/sd-vae-ft-ema "
        "--latents-path /data/in256-latents"], "data/in256-latents", "--extract-latents"),
    Prerequisite(r"results/\d{3}-SDT-XL-2-latents32/", [
        "python train_dit.py --latents-path /data/in256-latents --vae /models/sd-vae-ft-ema --model SDT-XL/2"],
        "results/[0-9][0-9][0-9]-SDT-XL-2-latents32", "train_dit.py"),
    Prerequisite(r"classifiers/\d{3}-SDT-H-XT-digits/", ["python train_classifier.py --results-dir classifiers"],
                 "classifiers/[0-9][0-9][0-9]-SDT-H-XT-digits", "train_classifier.py"),
    Prerequisite(r"studies/mnist-decay/", ["python experiments/decay_study.py"], "studies/mnist-decay",
                 "decay_study.py"),
]


class Session:
    """What a file's test makes and a later file's test may reuse: prerequisites, made once and copied."""

    def __init__(self, folder: Path):
        self.folder = folder

    def provide(self, block: Block, text: str, words: list[str] | None, workspace: Path, made: set[str]) -> list[str]:
        """Make (or copy in) every prerequisite ``text`` (of ``block``) names that the workspace lacks; returns the
        library warnings its commands printed, under the block that needed them."""
        noise = []
        for index, need in enumerate(PREREQUISITES):
            if not re.search(need.pattern, text) or not need.missing(workspace):
                continue
            if words is not None and any(word.endswith(need.producer) for word in words):
                continue  # this command makes it
            cache = self.folder / str(index)
            if not cache.exists():
                for command in need.commands:
                    noise += self.run_code(Block(block.path, block.line, "bash", command), workspace, made)
                for path in workspace.glob(need.made):
                    shutil.copytree(path, cache / path.relative_to(workspace))
            shutil.copytree(cache, workspace, dirs_exist_ok=True)
        return noise

    def run_code(self, block: Block, workspace: Path, made: set[str]) -> list[str]:
        """Runs the block's commands; returns the library warnings they printed."""
        if block.language == "python":
            noise = self.provide(block, block.code, None, workspace, made)
            code = resolve_runs(block.code, workspace)
            make_stand_ins(code, workspace, made)
            with library_warnings() as caught:
                exec(compile(code, block.where, "exec"), {"__name__": "__main__"})
            return noise + [f"{block.where}: {message}" for message in caught if not MACHINE_WARNINGS.search(message)]
        noise = []
        for words in shell_commands(block.code):
            if reason := cannot_run(words):
                skip(block.where, words, reason)
                continue
            noise += self.provide(block, shlex.join(words), words, workspace, made)
            words = shlex.split(resolve_runs(shlex.join(words), workspace))
            make_stand_ins(shlex.join(words), workspace, made)
            noise += run_command(block, words, workspace)
        return noise


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


def skip(where: str, words: list[str], reason: str) -> None:
    warnings.warn(DocCommandSkipped(f"{where}: {shlex.join(words)}: {reason}"), stacklevel=2)


def cannot_run(words: list[str]) -> str | None:
    """Why a command cannot run here, or None."""
    if words[0] == "pip":
        return "an install: the test runs in the installed project"
    if words[:3] == ["python", "-m", "pytest"]:
        return "the test suite, which this test is part of"
    if words[0] == ".ci/minimum-versions":
        return "builds a fresh environment at the lower bounds and runs the test suite there"
    if "..." in words:
        return "a template ('...' stands for a command's flags)"
    if words[:2] == ["accelerate", "launch"]:
        launch = words[2:next(i for i, w in enumerate(words) if w.endswith(".py"))]
        if "--num_machines" in launch:
            return "needs several machines"
        if launch:
            return f"needs several GPUs ({shlex.join(launch)})"
    return None


def run_command(block: Block, words: list[str], workspace: Path) -> list[str]:
    """Runs one command as a new process would (in this one); returns the library warnings it printed."""
    assert cannot_run(words) is None, f"{block.where}: {shlex.join(words)}: {cannot_run(words)}"
    if words[:2] == ["accelerate", "launch"]:
        words = ["python", *words[2:]]  # one process on CPU: what accelerate launch runs
    assert words[0] == "python", f"{block.where}: no runner for {shlex.join(words)}"
    words = [f"{workspace}{w}" if w.startswith(("/data/", "/models/")) else w for w in words]
    launched = LAUNCHED[:]
    if words[1] == "-m":
        module, args = words[2], words[3:]
        argv = [module, *args, *budget(module, args, workspace)]
        call = partial(runpy.run_module, module, run_name="__main__", alter_sys=True)
    else:
        script, args = words[1], words[2:]
        assert (ROOT / script).is_file(), f"{block.where}: {script} does not exist"
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
        assert done.code in (0, None), f"{block.where}: {shlex.join(words)} exited with {done.code}"
    except Exception as error:
        raise AssertionError(f"{block.where}: {shlex.join(words)} failed: {error!r}") from error
    finally:
        sys.argv, sys.path = old_argv, old_path
        AcceleratorState._reset_state(reset_partial_state=True)  # and its state ends with it
    if words[1:3] == ["-m", "sdt_gen.demo"]:
        assert len(LAUNCHED) == len(launched) + 1, f"{block.where}: the demo built no app"
    return [f"{block.where}: {shlex.join(words)}: {message}" for message in caught
            if not MACHINE_WARNINGS.search(message)]


LAUNCHED: list[dict] = []  # the demo apps' launch() calls (a server is built, not started)


@pytest.fixture(scope="session")
def session(tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("doc-prerequisites"))


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
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kwargs: LAUNCHED.append(kwargs))
    return tmp_path


def run_doc(doc: Path, session: Session, workspace: Path, with_slow: bool) -> None:
    made: set[str] = set()
    noise = []
    for block in doc_blocks(doc):
        if block.slow and not with_slow:
            skip(block.where, [block.language, "block"], "marked slow: it runs in the slow test of this file")
            continue
        noise += session.run_code(block, workspace, made)
    assert noise == [], "documented commands printed library warnings:\n" + "\n".join(noise)


def doc_id(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_doc_blocks_run_in_order(doc, session, workspace):
    """The file's blocks, those marked slow left out (listed as skipped)."""
    run_doc(doc, session, workspace, with_slow=False)
    if doc.name == "README.md" and doc.parent == ROOT:
        assert (workspace / "results" / "000-SDT-Ti-2-digits" / "pipeline" / "model_index.json").is_file()  # quick start


@pytest.mark.slow  # the decay-study blocks: about 15 minutes on 2 CPU cores
@pytest.mark.parametrize("doc", [d for d in DOCS if any(b.slow for b in doc_blocks(d))], ids=doc_id)
def test_doc_with_its_slow_blocks_runs_in_order(doc, session, workspace):
    run_doc(doc, session, workspace, with_slow=True)


# ---------------------------------------------------------------------------------------------------- read whole


def test_readme_opens_with_the_two_quick_start_commands():
    first = doc_blocks(ROOT / "README.md")[0]
    commands = shell_commands(first.code)
    assert commands == [["pip", "install", "-e", "."], ["python", "train_dit.py"],
                        ["pip", "install", "-e", ".[dev]"], ["python", "-m", "pytest", "-m", "not slow"]]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in first.code, ".ci/run must run the README's test command verbatim"


def test_readme_is_a_five_minute_read():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250, "move detail into a guide in docs/"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_code_block_is_read(doc):
    """Every fence opens a block the test runs (bash, python) or plain text; a slow mark sits on a fence."""
    text = doc.read_text()
    fences = re.findall(r"^```(\S*)$", text, flags=re.M)
    openings = fences[::2]
    assert len(fences) % 2 == 0, f"{doc_id(doc)}: an unclosed fence"
    untested = [language for language in openings if language not in ("bash", "python", "", "text")]
    assert not untested, f"{doc_id(doc)}: fenced {untested} blocks would not be tested: write bash or python"
    blocks = doc_blocks(doc)
    assert len(blocks) == openings.count("bash") + openings.count("python")
    assert len(re.findall(f"^{SLOW_MARK}$", text, flags=re.M)) == sum(b.slow for b in blocks), f"{doc_id(doc)}: a slow mark not before a fence"


def test_the_docs_have_code():
    counts = {doc_id(doc): len(doc_blocks(doc)) for doc in DOCS}
    assert counts["README.md"] >= 9 and sum(counts.values()) >= 30, counts


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_links_point_at_files_and_headings_that_exist(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", re.sub(r"^```.*?^```", "", file.read_text(), flags=re.S | re.M),
                                  flags=re.M)
            if anchor not in {github_anchor(h) for h in headings}:
                broken.append(f"{target}: no such heading")
    assert not broken, f"{doc_id(doc)}: " + "; ".join(broken)


def test_the_index_lists_every_guide():
    index = (ROOT / "docs" / "README.md").read_text()
    unlisted = [doc.name for doc in DOCS[1:] if doc.name != "README.md" and f"]({doc.name})" not in index]
    assert not unlisted, f"docs/README.md does not list {unlisted}"
