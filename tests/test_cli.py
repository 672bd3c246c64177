"""Every command line: bad values and user errors end in one line, ``error: ...`` or argparse's, and status 2."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "train_dit.py": [ROOT / "train_dit.py"],
    "train_classifier.py": [ROOT / "train_classifier.py"],
    "sample.py": [ROOT / "sample.py", "--classes", "0"],
    "eval_fid.py": [ROOT / "eval_fid.py"],
    "convert": ["-m", "sdt_gen.convert", "absent.pt", "--out", "pipe"],
    "decay_study.py": [ROOT / "experiments" / "decay_study.py"],
}


def run(*argv, cwd):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "script, flag, value",
    [("sample.py", "--guidance-scale", "nan"), ("sample.py", "--per-class", "-1"), ("eval_fid.py", "--num-samples", "0"),
     ("eval_fid.py", "--guidance-scale", "inf"), ("train_dit.py", "--lr", "-1e-4"), ("train_dit.py", "--max-steps", "0"),
     ("train_classifier.py", "--epochs", "-2"), ("decay_study.py", "--seeds", "-1")],
)
def test_bad_values_are_refused_in_one_line(script, flag, value, tmp_path):
    argv = SCRIPTS[script] + (["--model", tmp_path] if script in ("sample.py", "eval_fid.py") else [])
    result = run(*argv, f"{flag}={value}", cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert f"argument {flag}" in last and repr(value) in last
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("script", ["sample.py", "eval_fid.py", "convert"])
def test_user_errors_are_one_line_and_debug_shows_the_traceback(script, tmp_path):
    argv = SCRIPTS[script] + (["--model", tmp_path / "missing"] if script != "convert" else [])
    result = run(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" in run(*argv, "--debug", cwd=tmp_path).stderr
