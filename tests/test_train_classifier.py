"""train_classifier.py end to end on the bundled digits, and the classifier as an evaluation tool."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_classifier  # noqa: E402


def run(tmp_path, *extra):
    args = train_classifier.build_parser().parse_args(["--results-dir", str(tmp_path / "results"), *extra])
    return train_classifier.main(args)


def test_train_size_trains_on_a_class_balanced_subset_of_the_train_split(tmp_path):
    import json
    from collections import Counter

    from sdt_gen.data import DigitsDataset

    run_dir, _ = run(tmp_path, "--epochs", "1", "--train-size", "128", "--batch-size", "32")
    assert run_dir.name == "000-SDT-H-XT-digits-n128"
    assert (run_dir / "checkpoints" / "step-0000004").is_dir()  # 128 digits / 32 per batch
    subset = json.loads((run_dir / "train_subset.json").read_text())
    assert (subset["dataset"], subset["split"], subset["size"], subset["seed"]) == ("digits", "train", 128, 0)
    targets = DigitsDataset("train").targets
    assert sorted(Counter(targets[i] for i in subset["indices"]).values()) == [12] * 2 + [13] * 8


def test_one_epoch_then_resume_writes_a_pipeline_ready_model(tmp_path):
    from transformers import pipeline

    run_dir, metrics = run(tmp_path, "--epochs", "1")
    assert run_dir.name == "000-SDT-H-XT-digits" and 0.0 <= metrics["top1"] <= 1.0
    assert (run_dir / "checkpoints" / "step-0000025").is_dir()  # 1617 training digits / 64 per batch

    resumed_dir, _ = run(tmp_path, "--epochs", "2", "--resume", "latest")
    assert resumed_dir == run_dir
    assert (run_dir / "checkpoints" / "step-0000050").is_dir()
    assert "resumed from" in (run_dir / "log.txt").read_text()

    clf = pipeline("image-classification", model=str(run_dir / "model"))
    digit = Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8))
    predictions = clf(digit)
    assert {p["label"] for p in predictions} <= {str(i) for i in range(10)}

    from huggingface_hub import ModelCard

    card = ModelCard.load(run_dir / "model" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    assert "2 epochs" in card.text and "val top1" in card.text and '"preset": "SDT-H-XT"' in card.text
    assert "Attention backend that ran in training: `sdpa`" in card.text and '"attention_backend"' not in card.text


def test_push_to_hub_uploads_the_model_folder(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(kw))
    run_dir, _ = run(tmp_path, "--epochs", "1", "--push-to-hub", "me/sdt-h-xt-digits")
    assert calls == ["me/sdt-h-xt-digits", {"repo_id": "me/sdt-h-xt-digits", "folder_path": str(run_dir / "model"),
                                            "commit_message": "digits, 1 epochs"}]


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown --model 'SDT-H-XXL'; expected one of"):
        run(tmp_path, "--model", "SDT-H-XXL")
    with pytest.raises(ValueError, match="image size 20x20"):
        run(tmp_path, "--image-size", "20")
    with pytest.raises(FileNotFoundError, match="must hold train/<class>/ and val/<class>/"):
        run(tmp_path, "--data-path", str(tmp_path))


@pytest.mark.slow
def test_bundled_default_reaches_90_percent_and_scores_conditional_accuracy(tmp_path):
    from sdt_gen.data import DigitsDataset
    from sdt_gen.metrics import TransformersImageClassifier, classifier_metrics

    run_dir, metrics = run(tmp_path)
    assert metrics["top1"] >= 0.9

    val = DigitsDataset("val", image_size=32)
    images = ((val.images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()  # (N, 32, 32) grey
    labels = torch.tensor(val.targets)
    classifier = TransformersImageClassifier(run_dir / "model", device="cpu")
    true = classifier_metrics(classifier, images, labels)
    shuffled = classifier_metrics(classifier, images, labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))])
    assert true["classifier_accuracy"] >= 0.9
    assert 0.0 <= shuffled["classifier_accuracy"] <= 0.25


@pytest.mark.parametrize("stop", ["mid_epoch", "last_batch"])
def test_sigterm_checkpoints_exits_75_and_resume_is_exact(tmp_path, monkeypatch, stop):
    import os
    import signal

    from safetensors.torch import load_file

    from sdt_gen.training import PREEMPTED_EXIT_CODE

    straight, _ = run(tmp_path / "straight", "--epochs", "2")
    steps_per_epoch = int(max((straight / "checkpoints").iterdir()).name[5:]) // 2
    # In the middle of the first epoch, or after its last batch: the resumed run then starts with an empty epoch.
    stop_step = 7 if stop == "mid_epoch" else steps_per_epoch
    real_check = train_classifier.check_finite

    def signal_at_stop_step(value, step, run_dir):
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would
        return real_check(value, step, run_dir)

    monkeypatch.setattr(train_classifier, "check_finite", signal_at_stop_step)
    with pytest.raises(SystemExit) as stopped:
        run(tmp_path / "stopped", "--epochs", "2")
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    run_dir = tmp_path / "stopped" / "results" / straight.name
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"step-{stop_step:07d}"]
    monkeypatch.setattr(train_classifier, "check_finite", real_check)
    run(tmp_path / "stopped", "--epochs", "2", "--resume", "latest")
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (straight, run_dir))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-6 for k in a)


def test_two_processes_show_one_progress_bar_of_the_steps_they_take(tmp_path):
    """On N processes the loader is sharded by ``accelerator.prepare``: the bar counts the steps every process takes."""
    import re
    import subprocess

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train_classifier.py"), "--cpu",
           "--epochs", "1", "--results-dir", str(tmp_path / "results"), "--report-to", "none"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = re.findall(r"train: +\d+%\|[^|]*\| *(\d+)/(\d+)", result.stderr)
    assert counts and counts[-1] == ("25", "25"), counts[-3:]  # 1617 digits / 64 a step, on 2 processes as on 1
    assert (tmp_path / "results" / "000-SDT-H-XT-digits" / "checkpoints" / "step-0000025").is_dir()
