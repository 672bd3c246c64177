"""benchmarks/bench_training.py --arms: the 256-token study's arms timed in turns, each against the first."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_training.py"


def bench(*argv):
    return subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_arms_table_has_one_row_per_arm_against_the_first():
    result = bench("--arms", "none", "rope+cag", "--only", "--steps", "1", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| 256")]
    assert [row[2].strip() for row in rows] == ["none", "rope+cag"]
    assert rows[0][5].strip() == "1.00x"
    seconds = [float(row[4]) for row in rows]
    assert all(s > 0 for s in seconds)
    assert float(rows[1][5].strip()[:-1]) == pytest.approx(seconds[1] / seconds[0], abs=0.02)


def test_a_bad_arm_is_refused_by_name():
    result = bench("--arms", "none", "rope+bogus", "--only")
    assert result.returncode == 2 and "unknown arm 'rope+bogus'" in result.stderr


def test_out_writes_the_printed_table_as_json_with_its_provenance(publish):
    _, tables = publish("bench_training.py", "--arms", "none", "cag", "--only", "--steps", "1", "--repeats", "1")
    assert list(tables) == ["arms-cost"]
    record = tables["arms-cost"].provenance
    assert record["cpu_seconds"] > 0 and "--arms none cag" in record["command"]
