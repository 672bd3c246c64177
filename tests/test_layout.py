"""The project's layout: scripts import the library, never each other, and no file grows past 500 lines."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_FOLDERS = ("experiments", "benchmarks")
TOP_SCRIPTS = ("train_dit.py", "train_classifier.py", "sample.py", "eval_fid.py")
MAX_LINES = 500
# Over the limit today, in files this change does not own; each to be split by its owner, then removed here.
LONG_FILES = {
    "train_dit.py",  # 594 lines: the training script (its recipes live in sdt_gen/training/recipes.py)
    "sdt_gen/models/transformer_sdt.py",  # 550 lines: the denoiser
    "sdt_gen/metrics/fidelity.py",  # 511 lines: torch-fidelity metrics
}


def script_files() -> list[Path]:
    return sorted(p for folder in SCRIPT_FOLDERS for p in (ROOT / folder).glob("*.py"))


def project_files() -> list[Path]:
    library = [*ROOT.glob("sdt_gen/**/*.py"), *ROOT.glob("pipelines/**/*.py")]
    return sorted([*library, *script_files(), *(ROOT / name for name in TOP_SCRIPTS)])


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", script_files(), ids=name)
def test_no_script_edits_sys_path(path: Path):
    """What two scripts share belongs in the library; a script runs another by its command line."""
    assert "sys.path" not in path.read_text(), f"{name(path)} edits sys.path: import from sdt_gen instead"


@pytest.mark.parametrize("path", project_files(), ids=name)
def test_no_file_is_over_500_lines(path: Path):
    lines = len(path.read_text().splitlines())
    if name(path) in LONG_FILES:
        assert lines > MAX_LINES, f"{name(path)} is {lines} lines now: remove it from LONG_FILES"
        return
    assert lines <= MAX_LINES, f"{name(path)} is {lines} lines, over {MAX_LINES}: split it by concept"


def test_studies_and_timings_live_apart():
    """Scripts that train models and publish findings are in experiments/; benchmarks/ times things."""
    assert {p.name for p in (ROOT / "experiments").glob("*.py")} >= {
        "decay_study.py", "decay_study_report.py", "objective_comparison.py", "guidance_interval.py"}
    assert all(p.name.startswith(("bench_", "gpu_report", "plan_run", "report_classifier_flops"))
               for p in (ROOT / "benchmarks").glob("*.py"))
