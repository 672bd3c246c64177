"""benchmarks/gpu_report.py where no GPU is: the one-line skip, and its report writer on fake numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_report  # noqa: E402

from sdt_gen.provenance import RunRecord  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path: this machine has a GPU")
def test_without_cuda_says_so_in_one_line_writes_a_report_that_says_so_and_exits_0(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines() == [
        f"gpu_report: no CUDA device here; nothing measured (run it on a machine with a GPU); wrote {tmp_path / 'r' / 'report.md'}"
    ]
    assert "No CUDA device here; nothing measured" in (tmp_path / "r" / "report.md").read_text()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["sections"] == {} and report["device"] == "none (no CUDA)"
    record = report["provenance"]
    assert record["command"] == f"python {ROOT / 'benchmarks' / 'gpu_report.py'} --out {tmp_path / 'r'}"
    assert len(record["commit"]) == 40 and record["threads"] >= 1 and record["versions"]["torch"]


def test_report_writer_on_fake_numbers(tmp_path):
    report = {
        "device": "NVIDIA H100 80GB HBM3", "torch": "2.14.1", "cuda": "13.0", "seconds": 412.0,
        "sections": {
            "cuda_tests": {"exit_code": 1, "passed": ["a::x", "a::y"], "failed": ["a::z"], "skipped": [],
                           "output_tail": "..."},
            "attention": [
                {"backend": "flex", "shape": "S/2", "tokens": 4096, "batch": 1, "mode": "none", "time_ratio": 1.0,
                 "memory_ratio": 1.0, "ms": 3.25, "mib": 120.0},
                {"backend": "flex", "shape": "S/2", "tokens": 4096, "batch": 1, "mode": "cag", "time_ratio": 1.0625,
                 "memory_ratio": 1.01, "ms": 3.453, "mib": 121.2},
            ],
            "training": {"error": "RuntimeError: out of memory", "traceback": "Traceback ..."},
        },
        "provenance": RunRecord.start(["benchmarks/gpu_report.py", "--out", "report"]).finish(),
    }
    out = tmp_path / "report"
    gpu_report.write_report(out, report)
    assert json.loads((out / "report.json").read_text()) == report
    text = (out / "report.md").read_text()
    assert text.startswith("# GPU report: NVIDIA H100 80GB HBM3\n")
    assert "2 passed, 1 failed, 0 skipped." in text and "- FAILED a::z" in text
    assert "Measured by `python benchmarks/gpu_report.py --out report` at commit" in text
    assert "| backend | shape | tokens | batch | mode | time_ratio | memory_ratio | ms | mib |" in text
    assert "| flex | S/2 | 4096 | 1 | cag | 1.06 | 1.01 | 3.45 | 121 |" in text
    assert "## Training, bf16 autocast, random 32x32x4 latents\n\nDid not run: RuntimeError: out of memory" in text
    assert "Sampling" not in text  # a section that was not run is not mentioned
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]  # no partial files left
