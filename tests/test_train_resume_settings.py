"""A run stays what it was started as: resume takes the run's own settings, refuses a changed experiment before
writing anything, records what it may change; a refused start leaves the results folder as it was."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_classifier  # noqa: E402
import train_dit  # noqa: E402

from test_train_dit import FAST, env_one_thread  # noqa: E402

# A run that differs from the defaults in its model, positions and objective.
NON_DEFAULT = ["--decay-mode", "none", "--position-embedding", "rope", "--rope-base", "100", "--objective", "flow"]
RUN = "000-SDT-Ti-2-digits-flow"


def run(results: Path, *extra):
    return train_dit.main(train_dit.build_parser().parse_args(["--results-dir", str(results), *FAST, *extra]))


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size: what a refused start must leave as it was."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> Path:
    """A 2-step run with non-default model flags (a checkpoint at step 2)."""
    results = tmp_path_factory.mktemp("started") / "results"
    run(results, "--max-steps", "2", *NON_DEFAULT)
    return results


def test_resume_without_model_flags_continues_the_run_exactly(started, tmp_path):
    straight = tmp_path / "straight"
    run(straight, "--max-steps", "4", *NON_DEFAULT)
    resumed = tmp_path / "resumed"
    subprocess.run(["cp", "-r", str(started), str(resumed)], check=True)
    # Only the schedule on the command line: the run's model, positions and objective come from its config.json.
    run_dir = train_dit.main(train_dit.build_parser().parse_args(["--max-steps", "4", "--resume", str(resumed / RUN)]))
    assert run_dir.name == RUN
    a = load_file(straight / RUN / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(run_dir / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-6 for k in a)
    config = json.loads((run_dir / "pipeline" / "transformer" / "config.json").read_text())
    assert (config["decay_mode"], config["position_embedding"], config["rope_base"]) == ("none", "rope", 100.0)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["max_steps"] == 2 and "given_options" not in saved  # the starting config is never rewritten
    (entry,) = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert entry["changes"] == {"max_steps": [2, 4]} and entry["checkpoint"].endswith("step-0000002")


def test_a_changed_experiment_is_refused_before_anything_is_written(started):
    before = snapshot(started)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_dit.py"), "--results-dir", str(started), *FAST, "--max-steps", "4",
         "--objective", "flow", "--resume", "latest", "--decay-mode", "fixed", "--decay-layout", "decomposed",
         "--seed", "3"],
        capture_output=True, text=True, env=env_one_thread(), timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for line in ("--decay-mode: the run has 'none', you gave 'fixed'",
                 "--decay-layout: the run has 'full', you gave 'decomposed'", "--seed: the run has 0, you gave 3"):
        assert line in result.stderr
    assert snapshot(started) == before


@pytest.mark.parametrize("flag, value", [("--global-batch-size", "16"), ("--snr-gamma", "5"), ("--rope-base", "10000"),
                                         ("--time-sampling", "logit_normal"), ("--no-learn-sigma", None)])
def test_every_class_of_experiment_flag_is_refused(started, flag, value):
    before = snapshot(started)
    argv = ["--results-dir", str(started), "--objective", "flow", "--resume", "latest", flag, *([value] if value else [])]
    with pytest.raises(ValueError, match=f"{flag}: the run has"):
        train_dit.main(train_dit.build_parser().parse_args(argv))
    assert snapshot(started) == before


def test_the_learning_rate_may_change_with_a_recorded_warning(started, tmp_path, capsys):
    results = tmp_path / "results"
    subprocess.run(["cp", "-r", str(started), str(results)], check=True)
    run_dir = run(results, "--max-steps", "3", "--objective", "flow", "--resume", "latest", "--lr", "0.001")
    assert "--lr changed from 0.002 to 0.001 on resume" in capsys.readouterr().out
    (entry,) = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert entry["changes"]["lr"] == [0.002, 0.001]


def test_refused_starts_leave_the_results_folder_unchanged(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "keep.txt").write_text("earlier work")
    before = snapshot(results)
    for extra, message in ((["--init-from-dit", str(tmp_path / "missing.pt")], "missing.pt"),
                           (["--image-size", "15"], "not divisible by the patch size"),
                           (["--resume", "latest"], "no earlier SDT-Ti/2 run")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            run(results, "--max-steps", "1", *extra)
        assert snapshot(results) == before


def test_classifier_resume_refuses_another_model_and_takes_the_run_settings(tmp_path):
    results = tmp_path / "results"
    base = ["--results-dir", str(results), "--epochs", "1"]
    train_classifier.main(train_classifier.build_parser().parse_args([*base, "--decay-mode", "none"]))
    before = snapshot(results)
    with pytest.raises(ValueError, match="--decay-mode: the run has 'none', you gave 'cag'"):
        train_classifier.main(train_classifier.build_parser().parse_args([*base, "--resume", "latest", "--decay-mode", "cag"]))
    assert snapshot(results) == before
