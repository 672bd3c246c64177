"""train_dit.py under what clusters do to runs: damaged checkpoints, full disks, preemption signals, kills mid-export."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import train_dit  # noqa: E402
from test_train_dit import FAST, env_one_thread, run  # noqa: E402

from sdt_gen.training import CHECKPOINT_MANIFEST, PREEMPTED_EXIT_CODE, verify_checkpoint  # noqa: E402

RUN = "000-SDT-Ti-2-digits"


def transformer_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"))


def assert_same_weights(a: dict, b: dict, tolerance: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() <= tolerance, key


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4."""
    base = tmp_path_factory.mktemp("base")
    run(base, "--max-steps", "4")
    return base


@pytest.fixture(scope="module")
def resumed_from_step_2(two_checkpoints, tmp_path_factory) -> dict[str, torch.Tensor]:
    """What resuming the intact step-2 checkpoint to step 6 gives."""
    copy = tmp_path_factory.mktemp("direct")
    shutil.copytree(two_checkpoints / "results", copy / "results")
    run_dir = copy / "results" / RUN
    shutil.rmtree(run_dir / "checkpoints" / "step-0000004")
    run(copy, "--max-steps", "6", "--resume", str(run_dir / "checkpoints" / "step-0000002"))
    return transformer_weights(run_dir)


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one bit flipped in the middle
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "bitflip"])
@pytest.mark.parametrize("file", ["model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl"])
def test_resume_latest_passes_over_a_damaged_newest_checkpoint(
    two_checkpoints, resumed_from_step_2, tmp_path, file, how, capsys
):
    shutil.copytree(two_checkpoints / "results", tmp_path / "results")
    run_dir = tmp_path / "results" / RUN
    damage(run_dir / "checkpoints" / "step-0000004" / file, how)
    capsys.readouterr()
    run(tmp_path, "--max-steps", "6", "--resume", "latest")
    warnings = [line for line in capsys.readouterr().out.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and "step-0000004" in warnings[0] and file in warnings[0], warnings
    assert ("bytes" in warnings[0]) if how == "truncate" else ("sha256" in warnings[0])
    assert_same_weights(transformer_weights(run_dir), resumed_from_step_2)


def test_resume_from_a_damaged_checkpoint_path_refuses_in_one_line(two_checkpoints, tmp_path):
    shutil.copytree(two_checkpoints / "results", tmp_path / "results")
    checkpoint = tmp_path / "results" / RUN / "checkpoints" / "step-0000004"
    damage(checkpoint / "random_states_0.pkl", "truncate")
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_dit.py"), "--results-dir", str(tmp_path / "results"), *FAST,
         "--max-steps", "6", "--resume", str(checkpoint)],
        capture_output=True, text=True, env=env_one_thread(), timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --resume") and "random_states_0.pkl" in line and "--resume latest" in line


def test_every_checkpoint_records_its_files(two_checkpoints):
    checkpoint = two_checkpoints / "results" / RUN / "checkpoints" / "step-0000004"
    assert (checkpoint / CHECKPOINT_MANIFEST).is_file()
    verify_checkpoint(checkpoint)
    assert train_dit.exported_step(two_checkpoints / "results" / RUN / "pipeline") == 4


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import accelerate

    real_save = accelerate.Accelerator.save_state

    def save_until_disk_is_full(self, output_dir=None, **kwargs):
        if output_dir.endswith("step-0000004"):
            Path(output_dir).mkdir()
            (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 100)  # part of it landed
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(output_dir) / "model.safetensors"))
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", save_until_disk_is_full)
    with pytest.raises(OSError, match=r"could not write checkpoint .*step-0000004: No space left on device"):
        run(tmp_path, "--max-steps", "6")
    checkpoints = tmp_path / "results" / RUN / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000002"]  # no temporary folder left
    verify_checkpoint(checkpoints / "step-0000002")
    monkeypatch.setattr(accelerate.Accelerator, "save_state", real_save)
    run(tmp_path, "--max-steps", "4", "--resume", "latest")  # and it loads


def test_a_run_killed_inside_the_final_export_is_completed_by_resume(tmp_path, monkeypatch):
    straight = run(tmp_path / "straight", "--max-steps", "4")
    real_manifest = train_dit.write_manifest

    def killed(folder, name, **fields):
        if fields.get("step") == 4:
            raise KeyboardInterrupt("killed inside the export")
        return real_manifest(folder, name, **fields)

    monkeypatch.setattr(train_dit, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", "--max-steps", "4")
    monkeypatch.setattr(train_dit, "write_manifest", real_manifest)
    run_dir = tmp_path / "killed" / "results" / RUN
    assert train_dit.exported_step(run_dir / "pipeline") == 2  # the step-4 export never landed
    run(tmp_path / "killed", "--max-steps", "4", "--resume", "latest")
    assert train_dit.exported_step(run_dir / "pipeline") == 4
    ema = torch.load(run_dir / "checkpoints" / "step-0000004" / "custom_checkpoint_0.pkl", weights_only=False)
    exported = transformer_weights(run_dir)
    for name, shadow in zip(train_dit_parameter_names(run_dir), ema["shadow_params"]):
        assert (exported[name] - shadow).abs().max() == 0, name
    assert_same_weights(exported, transformer_weights(straight))


def train_dit_parameter_names(run_dir: Path) -> list[str]:
    from sdt_gen import SDTTransformer2DModel

    model = SDTTransformer2DModel.from_pretrained(run_dir / "pipeline" / "transformer")
    return [name for name, _ in model.named_parameters()]


def start_training(tmp_path: Path, *args: str, launcher: list[str] | None = None) -> subprocess.Popen:
    command = [*(launcher or [sys.executable]), str(ROOT / "train_dit.py"), "--results-dir", str(tmp_path / "results"),
               *FAST, "--ckpt-every", "1000", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env_one_thread(), cwd=ROOT)


def signal_after_step(process: subprocess.Popen, log: Path, step: int, sig=signal.SIGTERM, timeout=300) -> str:
    deadline = time.monotonic() + timeout
    while f"step {step:07d} loss" not in (log.read_text() if log.is_file() else ""):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "training did not reach the step"
        time.sleep(0.05)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=timeout)
    return output


def train_to_the_end(folder: Path, *args: str) -> None:
    """A whole run in a subprocess, on one thread as the stopped run: float sums depend on the thread count."""
    process = start_training(folder, *args)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_exits_75_and_resume_is_exact(tmp_path, sig):
    train_to_the_end(tmp_path / "straight", "--max-steps", "40")
    straight = tmp_path / "straight" / "results" / RUN
    process = start_training(tmp_path / "stopped", "--max-steps", "40")
    output = signal_after_step(process, tmp_path / "stopped" / "results" / RUN / "log.txt", 3, sig)
    assert process.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    run_dir = tmp_path / "stopped" / "results" / RUN
    checkpoints = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert len(checkpoints) == 1 and checkpoints[0] < "step-0000040", checkpoints
    assert f"stopped by a signal; checkpoint {run_dir / 'checkpoints' / checkpoints[0]}" in output
    verify_checkpoint(run_dir / "checkpoints" / checkpoints[0])
    train_to_the_end(tmp_path / "stopped", "--max-steps", "40", "--resume", "latest")
    assert_same_weights(transformer_weights(run_dir), transformer_weights(straight))


@pytest.mark.slow
def test_two_processes_stop_together_on_sigterm_and_resume_exactly(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    process = start_training(tmp_path / "stopped", "--cpu", "--max-steps", "40", launcher=launcher)
    output = signal_after_step(process, tmp_path / "stopped" / "results" / RUN / "log.txt", 3)
    run_dir = tmp_path / "stopped" / "results" / RUN
    checkpoints = [p for p in (run_dir / "checkpoints").iterdir()]
    assert len(checkpoints) == 1 and (checkpoints[0] / "random_states_1.pkl").is_file(), output[-4000:]
    assert "stopped by a signal" in output and process.returncode != 0
    verify_checkpoint(checkpoints[0])

    def launch(folder, *args):
        result = subprocess.run([*launcher, str(ROOT / "train_dit.py"), "--results-dir", str(folder / "results"),
                                 *FAST, "--ckpt-every", "1000", "--cpu", "--max-steps", "40", *args],
                                capture_output=True, text=True, env=env_one_thread(), cwd=ROOT, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]

    launch(tmp_path / "stopped", "--resume", "latest")
    launch(tmp_path / "straight")
    assert_same_weights(transformer_weights(run_dir), transformer_weights(tmp_path / "straight" / "results" / RUN))
