"""Sampling to a folder (labels, seeds, file names, resume guards) and the transformers classifier callable.

The pipeline is a tiny pixel-space SDT (8x8 RGB) with perturbed random weights, sampled in 2 steps.
Multi-process sampling and the CLI are tested end to end in tests/test_eval_fid.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from sdt_gen import SDTConfig, SDTForImageClassification, SDTPipeline, SDTTransformer2DModel, save_classifier
from sdt_gen.metrics import (
    ImageFilesDataset,
    TransformersImageClassifier,
    image_seed,
    labels_from_file_names,
    parse_sample_file_name,
    sample_file_name,
    sample_labels,
    sample_to_folder,
    sampling_record,
)
from sdt_gen.metrics.sampling import MANIFEST

from helpers import perturbed

NUM_CLASSES = 10
ID2LABEL = {i: f"Digit {i}, number {i}" for i in range(NUM_CLASSES)}
SAMPLING = dict(seed=3, guidance_scale=1.5, num_inference_steps=2)


def tiny_pipeline(seed: int = 0) -> SDTPipeline:
    """A pixel-space pipeline (8x8 RGB) whose perturbed random weights give non-trivial images."""
    torch.manual_seed(seed)
    transformer = SDTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2,
        num_classes=NUM_CLASSES, attention_backend="sdpa",
    )
    perturbed(transformer, seed=seed)  # a fresh adaLN-Zero model outputs zeros
    return SDTPipeline(transformer.eval(), SDTPipeline.dit_scheduler(), None, id2label=ID2LABEL)


@pytest.fixture(scope="module")
def pipe() -> SDTPipeline:
    return tiny_pipeline()


def test_labels_are_seeded_prefix_stable_and_balanced_when_asked():
    random = sample_labels(1000, NUM_CLASSES, "random", seed=0)
    assert random == sample_labels(1000, NUM_CLASSES, "random", seed=0)
    assert random[:37] == sample_labels(37, NUM_CLASSES, "random", seed=0)  # a short run starts a long one
    assert random != sample_labels(1000, NUM_CLASSES, "random", seed=1)
    assert set(random) == set(range(NUM_CLASSES))
    assert np.bincount(random).min() > 60  # uniform: ~100 each
    balanced = sample_labels(25, NUM_CLASSES, "balanced")
    assert balanced[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert np.bincount(balanced).tolist() == [3] * 5 + [2] * 5
    with pytest.raises(ValueError, match="unknown label mode 'uniform'"):
        sample_labels(4, NUM_CLASSES, "uniform")
    assert image_seed(0, 5) == 5 and image_seed(2, 5) == 2_000_011


def test_file_names_carry_index_and_label():
    name = sample_file_name(42, 207, "Golden Retriever, retriever")
    assert name == "000042_207_golden_retriever_retriever.png"
    assert parse_sample_file_name(Path("/x") / name) == (42, 207)
    assert labels_from_file_names([name, "1234567_3_x.png"]) == [207, 3]
    with pytest.raises(ValueError, match="cat.png does not name a sample"):
        labels_from_file_names([name, "cat.png"])


def test_sample_to_folder_writes_every_image_once_and_resumes(pipe: SDTPipeline, tmp_path: Path):
    folder = tmp_path / "samples"
    paths = sample_to_folder(pipe, folder, 5, batch_size=2, **SAMPLING)
    labels = sample_labels(5, NUM_CLASSES, "random", seed=3)
    assert [p.name for p in paths] == [
        sample_file_name(i, label, f"digit {label}") for i, label in enumerate(labels)
    ]
    assert sorted(folder.glob("*.png")) == paths and labels_from_file_names(paths) == labels
    images = [np.array(Image.open(p)) for p in paths]
    assert images[0].shape == (8, 8, 3) and images[0].dtype == np.uint8
    assert len({image.tobytes() for image in images}) == 5  # each image has its own noise
    assert json.loads((folder / MANIFEST).read_text())["guidance_scale"] == 1.5

    # Image i does not depend on the batch it was drawn in: delete some, leave a half-written one, redraw.
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}
    for index in (1, 4):
        paths[index].unlink()
    stale = folder / (paths[4].name + ".partial")
    stale.write_bytes(b"half a png")
    again = sample_to_folder(pipe, folder, 6, batch_size=3, **SAMPLING)  # and one image more
    assert again[:5] == paths and len(again) == 6 and not stale.exists()
    for index in (0, 2, 3):  # untouched
        assert again[index].stat().st_mtime_ns == before[paths[index].name][1]
    for index in (1, 4):  # redrawn identically
        assert again[index].read_bytes() == before[paths[index].name][0]
    assert len(list(folder.glob("*.png"))) == 6
    dataset = ImageFilesDataset(again)
    assert len(dataset) == 6 and torch.equal(dataset[2], torch.from_numpy(images[2]).permute(2, 0, 1))


def test_other_settings_into_a_folder_of_samples_are_refused_naming_the_first_difference(pipe: SDTPipeline, tmp_path: Path):
    folder = tmp_path / "samples"
    sample_to_folder(pipe, folder, 2, batch_size=2, **SAMPLING)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    ddim = SDTPipeline(pipe.transformer, DDIMScheduler.from_config(pipe.scheduler.config), None, id2label=ID2LABEL)
    refused = {
        "guidance_scale 1.5; this run asks for 4.0": dict(guidance_scale=4.0),
        "num_inference_steps 2; this run asks for 3": dict(num_inference_steps=3),
        "seed 3; this run asks for 4": dict(seed=4),
        "guidance_interval [0.0, 1.0]; this run asks for [0.2, 0.8]": dict(guidance_interval=(0.2, 0.8)),
        "labels 'random'; this run asks for 'balanced'": dict(labels="balanced"),
        f"labels 'random'; this run asks for {sample_labels(2, NUM_CLASSES, 'random', 3)}": dict(
            labels=sample_labels(2, NUM_CLASSES, "random", 3)),  # the same labels, given otherwise: another record
        "scheduler 'DDPMScheduler'; this run asks for 'DDIMScheduler'": dict(pipe=ddim),
        # Several settings differ: the first in the record's order is named, the model before the sampler.
        "transformer_config.depth 2; this run asks for 1": dict(pipe=SDTPipeline(
            SDTTransformer2DModel(sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2,
                                  num_classes=NUM_CLASSES), ddim, None), guidance_scale=4.0),
    }
    for expected, changes in refused.items():
        changes = {"pipe": pipe, **SAMPLING, **changes}
        with pytest.raises(ValueError) as refusal:
            sample_to_folder(changes.pop("pipe"), folder, 2, **changes)
        assert str(refusal.value) == (
            f"{folder} holds images drawn with {expected}. Rerun with the settings in {folder / MANIFEST} or write "
            f"to another folder"
        )
    with pytest.raises(ValueError, match=r"weights_sha256 '[0-9a-f]{16}\.\.\.'; this run asks for '[0-9a-f]{16}\.\.\.'"):
        sample_to_folder(tiny_pipeline(seed=1), folder, 2, **SAMPLING)
    # id2label is no setting of the images, but the class names are in the file names: not mixed either.
    renamed = SDTPipeline(pipe.transformer, pipe.scheduler, None, id2label={i: f"class {i}" for i in range(NUM_CLASSES)})
    with pytest.raises(ValueError, match="samples of another run"):
        sample_to_folder(renamed, folder, 2, **SAMPLING)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing drawn, nothing rewritten


def test_a_folder_of_samples_without_manifest_is_refused_and_one_without_samples_is_taken(pipe: SDTPipeline,
                                                                                          tmp_path: Path):
    folder = tmp_path / "samples"
    sample_to_folder(pipe, folder, 2, batch_size=2, **SAMPLING)
    # As sample.py --out-dir wrote folders before it recorded its settings: nothing tells what drew them.
    (folder / MANIFEST).unlink()
    with pytest.raises(ValueError) as refusal:
        sample_to_folder(pipe, folder, 3, **SAMPLING)  # even with the settings that did draw them
    assert str(refusal.value) == (
        f"{folder} holds 2 sample PNGs but no {MANIFEST}, so the settings that drew them are unknown (sample.py "
        f"wrote such folders before it recorded them); move them away or write to another folder"
    )
    assert len(list(folder.iterdir())) == 2

    # A manifest without samples (a run stopped before its first image) mixes nothing: the next run's replaces it.
    for png in folder.glob("*.png"):
        png.unlink()
    (folder / MANIFEST).write_text(json.dumps(sampling_record(pipe, "random", 4, 1.5, None, 2)))
    assert len(sample_to_folder(pipe, folder, 2, **SAMPLING)) == 2  # seed 3, where the record says 4
    assert json.loads((folder / MANIFEST).read_text())["seed"] == 3


def test_given_labels_are_recorded_drawn_as_a_mode_would_and_continued(pipe: SDTPipeline, tmp_path: Path):
    balanced = sample_to_folder(pipe, tmp_path / "balanced", 5, labels="balanced", batch_size=2, **SAMPLING)
    folder = tmp_path / "given"
    given = sample_to_folder(pipe, folder, 5, labels=[0, 1, 2, 3, 4], batch_size=3, **SAMPLING)
    assert [p.read_bytes() for p in given] == [p.read_bytes() for p in balanced]  # image i: its label, its seed
    assert json.loads((folder / MANIFEST).read_text())["labels"] == [0, 1, 2, 3, 4]

    stamps = {p.name: p.stat().st_mtime_ns for p in given}
    given[3].unlink()
    assert sample_to_folder(pipe, folder, 5, labels=[0, 1, 2, 3, 4], **SAMPLING) == given
    assert given[3].read_bytes() == balanced[3].read_bytes()
    assert {p.name: p.stat().st_mtime_ns for p in given if p != given[3]} == {
        name: stamp for name, stamp in stamps.items() if name != given[3].name}  # only the missing one drawn
    with pytest.raises(ValueError, match=r"with labels \[0, 1, 2, 3, 4\]; this run asks for \[0, 1, 9, 3, 4\]\."):
        sample_to_folder(pipe, folder, 5, labels=[0, 1, 9, 3, 4], **SAMPLING)
    # Long lists: the first differing image, or the lengths.
    long = sample_to_folder(pipe, tmp_path / "long", 10, labels=[c for c in range(5) for _ in range(2)], **SAMPLING)
    with pytest.raises(ValueError, match=r"with labels\[9\] 4; this run asks for 5\."):
        sample_to_folder(pipe, long[0].parent, 10, labels=[c for c in range(5) for _ in range(2)][:9] + [5], **SAMPLING)
    with pytest.raises(ValueError, match=r"with labels 10 values \[0, 0, 1, 1, \.\.\.\]; this run asks for 11 values"):
        sample_to_folder(pipe, long[0].parent, 11, labels=[c for c in range(5) for _ in range(2)] + [5], **SAMPLING)
    with pytest.raises(ValueError, match="got 2 labels for 3 samples"):
        sample_to_folder(pipe, tmp_path / "other", 3, labels=[1, 2], **SAMPLING)
    with pytest.raises(ValueError, match=r"label 10 is not a class of the model \(0\.\.9\)"):
        sample_to_folder(pipe, tmp_path / "other", 2, labels=[1, 10], **SAMPLING)


def test_the_record_of_a_mode_run_is_as_folders_written_before_hold_it(pipe: SDTPipeline, tmp_path: Path):
    record = sampling_record(pipe, "random", 3, 1.5, None, 2)
    assert set(record) == {
        "transformer_config", "vae_config", "weights_sha256", "dtype", "scheduler", "scheduler_config",
        "num_inference_steps", "guidance_scale", "guided_channels", "labels", "seed", "image_seed", "file_name",
    }  # guidance_interval only when it is not every step, as before it existed
    assert record["labels"] == "random"
    # A folder written so (the key order of the file is sorted) continues.
    folder = tmp_path / "samples"
    first = sample_to_folder(pipe, folder, 2, **SAMPLING)
    (folder / MANIFEST).write_text(json.dumps(record, sort_keys=True, indent=2))
    first[1].unlink()
    assert sample_to_folder(pipe, folder, 2, **SAMPLING) == first


def test_bad_arguments_are_clear_errors(pipe: SDTPipeline, tmp_path: Path):
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        sample_to_folder(pipe, tmp_path, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        sample_to_folder(pipe, tmp_path, 2, seed=-1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        sample_to_folder(pipe, tmp_path, 2, batch_size=0)


# ----------------------------------------------------------------------------- classifier callable


def _save_vit(folder: Path, num_labels: int = NUM_CLASSES) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=num_labels, id2label={i: f"digit {i}" for i in range(num_labels)},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def _save_sdt_classifier(folder: Path) -> Path:
    torch.manual_seed(0)
    config = SDTConfig(
        architecture="isotropic", image_size=16, patch_size=4, hidden_size=32, depth=2, num_heads=2,
        num_labels=NUM_CLASSES,
    )
    return save_classifier(SDTForImageClassification(config), folder)


@pytest.mark.parametrize("save", [_save_vit, _save_sdt_classifier], ids=["vit", "sdt"])
def test_classifier_features_are_the_pooled_pre_logits(save: Callable[[Path], Path], tmp_path: Path):
    classifier = TransformersImageClassifier(save(tmp_path / "classifier"))
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)  # upsized by the image processor
    features, logits = classifier(images)
    assert features.shape[0] == logits.shape[0] == 3 and logits.shape[1] == NUM_CLASSES
    head = classifier.model.classifier
    torch.testing.assert_close(head(features), logits)  # the head's input, pooled
    pixel_values = classifier.processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(classifier.model(pixel_values=pixel_values).logits, logits)


def test_classifier_folder_problems_are_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="classifier folder .* does not exist"):
        TransformersImageClassifier(tmp_path / "missing")
    folder = _save_vit(tmp_path / "vit")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no preprocessor_config.json"):
        TransformersImageClassifier(folder)


def test_a_damaged_sample_png_is_named(pipe: SDTPipeline, tmp_path: Path):
    paths = sample_to_folder(pipe, tmp_path / "samples", 3, batch_size=3, **SAMPLING)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    dataset = ImageFilesDataset(paths)
    assert dataset[0].shape == (3, 8, 8)
    with pytest.raises(ValueError, match=rf"{paths[1].name} is damaged or not an image"):
        dataset[1]


def test_a_full_disk_while_sampling_names_the_file_and_keeps_the_others(pipe: SDTPipeline, tmp_path: Path, monkeypatch):
    import errno
    import os

    from sdt_gen.metrics import sampling

    real_write = sampling._write_png_atomically
    written = []

    def write_until_disk_is_full(image, path):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(path)
        real_write(image, path)

    monkeypatch.setattr(sampling, "_write_png_atomically", write_until_disk_is_full)
    folder = tmp_path / "samples"
    with pytest.raises(OSError, match=r"could not write sample .*000002_.*No space left on device.* run again"):
        sample_to_folder(pipe, folder, 4, batch_size=4, **SAMPLING)
    assert sorted(folder.glob("*.png")) == sorted(written)
    monkeypatch.setattr(sampling, "_write_png_atomically", real_write)
    assert len(sample_to_folder(pipe, folder, 4, batch_size=4, **SAMPLING)) == 4
