"""eval_fid.py end to end: a tiny pixel-space pipeline, a random-weights Inception, no network.

``main`` runs in-process except for the two-process run, which goes through ``accelerate launch``.
The fixtures of tests/metrics/conftest.py are reused: ``offline`` (autouse: any internet access
fails, TORCH_HOME is an empty folder), ``inception_weights`` (torch-fidelity's own Inception class
saved with random weights) and ``make_image_folder``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import runpy
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from sdt_gen import SDTConfig, SDTForImageClassification, SDTPipeline, SDTTransformer2DModel, save_classifier
from sdt_gen.metrics import WeightsNotFoundError, default_weights_path, fidelity, labels_from_file_names, sample_labels

from helpers import perturbed

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "eval_fid.py"


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


eval_fid = _load_module("eval_fid", SCRIPT)
_metrics_fixtures = _load_module("tests_metrics_conftest", ROOT / "tests" / "metrics" / "conftest.py")
offline = _metrics_fixtures.offline
inception_weights = _metrics_fixtures.inception_weights
make_image_folder = _metrics_fixtures.make_image_folder

NUM_SAMPLES = 6
# The one-process run every other sampling run is compared with: 6 images of 8x8 in 2 DDPM steps.
SAMPLING = ["--num-samples", NUM_SAMPLES, "--steps", 2, "--seed", 0, "--device", "cpu"]


def run(*argv) -> dict | None:
    """Runs eval_fid's main in this process."""
    return eval_fid.main(eval_fid.build_parser().parse_args([str(a) for a in argv]))


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pixel-space SDTPipeline (8x8 RGB, 10 classes) with perturbed random weights, saved."""
    torch.manual_seed(0)
    transformer = SDTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=10,
        attention_backend="sdpa",
    )
    perturbed(transformer)  # a fresh adaLN-Zero model outputs zeros
    id2label = {i: f"Digit {i}" for i in range(10)}
    pipe = SDTPipeline(transformer.eval(), SDTPipeline.dit_scheduler(), None, id2label=id2label)
    folder = tmp_path_factory.mktemp("eval") / "pipeline"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference_16(make_image_folder) -> Path:
    """Eight 16x16 reference images: twice the samples' size."""
    return make_image_folder(8, size=16, seed=7, brightness=40.0)


@pytest.fixture(scope="module")
def single_run(model_dir: Path, reference_16: Path, inception_weights: Path, tmp_path_factory) -> dict:
    """One process, batches of 4: KID against a resized reference, with the ADM npz."""
    out = tmp_path_factory.mktemp("single") / "eval"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = run("--model", model_dir, *SAMPLING, "--batch-size", 4, "--ref", reference_16, "--resize-ref",
                      "--metrics", "kid", "--inception-weights", inception_weights, "--npz", "--out", out)
    return {"out": out, "results": results, "printed": printed.getvalue(), "pngs": pngs(out / "samples")}


def test_samples_dir_fid_equals_a_direct_torch_fidelity_call(make_image_folder, inception_weights, tmp_path, capsys):
    samples, reference = make_image_folder(4, size=16, seed=1), make_image_folder(5, size=16, seed=2, brightness=60.0)
    out = tmp_path / "eval"
    results = run("--samples-dir", samples, "--ref", reference, "--metrics", "fid",
                  "--inception-weights", inception_weights, "--out", out, "--device", "cpu")
    direct = torch_fidelity.calculate_metrics(
        input1=str(samples), input2=str(reference), fid=True, feature_extractor_weights_path=str(inception_weights),
        cuda=False, cache=False, verbose=False,
    )
    fid = torch_fidelity.KEY_METRIC_FID
    assert results[fid] == pytest.approx(direct[fid], rel=1e-6) and results[fid] > 1.0
    recorded = json.loads((out / "results.json").read_text())
    assert recorded["metrics"][fid] == pytest.approx(direct[fid], rel=1e-6)
    protocol = recorded["protocol"]
    assert protocol["model"] is None and protocol["sampling"]["scheduler"] is None
    assert protocol["samples_path"] == str(samples.resolve()) and protocol["reference"]["kind"] == "folder"
    assert list(protocol["feature_extractors"]) == ["inception-v3-compat"]
    assert capsys.readouterr().out.splitlines()[0].split()[0] == "FID"


def test_sampling_writes_n_labelled_pngs_and_the_adm_npz(single_run: dict):
    samples = single_run["out"] / "samples"
    names = list(single_run["pngs"])
    assert len(names) == NUM_SAMPLES and [int(n[:6]) for n in names] == list(range(NUM_SAMPLES))
    assert labels_from_file_names(names) == sample_labels(NUM_SAMPLES, 10, "random", seed=0)
    assert all(f"_{n.split('_')[1]}_digit_{n.split('_')[1]}.png" in n for n in names)
    with np.load(single_run["out"] / "samples.npz") as npz:
        assert npz.files == ["arr_0"]
        arr = npz["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (NUM_SAMPLES, 8, 8, 3)
    for index, name in enumerate(names):
        np.testing.assert_array_equal(arr[index], np.array(Image.open(samples / name)))
    assert len({image.tobytes() for image in arr}) == NUM_SAMPLES and arr.std() > 10


def test_results_hold_metrics_and_protocol_and_kid_adapts_to_few_samples(single_run: dict, model_dir: Path):
    results = single_run["results"]
    assert results["kernel_inception_distance_mean"] > 0 and results["kid_subset_size"] == NUM_SAMPLES
    assert any("KID subset size lowered from 1000 to 6" in note for note in results["notes"])
    assert "note: KID subset size lowered from 1000 to 6" in single_run["printed"]
    assert "KID" in single_run["printed"] and "results.json" in single_run["printed"]

    recorded = json.loads((single_run["out"] / "results.json").read_text())
    assert recorded["metrics"]["kernel_inception_distance_mean"] == pytest.approx(
        results["kernel_inception_distance_mean"]
    )
    protocol = recorded["protocol"]
    assert protocol["model"]["path"] == str(model_dir.resolve())
    assert set(protocol["model"]["config_sha256"]) == {
        "model_index.json", "transformer/config.json", "scheduler/scheduler_config.json"
    }
    sampling = protocol["sampling"]
    assert sampling["scheduler"] == "DDPMScheduler"
    assert sampling["scheduler_config"]["variance_type"] == "learned_range"  # DiT's sampler, as saved
    assert (sampling["num_inference_steps"], sampling["guidance_scale"]) == (2, 1.5)
    assert sampling["guidance_channels"] == "all" and sampling["guidance_interval"] == [0.0, 1.0]
    assert protocol["extra"]["attention_backend"] == {"requested": "auto", "ran": {"cpu": "sdpa"}}
    assert (sampling["label_mode"], sampling["seed"], protocol["num_samples"]) == ("random", 0, NUM_SAMPLES)
    assert protocol["reference"]["kind"] == "folder" and protocol["reference"]["resize"] is True
    assert protocol["feature_extractors"]["inception-v3-compat"]["sha256"]
    assert {"torch-fidelity", "sdt-gen", "torch", "diffusers"} <= set(protocol["versions"])
    assert len(protocol["extra"]["weights_sha256"]) == 64 and protocol["extra"]["num_processes"] == 1
    assert len((single_run["out"] / "history.jsonl").read_text().splitlines()) == 1


def test_rerun_draws_nothing_new_and_appends_history(single_run: dict, model_dir, constant_classifier):
    out = single_run["out"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "samples").glob("*.png")}
    # Scored by the classifier alone this time: no torch-fidelity metric, no reference.
    results = run("--model", model_dir, *SAMPLING, "--metrics", "--classifier", constant_classifier, "--out", out)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "samples").glob("*.png")} == stamps
    labels = np.array(labels_from_file_names(list(single_run["pngs"])))
    assert results["classifier_accuracy"] == pytest.approx((labels == 3).mean())
    assert "classifier Fréchet distance skipped: it needs reference images (--ref)" in results["notes"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[1] == json.loads((out / "results.json").read_text())
    assert "kernel_inception_distance_mean" in history[0]["metrics"] and history[1]["protocol"]["reference"] is None


def test_interrupted_run_continues_in_the_same_folder(single_run: dict, model_dir, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    real_call, calls = SDTPipeline.__call__, []

    def interrupted(self, *args, **kwargs):
        calls.append(len(kwargs["class_labels"]))
        if len(calls) > 1:
            raise KeyboardInterrupt  # as if the job were killed after the first batch
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(SDTPipeline, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run("--model", model_dir, *SAMPLING, "--batch-size", 2, "--metrics", "--out", out)
    first = pngs(out / "samples")
    assert len(first) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "samples").glob("*.png")}

    monkeypatch.setattr(SDTPipeline, "__call__", real_call)
    run("--model", model_dir, *SAMPLING, "--batch-size", 2, "--metrics", "--out", out)
    assert pngs(out / "samples") == single_run["pngs"]  # exactly N, identical to the uninterrupted run
    assert {n: (out / "samples" / n).stat().st_mtime_ns for n in first} == stamps  # the first two untouched


def test_a_rerun_draws_the_missing_sample_and_other_settings_are_refused_in_one_line(
    single_run: dict, model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "eval"
    shutil.copytree(single_run["out"] / "samples", out / "samples")
    missing = sorted((out / "samples").glob("*.png"))[3]
    missing.unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "samples").glob("*.png")}
    run("--model", model_dir, *SAMPLING, "--metrics", "--out", out)
    assert pngs(out / "samples") == single_run["pngs"]
    assert {n: (out / "samples" / n).stat().st_mtime_ns for n in stamps} == stamps  # only the missing one drawn

    # The script ends a run with other settings in one line and status 2, before drawing anything.
    capsys.readouterr()
    argv = ["--model", model_dir, *SAMPLING, "--guidance-scale", 4, "--metrics", "--out", out]
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {out / 'samples'} holds images drawn with guidance_scale 1.5; this run asks for 4.0. Rerun with the "
        f"settings in {out / 'samples' / 'sampling.json'} or write to another folder"
    )
    assert pngs(out / "samples") == single_run["pngs"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_sample_the_same_images_as_one(single_run: dict, model_dir, tmp_path):
    out = tmp_path / "eval"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--cpu",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(SCRIPT),
        "--model", str(model_dir), *map(str, SAMPLING), "--batch-size", "4", "--metrics", "--out", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert pngs(out / "samples") == single_run["pngs"]  # exactly N unique images, byte-identical
    assert f"wrote {NUM_SAMPLES} samples" in done.stdout and done.stdout.count("wrote") == 1  # main process only


def test_bad_input_fails_before_sampling_with_a_clear_error(
    model_dir, reference_16, inception_weights, make_image_folder, tmp_path, monkeypatch, capsys
):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled despite bad input")

    monkeypatch.setattr(SDTPipeline, "__call__", no_sampling)
    out = tmp_path / "eval"
    base = ["--model", model_dir, *SAMPLING, "--out", out, "--inception-weights", inception_weights]

    with pytest.raises(FileNotFoundError, match="model folder .*missing does not exist"):
        run("--model", tmp_path / "missing", "--ref", reference_16, "--out", out)
    broken = shutil.copytree(model_dir, tmp_path / "broken")
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks the 'transformer' component's weights"):
        run("--model", broken, "--ref", reference_16, "--out", out)
    with pytest.raises(FileNotFoundError, match="reference .*nowhere does not exist \\(--ref\\)"):
        run(*base, "--ref", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="fid compare against a reference: pass --ref"):
        run(*base, "--metrics", "fid")
    with pytest.raises(ValueError, match="holds 16x16 images but the samples are 8x8; pass --resize-ref"):
        run(*base, "--ref", reference_16, "--metrics", "kid")
    with pytest.raises(FileNotFoundError, match="reference cache 'imagenet' .* lacks"):
        run(*base, "--ref-cache", "imagenet", "--cache-root", tmp_path)
    with pytest.raises(ValueError, match="000.png does not name a sample"):  # labels unknown for --classifier
        run("--samples-dir", make_image_folder(2, size=8), "--metrics", "--classifier", tmp_path, "--out", out)
    assert not out.exists()

    # The script itself turns these into a one-line error and exit status 2.
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model", str(tmp_path / "missing"), "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model folder") and "does not exist" in err and err.count("\n") == 1


def test_missing_inception_weights_stop_at_once_offline(model_dir, reference_16, tmp_path, monkeypatch):
    monkeypatch.setattr(SDTPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model first"))
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as missing:  # TORCH_HOME is empty; the network is refused
        run("--model", model_dir, *SAMPLING, "--ref", reference_16, "--resize-ref", "--out", tmp_path / "eval")
    assert time.monotonic() - start < 5.0
    message = str(missing.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message
    assert URL_INCEPTION_V3 in message and "--inception-weights PATH" in message
    assert not (tmp_path / "eval").exists()


def test_hf_hub_offline_ends_the_script_with_one_line_before_any_download(
    model_dir, reference_16, tmp_path, monkeypatch, capsys
):
    attempts = []
    monkeypatch.setattr(fidelity, "urlopen", lambda *args, **kwargs: attempts.append(args))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *args, **kwargs: attempts.append(args))
    monkeypatch.setattr(SDTPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model first"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    argv = [SCRIPT, "--model", model_dir, *SAMPLING, "--ref", reference_16, "--resize-ref", "--out", tmp_path / "eval"]
    monkeypatch.setattr(sys, "argv", [str(a) for a in argv])
    capsys.readouterr()
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert time.monotonic() - start < 3.0 and exit_info.value.code == 2 and attempts == []
    err = capsys.readouterr().err
    assert err.startswith("error: inception-v3-compat weights weights-inception-2015-12-05-6726825d.pth")
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE is set" in err and URL_INCEPTION_V3 in err
    assert str(default_weights_path("inception-v3-compat")) in err and "--inception-weights PATH" in err
    assert not (tmp_path / "eval").exists()


def _save_constant_vit(folder: Path, num_labels: int = 10, predicted: int = 3) -> Path:
    """A tiny ViT classifier whose head always predicts class ``predicted`` (its features stay informative)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=num_labels, id2label={i: f"digit {i}" for i in range(num_labels)},
    )
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.nn.functional.one_hot(torch.tensor(predicted), num_labels) * 10.0)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def constant_classifier(tmp_path_factory) -> Path:
    """A tiny ViT classifier folder that always predicts class 3."""
    return _save_constant_vit(tmp_path_factory.mktemp("classifier") / "vit", predicted=3)


def test_classifier_gives_conditional_accuracy_and_frechet_distance(
    single_run: dict, model_dir, reference_16, constant_classifier, tmp_path
):
    out = tmp_path / "eval"
    results = run("--samples-dir", single_run["out"] / "samples", "--metrics", "--classifier", constant_classifier,
                  "--ref", reference_16, "--resize-ref", "--out", out, "--device", "cpu")
    labels = np.array(labels_from_file_names(list(single_run["pngs"])))
    assert 0 < (labels == 3).mean() < 1
    assert results["classifier_accuracy"] == pytest.approx((labels == 3).mean())
    assert np.isfinite(results["classifier_frechet_distance"]) and results["classifier_frechet_distance"] > 0
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert protocol["extra"]["classifier"]["path"] == str(constant_classifier.resolve())

    too_few = _save_constant_vit(tmp_path / "five", num_labels=5)
    with pytest.raises(ValueError, match="has 5 labels but the model has 10 classes"):
        run("--model", model_dir, *SAMPLING, "--metrics", "--classifier", too_few, "--out", tmp_path / "other")


def test_one_channel_pipeline_scored_by_a_one_channel_classifier(make_image_folder, tmp_path):
    """The README's digits evaluation: grey samples written as PNGs, then read by the digits classifier."""
    torch.manual_seed(0)
    transformer = SDTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10,
        attention_backend="sdpa",
    )
    id2label = {i: str(i) for i in range(10)}
    SDTPipeline(perturbed(transformer).eval(), SDTPipeline.dit_scheduler(), None, id2label=id2label).save_pretrained(
        tmp_path / "pipeline"
    )
    config = SDTConfig.from_preset(
        "SDT-H-XT", num_labels=10, id2label=id2label, image_size=32, num_channels=1, decay_mode="none"
    )
    classifier = save_classifier(SDTForImageClassification(config).eval(), tmp_path / "classifier")

    out = tmp_path / "eval"
    results = run("--model", tmp_path / "pipeline", *SAMPLING, "--metrics", "--classifier", classifier,
                  "--ref", make_image_folder(12, size=8, seed=3), "--out", out)
    files = sorted((out / "samples").glob("*.png"))
    assert len(files) == NUM_SAMPLES
    with Image.open(files[0]) as image:
        assert image.mode == "L" and image.size == (8, 8)
    assert 0 <= results["classifier_accuracy"] <= 1
    assert np.isfinite(results["classifier_frechet_distance"])
    assert 0 <= results["classifier_precision"] <= 1 and 0 <= results["classifier_recall"] <= 1
    assert json.loads((out / "results.json").read_text())["metrics"]["classifier_recall"] == results["classifier_recall"]


def test_sample_py_output_is_scored_by_samples_dir_with_a_classifier(model_dir, reference_16, constant_classifier,
                                                                     tmp_path):
    samples = tmp_path / "samples"
    argv = ["--model", model_dir, "--classes", "all", "--per-class", 1, "--steps", 1, "--out-dir", samples]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["sample.py", *map(str, argv)])
        runpy.run_path(str(ROOT / "sample.py"), run_name="__main__")
    results = run("--samples-dir", samples, "--metrics", "--classifier", constant_classifier, "--ref", reference_16,
                  "--resize-ref", "--out", tmp_path / "eval", "--device", "cpu")
    assert results["classifier_accuracy"] == pytest.approx(0.1)  # one sample per class, the classifier says 3


def test_sigterm_keeps_the_written_samples_exits_75_and_a_rerun_finishes_them(model_dir, tmp_path):
    import signal
    import time

    from PIL import Image

    argv = ["--model", str(model_dir), "--num-samples", "40", "--labels", "balanced", "--steps", "40",
            "--batch-size", "2", "--metrics"]
    stopped = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(SCRIPT), *argv, "--out", str(stopped)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((stopped / "samples").glob("*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 75, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    assert "stopped by a signal:" in line and "of 40 samples are written" in line and "run the same command again" in line
    kept = sorted((stopped / "samples").glob("*.png"))
    assert 0 < len(kept) < 40
    for path in kept:  # complete PNGs, no partial files
        Image.open(path).load()
    assert not list((stopped / "samples").glob("*.partial"))

    run(*argv, "--out", stopped)  # the rerun continues from the kept images
    straight = tmp_path / "straight"
    run(*argv, "--out", straight)
    assert pngs(stopped / "samples") == pngs(straight / "samples")


def write_digits(folder: Path, images: np.ndarray) -> Path:
    """uint8 (N, H, W) digits as grey PNGs, named as samples are (``<index>_<label>.png``)."""
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:06d}_0.png")
    return folder


def test_memorization_of_a_samples_folder_against_training_and_held_out_folders(tmp_path, capsys):
    from sdt_gen.data import DigitsDataset

    digits = {split: ((DigitsDataset(split, image_size=16).images[:, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
              for split in ("train", "val")}
    train = write_digits(tmp_path / "train", digits["train"])
    heldout = write_digits(tmp_path / "heldout", digits["val"][:60])
    copies = np.concatenate([digits["train"][:30], digits["val"][60:90]])  # half copies, half new digits
    samples = write_digits(tmp_path / "samples", copies)
    out = tmp_path / "eval"
    results = run("--samples-dir", samples, "--metrics", "memorization", "--train-ref", train, "--heldout-ref", heldout,
                  "--out", out)
    assert results["memorized_fraction"] == pytest.approx(0.5, abs=0.05)
    assert results["closer_than_heldout_fraction"] == pytest.approx(0.5, abs=0.05)
    assert results["heldout_memorized_fraction"] < 0.05 and results["memorization_space"] == "pixels, 16 px"
    assert "Memorized" in capsys.readouterr().out
    picture = Image.open(out / "copies.png")  # 16 rows: the most copy-like samples beside their nearest train image
    assert picture.width < picture.height and picture.height >= 16 * 64
    assert json.loads((out / "results.json").read_text())["metrics"]["memorized_fraction"] == results["memorized_fraction"]

    with pytest.raises(ValueError, match="pass --train-ref"):
        run("--samples-dir", samples, "--metrics", "memorization", "--out", out)
    with pytest.raises(FileNotFoundError, match="--train-ref .*nowhere does not exist"):
        run("--samples-dir", samples, "--metrics", "memorization", "--train-ref", tmp_path / "nowhere", "--out", out)
    with pytest.raises(ValueError, match="holds 8x8 images but the samples are 16x16"):
        small = write_digits(tmp_path / "small", digits["train"][:4, ::2, ::2])
        run("--samples-dir", samples, "--metrics", "memorization", "--train-ref", small, "--out", out)
    with pytest.raises(ValueError, match="--heldout-ref digits: .* none is held out"):
        run("--samples-dir", samples, "--metrics", "memorization", "--train-ref", "digits", "--heldout-ref", "digits")
    bundled = run("--samples-dir", samples, "--metrics", "memorization", "--train-ref", "digits", "--out", out)
    assert bundled["train_images"] == 1797 and bundled["memorized_fraction"] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(FileNotFoundError, match="no images .* found under .*empty"):
        (tmp_path / "empty").mkdir()
        run("--samples-dir", tmp_path / "empty", "--metrics", "memorization", "--train-ref", train, "--out", out)
