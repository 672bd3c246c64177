import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from sdt_gen import SDTPipeline, SDTTransformer2DModel

from helpers import library_warnings, perturbed

SCRIPT = Path(__file__).resolve().parents[1] / "sample.py"
ID2LABEL = {i: f"class {i}" for i in range(10)}
ID2LABEL[4] = "otter"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny latent pipeline: 8x8x4 latents decoded to 16x16 images."""
    torch.manual_seed(0)
    transformer = SDTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10,
        attention_backend="sdpa",
    )
    perturbed(transformer)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    pipe = SDTPipeline(transformer.eval(), SDTPipeline.dit_scheduler(), vae.eval(), id2label=ID2LABEL)
    folder = tmp_path_factory.mktemp("cli") / "model"
    pipe.save_pretrained(folder)
    return folder


def run_cli(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, argv)])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_grid_png_one_row_per_class(model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "grid.png"
    run_cli(monkeypatch, "--model", model_dir, "--classes", 7, "otter", "Class 2", "--per-class", 3,
            "--guidance-scale", 4, "--steps", 2, "--scheduler", "ddim", "--seed", 0, "--out", out,
            "--batch-size", 4, "--device", "cpu")
    grid = Image.open(out)
    padding, tile = 2, 16 * 4  # 16 px samples are shown at 4x
    assert grid.format == "PNG"
    assert grid.height == 3 * (tile + padding) + padding  # one row per class
    assert grid.width > 3 * (tile + padding) + padding  # three columns plus the row labels
    printed = capsys.readouterr().out
    assert str(out) in printed and "took" in printed


def test_out_dir_one_png_per_image_with_label(model_dir, tmp_path, monkeypatch):
    out_dir = tmp_path / "samples"
    run_cli(monkeypatch, "--model", model_dir, "--classes", "all", "--per-class", 1, "--steps", 1,
            "--scheduler", "dpm", "--out-dir", out_dir)
    files = sorted(out_dir.glob("*.png"))
    assert len(files) == 10
    assert files[4].name == "000004_4_otter.png"  # the name eval_fid.py reads labels from
    assert all(Image.open(f).size == (16, 16) for f in files)


def test_unknown_class_is_an_error(model_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, "--model", model_dir, "--classes", "oter", "--steps", 1, "--out", tmp_path / "g.png")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: unknown class name 'oter'; closest names: 'otter'"


def test_missing_model_is_an_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, "--model", tmp_path / "missing", "--classes", 1, "--out", tmp_path / "g.png")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1


def test_sampling_prints_no_library_warning_and_the_variance_note_once(model_dir, monkeypatch, tmp_path):
    from sdt_gen.pipelines import pipeline_sdt, scheduler_by_name

    with library_warnings() as caught:
        for dtype in ("bfloat16", "float32"):  # loaded in another dtype than saved, and as saved
            run_cli(monkeypatch, "--model", model_dir, "--classes", "0", "--steps", "2", "--dtype", dtype,
                    "--out", tmp_path / f"{dtype}.png")
        run_cli(monkeypatch, "--model", model_dir, "--classes", "0", "--steps", "2", "--out-dir", tmp_path / "dir")
    assert caught == []
    assert (tmp_path / "bfloat16.png").is_file() and (tmp_path / "float32.png").is_file()

    # DiT's learned-variance scheduler config under DPM-Solver: a copy without it, said once, not once per batch
    # (eval_fid.py and the training grids call the pipeline batch after batch).
    notes = []
    monkeypatch.setattr(pipeline_sdt.logger, "info", notes.append)
    pipe = SDTPipeline.from_pretrained(model_dir)
    pipe.scheduler = scheduler_by_name("dpm", pipe.scheduler.config)
    for label in (0, 1, 2):
        pipe([label], num_inference_steps=2, output_type="np")
    assert [n for n in notes if "learned variance cannot be used here" in n] == [
        "sampling with DPMSolverMultistepScheduler(variance_type=None): learned variance cannot be used here"
    ]


def test_sigterm_keeps_the_written_images_exits_75_and_a_rerun_finishes_them(model_dir, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import time

    argv = ["--model", str(model_dir), "--classes", "all", "--per-class", "4", "--steps", "30", "--batch-size", "2",
            "--device", "cpu"]
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, str(SCRIPT), *argv, "--out-dir", str(stopped)], cwd=tmp_path,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(stopped.glob("*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 75, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("stopped by a signal: ") and "of 40 samples are written in" in line
    assert "run the same command again" in line and line.endswith("(exit status 75)")
    kept = sorted(stopped.glob("*.png"))
    assert 0 < len(kept) < 40
    for path in kept:
        Image.open(path).load()  # complete PNGs

    run_cli(monkeypatch, *argv, "--out-dir", stopped)
    run_cli(monkeypatch, *argv, "--out-dir", tmp_path / "straight")
    assert {p.name: p.read_bytes() for p in stopped.glob("*.png")} == {
        p.name: p.read_bytes() for p in (tmp_path / "straight").glob("*.png")}


def test_guidance_interval_and_attention_backend_options(model_dir, tmp_path, monkeypatch, capsys):
    common = ["--model", model_dir, "--classes", 7, "otter", "--guidance-scale", 4, "--steps", 3, "--scheduler", "ddim",
              "--device", "cpu"]
    run_cli(monkeypatch, *common, "--out-dir", tmp_path / "every")
    assert "attention sdpa on cpu (auto)" in capsys.readouterr().out
    run_cli(monkeypatch, *common, "--out-dir", tmp_path / "interval", "--guidance-interval", 0.1, 0.7,
            "--attention-backend", "eager")
    assert "attention eager on cpu" in capsys.readouterr().out
    every, interval = (sorted((tmp_path / name).glob("*.png")) for name in ("every", "interval"))
    assert [p.name for p in every] == [p.name for p in interval]
    assert any(Image.open(a).tobytes() != Image.open(b).tobytes() for a, b in zip(every, interval))
    with pytest.raises(SystemExit):
        run_cli(monkeypatch, *common, "--out-dir", tmp_path / "bad", "--guidance-interval", 0.7, 0.1)
    assert "guidance_interval must satisfy 0 <= lo <= hi <= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(monkeypatch, *common, "--out-dir", tmp_path / "bad", "--flow-shift", 3)
    assert "a flow shift (3.0) applies to the flow schedulers" in capsys.readouterr().err


def test_grid_images_are_the_folder_images_at_any_batch_size(model_dir, tmp_path, monkeypatch):
    common = ["--model", model_dir, "--classes", 7, "otter", "--per-class", 3, "--steps", 2, "--seed", 5, "--device", "cpu"]
    run_cli(monkeypatch, *common, "--out", tmp_path / "grid.png", "--batch-size", 2)
    run_cli(monkeypatch, *common, "--out-dir", tmp_path / "samples", "--batch-size", 6)
    grid, files = np.asarray(Image.open(tmp_path / "grid.png")), sorted((tmp_path / "samples").glob("*.png"))
    padding, scale, size = 2, 4, 16 * 4  # 16 px samples are shown at 4x, the row labels on the left
    for i, path in enumerate(files):
        row, col = divmod(i, 3)
        left, top = grid.shape[1] - (3 - col) * (size + padding), padding + row * (size + padding)
        np.testing.assert_array_equal(grid[top : top + size : scale, left : left + size : scale], np.asarray(Image.open(path)))


def test_out_dir_rerun_draws_only_the_missing_images_as_a_fresh_run(model_dir, tmp_path, monkeypatch, capsys):
    argv = ["--model", model_dir, "--classes", "all", "--steps", 2, "--batch-size", 4, "--device", "cpu"]
    run_cli(monkeypatch, *argv, "--out-dir", tmp_path / "fresh")
    folder = tmp_path / "resumed"
    run_cli(monkeypatch, *argv, "--out-dir", folder, "--batch-size", 3)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    (folder / "000004_4_otter.png").unlink()
    capsys.readouterr()
    run_cli(monkeypatch, *argv, "--out-dir", folder)
    assert capsys.readouterr().out.startswith(f"wrote 10 PNGs in {folder} (9 from an earlier run); sampling 1 images")
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png") if p.name != "000004_4_otter.png"} == {
        name: stamp for name, stamp in stamps.items() if name != "000004_4_otter.png"}  # untouched
    assert pngs(folder) == pngs(tmp_path / "fresh")


@pytest.mark.parametrize("change, named", [
    (["--guidance-scale", 2], "guidance_scale 4.0; this run asks for 2.0"),
    (["--steps", 3], "num_inference_steps 2; this run asks for 3"),
    (["--seed", 1], "seed 0; this run asks for 1"),
    (["--scheduler", "ddim"], "scheduler 'DDPMScheduler'; this run asks for 'DDIMScheduler'"),
    (["--dtype", "bfloat16"], "dtype 'torch.float32'; this run asks for 'torch.bfloat16'"),
    (["--per-class", 2], "labels [7, 4]; this run asks for [7, 7, 4, 4]"),
])
def test_out_dir_of_another_run_is_refused_in_one_line_naming_the_setting(model_dir, tmp_path, monkeypatch, capsys,
                                                                          change, named):
    folder = tmp_path / "samples"
    argv = ["--model", model_dir, "--classes", 7, "otter", "--steps", 2, "--device", "cpu", "--out-dir", folder]
    run_cli(monkeypatch, *argv)
    before = pngs(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, *argv, *change)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == (
        f"error: {folder} holds images drawn with {named}. Rerun with the settings in {folder / 'sampling.json'} or "
        f"write to another folder"
    )
    assert "wrote" not in captured.out and pngs(folder) == before  # never mixed


def test_out_dir_written_before_sample_py_recorded_its_settings_is_refused(model_dir, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "samples"
    argv = ["--model", model_dir, "--classes", 7, "otter", "--steps", 2, "--device", "cpu", "--out-dir", folder]
    run_cli(monkeypatch, *argv)
    (folder / "sampling.json").unlink()  # as the sample.py of before wrote its folders
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, *argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {folder} holds 2 sample PNGs but no sampling.json, so the settings that drew them are unknown "
        f"(sample.py wrote such folders before it recorded them); move them away or write to another folder"
    )
