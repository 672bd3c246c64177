"""sdt_gen.studies.report: the reanalysis and the regenerated summary of a published study, and heads ranked by
strength (sdt_gen.studies.plots)."""

import json
import re
import shutil
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from sdt_gen.metrics import paired_difference
from sdt_gen.provenance import RunRecord
from sdt_gen.studies.plots import heads_by_strength
from sdt_gen.studies.report import interval, reanalyse, reanalysis_lines, regenerate

ROOT = Path(__file__).resolve().parents[2]

PUBLISHED_64 = ROOT / "docs" / "decay_study"
THIS_FILE = re.compile(r"^- This file: .*$", re.MULTILINE)  # the writing invocation's record: its own times
# A number standing alone (``1.00x`` included), not digits inside a word such as a commit hash.
NUMBER = re.compile(r"(?<![\w.])[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![A-Za-wyz0-9_])")


def assert_same_text_within_rounding(written: str, published: str) -> None:
    """The same text; each number within one unit of its last printed digit (float64 statistics printed to 3
    digits: a last-bit difference of another CPU's summation order can only move a value across a rounding edge)
    or within 1e-12 (a zero printed as rounding noise, such as ``+7.4e-17``, whose sign and digits are the
    summation order's)."""
    assert NUMBER.split(written) == NUMBER.split(published)
    for ours, theirs in zip(NUMBER.findall(written), NUMBER.findall(published)):
        unit = float(Decimal(10) ** Decimal(theirs).as_tuple().exponent)
        assert abs(float(ours) - float(theirs)) <= unit + 1e-12, (ours, theirs)


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
    reanalyse(tmp_path, RunRecord.start(["experiments/decay_study_report.py", "docs/decay_study"]))
    written, published = (tmp_path / "reanalysis.md").read_text(), (PUBLISHED_64 / "reanalysis.md").read_text()
    assert_same_text_within_rounding(THIS_FILE.sub("", written), THIS_FILE.sub("", published))
    assert "- The runs: not recorded" in published and "- This file: `python experiments/decay_study_report.py" in published
    assert (tmp_path / "gates_vs_timestep.png").stat().st_size > 0


def test_a_gain_at_the_last_point_only_is_holm_adjusted_and_gone_over_the_last_two():
    none = [[50, 20, 22], [52, 21, 23], [49, 19, 21]]
    cag = [[40, 23, 19], [41, 24.5, 20.1], [39, 21.8, 18.2]]  # behind at 1,600, ahead at 2,400
    lines = reanalysis_lines(study_results({"none": none, "cag": cag}))
    last = paired_difference([c[2] for c in cag], [n[2] for n in none])
    fd_row = next(line for line in lines if line.startswith("| cag - none | FD |"))
    # two tests (FD, accuracy): the smaller p doubles under Holm
    assert fd_row.endswith(f"| {last['p']:.3g} | {min(1, 2 * last['p']):.3g} |")
    two = paired_difference([np.mean(c[1:]) for c in cag], [np.mean(n[1:]) for n in none])
    assert abs(two["mean"]) < 0.3 and not two["excludes_zero"]
    assert any(line.startswith(f"| cag - none | {interval(two)} |") for line in lines)
    assert any("the thread count" in line and "FD against the held-out split" in line for line in lines)


def test_heads_are_ranked_by_strength_in_every_run():
    rng = np.random.default_rng(0)
    curves = rng.uniform(0.05, 1.0, size=(1, 5, 2, 4))  # (runs, T, depth, H)
    shuffled = np.concatenate([curves, curves[..., rng.permutation(4)]])  # the same heads, other indices
    ranked = heads_by_strength(shuffled)
    np.testing.assert_array_equal(ranked[0], ranked[1])
    assert np.all(np.diff(ranked.mean(axis=1), axis=-1) >= 0)  # strongest decay (smallest) first


def test_a_folder_without_results_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="no results.json in .*: give the folder of a finished decay study"):
        reanalyse(tmp_path, RunRecord.start([]))


@pytest.mark.parametrize("study", ["decay_study", "decay_study_256", "decay_study_ddpm"])
def test_every_published_summary_is_what_the_code_writes_from_its_results(study, tmp_path):
    """Each published summary.md is today's report of its results.json (nothing retrained), with its provenance."""
    published = ROOT / "docs" / study
    shutil.copy(published / "results.json", tmp_path / "results.json")
    results = json.loads((published / "results.json").read_text())
    report = results["provenance"]["report"]
    cost = results.get("equal_time", {}).get("cost")
    costs = {"values": cost["ratios"], "source": cost["source"]} if cost else None  # only the ratios count
    other = json.loads((ROOT / "docs" / "decay_study" / "results.json").read_text()) if "--compare-with" in report["command"] else None
    regenerate(tmp_path, RunRecord.start(report["command"].split()), costs, None, other)
    written, expected = (tmp_path / "summary.md").read_text(), (published / "summary.md").read_text()
    assert_same_text_within_rounding(THIS_FILE.sub("", written), THIS_FILE.sub("", expected))
    assert "## Provenance" in expected and f"`{report['command']}` at commit {report['commit']}" in expected
    assert results["provenance"]["study"].get("note") or results["provenance"]["study"].get("command")
