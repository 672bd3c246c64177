"""The protocol record: results.json, history.jsonl and the printed table."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from diffusers import DDPMScheduler

from sdt_gen.metrics import build_protocol, format_table, write_results

METRICS = {
    "frechet_inception_distance": 2.27,
    "inception_score_mean": 278.2,
    "inception_score_std": 3.1,
    "kernel_inception_distance_mean": np.float64(0.0012),
    "kernel_inception_distance_std": 0.0003,
    "num_samples": 50000,
    "num_reference": 10000,
    "kid_subset_size": 1000,
    "notes": [],
}


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    """A pipeline folder with just the config files the protocol hashes."""
    folder = tmp_path / "pipeline"
    (folder / "transformer").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "SDTPipeline"}\n')
    (folder / "transformer" / "config.json").write_text('{"num_layers": 28, "hidden_size": 1152}\n')
    DDPMScheduler().save_config(folder / "scheduler")
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_protocol_records_model_sampling_reference_and_versions(pipeline_dir: Path, tmp_path: Path):
    weights = tmp_path / "weights-inception.pth"
    weights.write_bytes(b"not really weights")
    reference = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(reference, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    scheduler = DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")

    protocol = build_protocol(
        num_samples=50000,
        reference=reference,
        model_path=pipeline_dir,
        scheduler=scheduler,
        num_inference_steps=250,
        guidance_scale=1.5,
        guidance_channels="all",
        label_mode="random",
        seed=0,
        cache_name="imagenet256",
        feature_extractors={"inception-v3-compat": weights},
    )

    assert protocol["model"]["path"] == str(pipeline_dir.resolve())
    assert protocol["model"]["config_sha256"] == {
        "model_index.json": _sha256(pipeline_dir / "model_index.json"),
        "transformer/config.json": _sha256(pipeline_dir / "transformer" / "config.json"),
        "scheduler/scheduler_config.json": _sha256(pipeline_dir / "scheduler" / "scheduler_config.json"),
    }
    sampling = protocol["sampling"]
    assert sampling["scheduler"] == "DDPMScheduler" and sampling["scheduler_config"]["variance_type"] == "learned_range"
    assert (sampling["num_inference_steps"], sampling["guidance_scale"], sampling["seed"]) == (250, 1.5, 0)
    assert (sampling["guidance_channels"], sampling["label_mode"]) == ("all", "random")
    assert protocol["num_samples"] == 50000
    assert protocol["reference"] == {
        "path": str(reference.resolve()),
        "kind": "npz",
        "cache_name": "imagenet256",
        "resize": False,
    }
    assert protocol["feature_extractors"] == {
        "inception-v3-compat": {"weights": str(weights.resolve()), "sha256": _sha256(weights)}
    }
    assert protocol["versions"]["sdt-gen"] == version("sdt-gen")
    assert protocol["versions"]["torch-fidelity"] == version("torch-fidelity")


def test_build_protocol_for_existing_images_and_cached_reference(tmp_path: Path):
    protocol = build_protocol(num_samples=10, reference=None, cache_name="imagenet-val", samples_path=tmp_path)
    assert protocol["model"] is None and protocol["sampling"]["scheduler"] is None
    assert protocol["reference"]["kind"] == "cache" and protocol["reference"]["path"] is None
    assert protocol["samples_path"] == str(tmp_path.resolve())


def test_build_protocol_rejects_missing_model_and_reference(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        build_protocol(num_samples=1, reference=tmp_path, model_path=tmp_path / "missing")
    with pytest.raises(ValueError, match="holds none of"):
        build_protocol(num_samples=1, reference=tmp_path, model_path=tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a folder nor an .npz"):
        build_protocol(num_samples=1, reference=tmp_path / "ref.npz")
    # Inception Score or conditional accuracy alone: no reference, recorded as such.
    assert build_protocol(num_samples=1, reference=None)["reference"] is None


def test_write_results_writes_results_json_and_appends_history(tmp_path: Path):
    protocol = build_protocol(num_samples=50000, reference=tmp_path, guidance_scale=1.5)
    out_dir = tmp_path / "evals" / "sdt-xl2"

    path = write_results(out_dir, METRICS, protocol)
    write_results(out_dir, {**METRICS, "frechet_inception_distance": 2.5}, protocol)

    assert path == out_dir / "results.json"
    results = json.loads(path.read_text())
    assert results["metrics"]["frechet_inception_distance"] == 2.5  # the latest run
    assert results["metrics"]["kernel_inception_distance_mean"] == pytest.approx(0.0012)
    assert results["protocol"]["sampling"]["guidance_scale"] == 1.5
    history = [json.loads(line) for line in (out_dir / "history.jsonl").read_text().splitlines()]
    assert [record["metrics"]["frechet_inception_distance"] for record in history] == [2.27, 2.5]
    assert history[0]["protocol"] == results["protocol"]
    assert not list(out_dir.glob("*.partial"))


def test_format_table_shows_metrics_counts_and_notes():
    table = format_table(
        {
            **METRICS,
            "precision": 0.8,
            "classifier_accuracy": 0.93,
            "notes": ["KID subset size lowered from 1000 to 50"],
        }
    )
    lines = table.splitlines()
    assert lines[0].split() == ["FID", "2.27"]
    assert "IS" in lines[1] and "278.2 ± 3.1" in lines[1]
    assert any(line.startswith("Precision") and "0.8" in line for line in lines)
    assert any(line.startswith("Cond. accuracy") and "0.93" in line for line in lines)
    assert "samples 50000, reference 10000, KID subset 1000" in lines
    assert lines[-1] == "note: KID subset size lowered from 1000 to 50"
