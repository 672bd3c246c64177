"""benchmarks/decay_study.py end to end on MNIST, in a temporary folder: results, pictures, caching, protocol."""

import json
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import decay_study  # noqa: E402

from sdt_gen import SDTConfig, SDTForImageClassification, save_classifier  # noqa: E402

PICTURES = ("fd_vs_step.png", "samples.png", "decay_maps.png", "gates_vs_timestep.png")
# Smaller than --quick: 4 steps, 2 evaluation points, 12 samples of 2 sampling steps, small reference sets.
TINY = [
    "--quick", "--steps", "4", "--num-samples", "12", "--sample-steps", "2", "--batch-size", "64", "--heldout-images", "20",
    "--reference-images", "100",
]


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Path:
    """A random-weights 1-channel SDT classifier of MNIST's 32x32 digits: an evaluator with no training."""
    torch.manual_seed(0)
    config = SDTConfig.from_preset(
        "SDT-H-XT", num_labels=10, id2label={i: str(i) for i in range(10)}, image_size=32, num_channels=1,
        decay_mode="none",
    )
    return save_classifier(SDTForImageClassification(config).eval(), tmp_path_factory.mktemp("evaluator") / "model")


@pytest.fixture(scope="module")
def study(tmp_path_factory, evaluator):
    out = tmp_path_factory.mktemp("study") / "mnist"
    start = time.perf_counter()
    results = decay_study.main(decay_study.build_parser().parse_args([*TINY, "--classifier", str(evaluator), "--out", str(out)]))
    return out, results, time.perf_counter() - start


def test_every_run_and_evaluation_is_in_the_results(study):
    out, results, _ = study
    saved = json.loads((out / "results.json").read_text())
    assert saved["modes"] == ["none", "fixed", "cag"] and saved["seeds"] == [0, 1]
    assert set(saved["runs"]) == {f"{m}-s{s}" for m in ("none", "fixed", "cag") for s in (0, 1)}
    for run in saved["runs"].values():
        assert list(run["evals"]) == ["2", "4"]
        for metrics in run["evals"].values():
            assert {"fd", "accuracy", "precision", "recall", "heldout_mse"} <= set(metrics)
            assert 0 <= metrics["accuracy"] <= 1 and metrics["fd"] > 0
        assert run["training_seconds"] > 0 and run["steps_per_second"] > 0
    assert set(saved["paired_vs_none"]) == {"fixed", "cag"}
    assert saved["protocol"]["sampling"]["num_samples"] == 12
    strength = saved["gates_vs_timestep"]["strength"]
    assert set(strength) == {"fixed-s0", "fixed-s1", "cag-s0", "cag-s1"}
    assert len(strength["cag-s0"]) == len(decay_study.GATE_TIMESTEPS)


def test_summary_and_pictures_are_written(study):
    out, _, _ = study
    summary = (out / "summary.md").read_text()
    assert "| mode | FD |" in summary and "Paired differences against `none`" in summary
    assert "cag vs none" in summary and ("no measurable difference" in summary or "interval excludes 0" in summary)
    for name in PICTURES:
        assert (out / name).stat().st_size > 1000, name


def test_a_second_call_retrains_nothing(study, evaluator, monkeypatch):
    out, results, first_seconds = study
    calls = []
    monkeypatch.setattr(decay_study.train_dit, "main", lambda args: calls.append(args))
    start = time.perf_counter()
    again = decay_study.main(decay_study.build_parser().parse_args([*TINY, "--classifier", str(evaluator), "--out", str(out)]))
    assert calls == []
    assert time.perf_counter() - start < first_seconds / 2
    assert again["summary"] == results["summary"]


def test_another_protocol_in_the_same_folder_is_refused(study, evaluator):
    out, _, _ = study
    with pytest.raises(SystemExit, match=r"another protocol \(sampling: .*'ddpm'"):
        decay_study.main(decay_study.build_parser().parse_args(
            [*TINY, "--classifier", str(evaluator), "--out", str(out), "--scheduler", "ddpm"]
        ))


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    results = decay_study.main(decay_study.build_parser().parse_args(["--quick", "--out", str(tmp_path / "quick")]))
    assert results["evaluator"]["heldout_top1"] > 0.5
    for name in PICTURES:
        assert (tmp_path / "quick" / name).is_file()
