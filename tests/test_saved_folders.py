"""Folders saved by the oldest code that wrote each kind load today and compute what they computed then.

Each ``tests/fixtures/<kind>_<commit>/`` was written by that commit's code (its SOURCE.md names the command; the
script is in ``tests/fixtures/OLD_FOLDERS.md``); its ``io.safetensors`` holds fixed inputs and the outputs that
code computed, on another machine: they are compared within float rounding (``helpers.ONE_PASS``, ``SAMPLED``),
and every test checks that a 1e-3 change of one weight falls outside that tolerance.
"""

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from sdt_gen import SDT_CLASSIFIER_PRESETS, SDT_PRESETS, SDTConfig, SDTForImageClassification, SDTTransformer2DModel
from sdt_gen.models import DerivedKeyError

from helpers import assert_as_saved, assert_not_as_saved, assert_pipeline_samples_as_saved, nudged

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))
import train_classifier  # noqa: E402
import train_dit  # noqa: E402

# The digits presets as the runs of train_dit_681e095 and train_classifier_681e095 shrank them (see their SOURCE.md).
TINY_DENOISER = dict(depth=1, hidden_size=8, num_heads=2)
TINY_CLASSIFIER = dict(dims=[4, 4, 4, 4], depths=[1, 1, 1, 1], heads=[1, 1, 1, 1], head_hidden_size=4)
DIT_RUN = FIXTURES / "train_dit_681e095" / "000-SDT-Ti-2-digits"
CLASSIFIER_RUN = FIXTURES / "train_classifier_681e095" / "000-SDT-H-XT-digits"


def test_a_denoiser_of_the_first_commit_computes_as_then():
    """``denoiser_8377b86``: saved before the objective, positions and decay keys of today (and with the
    attention backend, which is no longer saved)."""
    folder = FIXTURES / "denoiser_8377b86"
    saved = json.loads((folder / "config.json").read_text())
    assert saved["attention_backend"] == "sdpa" and "objective" not in saved and "position_embedding" not in saved
    model = SDTTransformer2DModel.from_pretrained(folder).eval()
    assert (model.config.objective, model.config.position_embedding) == ("ddpm", "sincos")
    io = load_file(folder / "io.safetensors")
    inputs = io["sample"], io["timestep"], io["class_labels"]
    with torch.no_grad():
        assert_as_saved(model(*inputs).sample, io["output"])  # one forward pass, another CPU: ONE_PASS
        assert_not_as_saved(nudged(model, "x_embedder.proj.weight")(*inputs).sample, io["output"])


@pytest.mark.parametrize("name", ["hierarchical", "isotropic", "probe"])
def test_classifiers_of_the_first_commit_compute_as_then(name):
    """``classifiers_681e095``: one classifier of each architecture, saved by ``save_classifier``; the SDT-H one
    with the ``hidden_size: 384`` every SDT-H folder of then carried."""
    folder = FIXTURES / "classifiers_681e095" / name
    saved = json.loads((folder / "config.json").read_text())
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(model) is SDTForImageClassification
    if name == "hierarchical":
        assert saved["hidden_size"] == 384 and saved["dims"][-1] == 16 == model.config.hidden_size
    io = load_file(folder / "io.safetensors")
    with torch.no_grad():
        assert_as_saved(model(pixel_values=io["pixel_values"]).logits, io["logits"])  # one pass: ONE_PASS
        changed = nudged(model, "classifier.weight")(pixel_values=io["pixel_values"]).logits
    assert_not_as_saved(changed, io["logits"])


def test_a_saved_hidden_size_is_derived_again_but_a_given_one_is_refused(caplog):
    folder = FIXTURES / "classifiers_681e095" / "hierarchical"
    with caplog.at_level(logging.INFO, logger="sdt_gen"):
        config = SDTConfig.from_pretrained(folder)
    assert config.hidden_size == 16
    assert "the saved hidden_size=384 disagrees with the stages" in caplog.text and "hidden_size=16" in caplog.text
    assert SDTConfig.from_dict(config.to_dict()).hidden_size == 16
    # What a user passes is still refused, through every route.
    with pytest.raises(DerivedKeyError, match=r"hidden_size=384 contradicts the hierarchical architecture"):
        SDTConfig.from_pretrained(folder, hidden_size=384)
    with pytest.raises(DerivedKeyError, match=r"hidden_size=384 contradicts"):
        AutoModelForImageClassification.from_pretrained(folder, hidden_size=384)
    with pytest.raises(DerivedKeyError, match=r"num_hidden_layers=2 contradicts"):
        SDTConfig.from_pretrained(folder, num_hidden_layers=2)
    with pytest.raises(DerivedKeyError):
        SDTConfig(**{**json.loads((folder / "config.json").read_text()), "attention_backend": None})


@pytest.mark.parametrize("folder, objective", [("pipelines_681e095/ddpm", "ddpm"), ("pipelines_c0c730a/flow", "flow")])
def test_pipelines_of_the_first_ddpm_and_flow_commits_sample_as_then(folder, objective):
    """``pipelines_681e095`` (the first pipelines: no loader file, the attention backend in the transformer's
    config) and ``pipelines_c0c730a`` (the first flow pipeline): 2 images of 4 guided steps."""
    saved = assert_pipeline_samples_as_saved(FIXTURES / folder, objective)
    assert ((saved > 0) & (saved < 1)).float().mean() > 0.5  # most pixels unclipped: a change shows


def test_a_train_dit_checkpoint_of_the_first_commit_computes_as_then():
    """The checkpoint's weights in the model its run exported, as ``accelerator.load_state`` loads them."""
    model = SDTTransformer2DModel.from_pretrained(DIT_RUN / "pipeline" / "transformer").eval()
    model.load_state_dict(load_file(DIT_RUN / "checkpoints" / "step-0000002" / "model.safetensors"))  # strict
    io = load_file(DIT_RUN.parent / "io.safetensors")
    inputs = io["sample"], io["timestep"], io["class_labels"]
    with torch.no_grad():
        assert_as_saved(model(*inputs).sample, io["output"])  # one forward pass, another CPU: ONE_PASS
        assert_not_as_saved(nudged(model, "x_embedder.proj.weight")(*inputs).sample, io["output"])


def test_a_train_classifier_run_of_the_first_commit_computes_as_then():
    """The run's ``model/`` (SDT-H-XT, ``hidden_size: 384``) and its checkpoint's weights (the keys of before the
    encoder split, as ``accelerator.load_state`` loads them) give the logits of then."""
    assert json.loads((CLASSIFIER_RUN / "model" / "config.json").read_text())["hidden_size"] == 384
    saved = AutoModelForImageClassification.from_pretrained(CLASSIFIER_RUN / "model").eval()
    resumed = SDTForImageClassification(saved.config)
    resumed.load_state_dict(load_file(CLASSIFIER_RUN / "checkpoints" / "step-0000003" / "model.safetensors"))
    io = load_file(CLASSIFIER_RUN.parent / "io.safetensors")
    with torch.no_grad():
        for model in (saved, resumed.eval()):
            assert_as_saved(model(pixel_values=io["pixel_values"]).logits, io["logits"])  # one pass: ONE_PASS
        changed = nudged(saved, "classifier.weight")(pixel_values=io["pixel_values"]).logits
    assert_not_as_saved(changed, io["logits"])


@pytest.fixture
def tiny_presets(monkeypatch):
    monkeypatch.setitem(SDT_PRESETS, "SDT-Ti/2", {**SDT_PRESETS["SDT-Ti/2"], **TINY_DENOISER})
    monkeypatch.setitem(SDT_CLASSIFIER_PRESETS, "SDT-H-XT", {**SDT_CLASSIFIER_PRESETS["SDT-H-XT"], **TINY_CLASSIFIER})


def copied_run(run: Path, tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return Path(shutil.copytree(run, tmp_path / "results" / run.name))


def max_change(run: Path, before: str, after: str) -> float:
    """The largest change of a trained weight between two checkpoints (a classifier's old ``sdt.`` keys are
    today's ``sdt.encoder.``)."""
    a, b = ({key.replace("sdt.encoder.", "sdt.", 1): value
             for key, value in load_file(run / "checkpoints" / step / "model.safetensors").items()}
            for step in (before, after))
    assert a.keys() == b.keys()
    weights = [key for key in a if a[key].is_floating_point() and ".running_" not in key]  # not BatchNorm's statistics
    return max((a[key] - b[key]).abs().max().item() for key in weights)


def test_train_dit_resumes_a_run_of_the_first_commit(tmp_path, monkeypatch, tiny_presets):
    run = copied_run(DIT_RUN, tmp_path, monkeypatch)
    train_dit.main(train_dit.build_parser().parse_args(["--resume", str(run), "--max-steps", "3"]))
    log = (run / "log.txt").read_text()
    assert "resumed from" in log and "step-0000002 at step 2" in log
    # One AdamW step from the saved weights (lr 1e-3 moves an entry by about that), not a fresh start.
    assert 0 < max_change(run, "step-0000002", "step-0000003") < 1e-2
    assert (run / "pipeline" / "transformer" / "config.json").is_file()


def test_train_classifier_resumes_a_run_of_the_first_commit(tmp_path, monkeypatch, tiny_presets):
    run = copied_run(CLASSIFIER_RUN, tmp_path, monkeypatch)
    train_classifier.main(train_classifier.build_parser().parse_args(["--resume", str(run), "--epochs", "2"]))
    log = (run / "log.txt").read_text()
    assert "step-0000003 at step 3, epoch 1" in log and "epoch 2/2 step 6" in log
    assert 0 < max_change(run, "step-0000003", "step-0000006") < 1e-2  # three AdamW steps from the saved weights
