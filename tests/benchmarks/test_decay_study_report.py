"""benchmarks/decay_study_report.py: the reanalysis of a study's results.json, and heads ranked by strength."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import decay_study_report  # noqa: E402

from sdt_gen.metrics import paired_difference  # noqa: E402

PUBLISHED_64 = ROOT / "docs" / "decay_study"


def study_results(fd: dict[str, list[list[float]]], accuracy: float = 0.9) -> dict:
    """A results.json of arms x seeds with FD at steps 800, 1600, 2400 (``fd[arm][seed]``), as the 64-token study
    recorded it (``mode``, no threads)."""
    runs = {
        f"{arm}-s{seed}": {"mode": arm, "seed": seed, "evals": {
            str(step): {"fd": value, "accuracy": accuracy + 0.01 * seed} for step, value in zip((800, 1600, 2400), curve)
        }}
        for arm, curves in fd.items() for seed, curve in enumerate(curves)
    }
    return {"runs": runs, "modes": list(fd), "seeds": [0, 1, 2], "protocol": {"model": "SDT-Ti/4"}}


def test_the_published_reanalysis_is_what_the_code_writes(tmp_path):
    shutil.copy(PUBLISHED_64 / "results.json", tmp_path / "results.json")
    decay_study_report.reanalyse(tmp_path)
    assert (tmp_path / "reanalysis.md").read_text() == (PUBLISHED_64 / "reanalysis.md").read_text()
    assert (tmp_path / "gates_vs_timestep.png").stat().st_size > 0


def test_a_gain_at_the_last_point_only_is_holm_adjusted_and_gone_over_the_last_two():
    none = [[50, 20, 22], [52, 21, 23], [49, 19, 21]]
    cag = [[40, 23, 19], [41, 24.5, 20.1], [39, 21.8, 18.2]]  # behind at 1,600, ahead at 2,400
    lines = decay_study_report.reanalysis_lines(study_results({"none": none, "cag": cag}))
    last = paired_difference([c[2] for c in cag], [n[2] for n in none])
    fd_row = next(line for line in lines if line.startswith("| cag - none | FD |"))
    # two tests (FD, accuracy): the smaller p doubles under Holm
    assert fd_row.endswith(f"| {last['p']:.3g} | {min(1, 2 * last['p']):.3g} |")
    two = paired_difference([np.mean(c[1:]) for c in cag], [np.mean(n[1:]) for n in none])
    assert abs(two["mean"]) < 0.3 and not two["excludes_zero"]
    assert any(line.startswith(f"| cag - none | {decay_study_report.interval(two)} |") for line in lines)
    assert any("the thread count" in line and "FD against the held-out split" in line for line in lines)


def test_heads_are_ranked_by_strength_in_every_run():
    rng = np.random.default_rng(0)
    curves = rng.uniform(0.05, 1.0, size=(1, 5, 2, 4))  # (runs, T, depth, H)
    shuffled = np.concatenate([curves, curves[..., rng.permutation(4)]])  # the same heads, other indices
    ranked = decay_study_report.heads_by_strength(shuffled)
    np.testing.assert_array_equal(ranked[0], ranked[1])
    assert np.all(np.diff(ranked.mean(axis=1), axis=-1) >= 0)  # strongest decay (smallest) first


def test_a_folder_without_results_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="no results.json in .*: give the folder of a finished decay study"):
        decay_study_report.reanalyse(tmp_path)
