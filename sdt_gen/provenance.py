"""Where a published number came from: the record every artifact (study, benchmark, sample grid) carries.

``RunRecord.start()`` at the top of a script, ``record.finish()`` when it writes its artifact: the command line as
run, the git commit and whether the tree had uncommitted changes, the package versions, the thread count, the CPU,
the start and end time, and the wall and CPU seconds in between (this process and the children it waited for).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

VERSIONED_PACKAGES = (
    "sdt-gen", "torch", "torchvision", "diffusers", "accelerate", "transformers", "torch-fidelity", "numpy", "scipy",
)
REPOSITORY = Path(__file__).resolve().parents[1]


def package_versions() -> dict[str, str | None]:
    """The installed version of each of ``VERSIONED_PACKAGES`` (``None`` when absent), and Python's."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(repository: str | os.PathLike = REPOSITORY) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout the code runs from (None outside git)."""
    def git(*words: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repository), *words], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip() if commit else None, "dirty": bool(status.strip()) if status is not None else None}


def cpu_model() -> str:
    """The processor's name, for the record of where a time was measured."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """The provenance of one run of a publishing script; ``start()`` it first, ``finish()`` it last."""

    command: str
    started: str
    wall_start: float = field(repr=False)
    cpu_start: float = field(repr=False)

    @classmethod
    def start(cls, argv: list[str] | None = None) -> "RunRecord":
        """Starts the clocks. ``argv``: the command line (default ``sys.argv``, as ``python <script> ...``)."""
        argv = sys.argv if argv is None else argv
        command = shlex.join(["python", *argv]) if argv and argv[0].endswith(".py") else shlex.join(argv)
        return cls(command, _now(), time.perf_counter(), _cpu_seconds())

    def finish(self) -> dict[str, Any]:
        """The record as JSON values, with the end time and the seconds since ``start``."""
        return {
            "command": self.command,
            **git_state(),
            "versions": package_versions(),
            "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu": cpu_model(),
            "machine": platform.platform(),
            "started": self.started,
            "finished": _now(),
            "wall_seconds": round(time.perf_counter() - self.wall_start, 3),
            "cpu_seconds": round(_cpu_seconds() - self.cpu_start, 3),
        }
