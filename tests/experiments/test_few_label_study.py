"""experiments/few_label_study.py: its analysis (fast) and a tiny study end to end (slow)."""

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("few_label_study", ROOT / "experiments" / "few_label_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_primary_comparisons_are_the_smallest_sizes_and_each_family_is_holm_adjusted_alone():
    args = argparse.Namespace(train_sizes=[1000, 40], seeds=[0, 1, 2])
    base = {"none": 0.80, "fixed": 0.85, "cag": 0.90}
    scores = {f"{arm}-n{size}-s{seed}": value + 0.01 * seed + (0.001 * seed if arm == "cag" else 0)
              for arm, value in base.items() for size in (40, 1000) for seed in (0, 1, 2)}
    analysis = study.analyse(scores, args)
    primary = [d for d in analysis["differences"] if d["primary"]]
    assert [(d["size"], d["comparison"]) for d in primary] == [(40, "cag - fixed"), (40, "cag - none")]
    assert primary[0]["mean"] == pytest.approx(0.051)
    secondary = [d for d in analysis["differences"] if not d["primary"]]
    assert len(secondary) == 4 and all(d["p_holm"] >= d["p"] for d in secondary)
    assert analysis["top1"]["cag n40"]["mean"] == pytest.approx(0.911) and analysis["top1"]["cag n40"]["n"] == 3


@pytest.mark.slow  # six classifier runs in processes of their own
def test_a_tiny_study_publishes_its_tables_and_refuses_another_protocol(tmp_path):
    argv = [sys.executable, ROOT / "experiments" / "few_label_study.py", "--train-sizes", "40", "--seeds", "0", "1",
            "--steps", "1", "--out", tmp_path / "study"]
    done = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    assert len(results["scores"]) == 6 and results["protocol"]["primary"][0] == "cag - fixed at 40 images"
    assert (tmp_path / "study" / "few-label-top1.json").is_file()
    other = subprocess.run(list(map(str, [*argv[:-3], "2", "--out", tmp_path / "study"])), capture_output=True,
                           text=True, timeout=900)
    assert other.returncode != 0 and "another protocol (steps: 1 there, 2 now)" in other.stderr
