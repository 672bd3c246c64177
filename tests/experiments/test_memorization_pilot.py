"""experiments/memorization_pilot.py: trains, scores and publishes its table, and a rerun reuses what it made."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # three processes that train and sample (minutes); the pieces have fast tests
def test_the_pilot_publishes_its_table_and_a_rerun_trains_nothing_again(tmp_path):
    argv = [sys.executable, ROOT / "experiments" / "memorization_pilot.py", "--settings", "40:2", "--num-samples", "10",
            "--guidance-scales", "1", "--work", tmp_path / "work", "--out", tmp_path / "tables"]
    done = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = json.loads((tmp_path / "tables" / "memorization-pilot.json").read_text())
    (row,) = table["rows"]
    assert (row["train_size"], row["steps"], row["epochs"]) == (40, 2, 1.6)
    assert 0 <= row["memorized_g1"] <= 1 and row["heldout_nearest"] > 0
    assert "memorization_pilot.py" in table["provenance"]["command"]
    run_dir = next((tmp_path / "work" / "n40-s2").iterdir())
    assert json.loads((run_dir / "train_subset.json").read_text())["size"] == 40

    results = run_dir / "eval-g1" / "results.json"
    stamp = results.stat().st_mtime_ns
    again = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert results.stat().st_mtime_ns == stamp  # scored once

    small = subprocess.run(list(map(str, [*argv[:3], "10:2", *argv[4:]])), capture_output=True, text=True, timeout=600)
    assert small.returncode == 2 and small.stderr.strip().endswith("10 items make no full batch of 32 per process")
