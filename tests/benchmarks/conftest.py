"""What the benchmark tests share: a script run as a user runs it, with ``--out``, and what it published."""

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sdt_gen.tables import Table

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def publish(tmp_path: Path) -> Callable[..., tuple[str, dict[str, Table]]]:
    """Runs ``benchmarks/<script> <argv> --out <folder>`` at one thread; returns what it printed and its tables.

    Checks what every published table holds: its JSON renders to what the run printed (so the docs show what was
    measured), and its provenance names the command as run, the commit and the thread count.
    """
    def run(script: str, *argv: str) -> tuple[str, dict[str, Table]]:
        out = tmp_path / "tables"
        command = [str(BENCHMARKS / script), *argv, "--out", str(out)]
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr
        tables = {path.stem: Table.from_json(json.loads(path.read_text())) for path in sorted(out.glob("*.json"))}
        for name, table in tables.items():
            assert table.name == name and table.markdown() in result.stdout
            record = table.provenance
            assert record["command"] == shlex.join(["python", *command])
            assert len(record["commit"]) == 40 and record["threads"] == 1 and record["versions"]["torch"]
            assert record["wall_seconds"] > 0
        return result.stdout, tables

    return run
