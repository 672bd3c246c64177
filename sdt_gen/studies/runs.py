"""A study's runs: their names and folders, training one to a step (resuming it), and its timing records.

Every run is trained by ``train_dit.py``'s own command line, run in this process (``run_script``): the run is what
a user gets from that command, and it shares this process's thread setting and CPU clock, so its timing record is
the training's CPU time (the study's numbers depend on the thread count, which the protocol fixes).
"""

from __future__ import annotations

import argparse
import runpy
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState

from ..provenance import cpu_model
from ..training.checkpoint import list_checkpoints
from .protocol import eval_steps, parse_arm, read_json, training_flags, write_json


def run_name(arm: str, seed: int) -> str:
    """The study's name of the run of ``arm`` at ``seed``: ``"rope+cag-s1"``."""
    return f"{arm}-s{seed}"


def numbered_folders(root: Path) -> list[Path]:
    """The ``NNN-...`` run folders a training script made in ``root``, oldest first."""
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name[:3].isdigit()) if root.is_dir() else []


def run_folder(out: Path, name: str) -> Path | None:
    """The training run of study run ``name``: the one numbered ``train_dit.py`` folder in ``runs/<name>/``."""
    return next(iter(numbered_folders(out / "runs" / name)), None)


def final_pipeline(out: Path, name: str) -> Path:
    """The pipeline folder ``train_dit.py`` exported for study run ``name`` (its weights at the last segment)."""
    return run_folder(out, name) / "pipeline"


def run_script(script: Path, argv: list[str]) -> None:
    """Run ``python <script> <argv>`` in this process, as its command line would (its ``__main__`` block).

    Args:
        script: a training script of the checkout (``train_dit.py``, ``train_classifier.py``).
        argv: its flags.
    """
    saved = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved


def resume_flags(results_dir: Path) -> list[str]:
    """``--resume latest`` when ``results_dir`` holds a training run to continue, else nothing; a run stopped before
    its first checkpoint is deleted (nothing in it to keep, and the training scripts refuse to resume it).

    Args:
        results_dir: the ``--results-dir`` of one study run, which holds at most one numbered run folder.
    """
    folder = next(iter(numbered_folders(results_dir)), None)
    if folder is not None and not list_checkpoints(folder):
        if PartialState().is_main_process:
            shutil.rmtree(folder)
        PartialState().wait_for_everyone()
        folder = None
    return [] if folder is None else ["--resume", "latest"]


def train_to(args: argparse.Namespace, out: Path, arm: str, seed: int, step: int, trainer: Path) -> Path:
    """Train run (arm, seed) up to ``step`` with ``trainer`` (``train_dit.py``), resuming it, timing what it does.

    ``timing.json`` keeps, per segment (keyed by its last step), the wall and CPU seconds and the machine; a segment
    killed and redone is timed by the call that finished it.

    Args:
        args: the study's settings.
        out: the study folder.
        arm: the run's arm.
        seed: the run's seed.
        step: the step to train to.
        trainer: the path of ``train_dit.py``.

    Returns:
        the run's ``train_dit.py`` folder.
    """
    name = run_name(arm, seed)
    root = out / "runs" / name
    timing_path = root / "timing.json"
    timing = read_json(timing_path) or {"segments": {}}
    settings = parse_arm(arm)
    argv = [*training_flags(args), "--decay-mode", settings["decay_mode"], "--position-embedding",
            settings["position_embedding"], "--seed", str(seed), "--max-steps", str(step), "--results-dir", str(root)]
    argv += resume_flags(root)
    wall, cpu = time.perf_counter(), time.process_time()
    run_script(trainer, argv)
    if PartialState().is_main_process and str(step) not in timing["segments"]:
        timing["segments"][str(step)] = {
            "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "threads": torch.get_num_threads(), "cpu": cpu_model(),
        }
        write_json(timing_path, timing)
    return run_folder(out, name)


def collect(args: argparse.Namespace, out: Path) -> dict:
    """Every cached number of the runs asked for: ``{run: {arm, seed, training, evals}}``.

    ``times`` holds the cumulative training seconds (wall and CPU) at each evaluation point.
    """
    runs = {}
    steps = eval_steps(args)
    for seed in args.seeds:
        for arm in args.arms:
            name = run_name(arm, seed)
            segments = (read_json(out / "runs" / name / "timing.json") or {"segments": {}})["segments"]
            cumulative = {kind: np.cumsum([segments[str(s)][f"{kind}_seconds"] for s in steps]).tolist()
                          for kind in ("wall", "cpu")}
            seconds = cumulative["wall"][-1]
            runs[name] = {
                "arm": arm, "seed": seed, "training_seconds": seconds, "training_cpu_seconds": cumulative["cpu"][-1],
                "steps_per_second": args.steps / seconds, "seconds_per_step": seconds / args.steps,
                "times": cumulative, "machines": sorted({segment["cpu"] for segment in segments.values()}),
                "evals": {str(s): read_json(out / "evals" / name / f"step-{s:07d}" / "metrics.json") for s in steps},
            }
    return runs
