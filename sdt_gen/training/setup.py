"""The start of every training run: the accelerator, and the run folder to write (or resume) in."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast_object_list, set_seed

from .checkpoint import resolve_resume
from .resume import record_resume
from .run_dir import create_logger, create_run_dir, latest_run_dir, save_config


def create_accelerator(
    mixed_precision: str | None = None, gradient_accumulation_steps: int = 1, cpu: bool = False, seed: int = 0
) -> Accelerator:
    """An ``Accelerator`` set up for exact resume, with TensorBoard logging and TF32 on CUDA.

    Args:
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"``; ``None`` leaves it to the launch configuration
            (``accelerate launch`` passes its config's choice as ``ACCELERATE_MIXED_PRECISION``), as
            diffusers' training scripts do: a script default would override the user's config.
        gradient_accumulation_steps: micro-batches per optimizer step.
        cpu: stay on the CPU even when a GPU is present.
        seed: global seed; each process adds its rank, so processes draw different noise.
    """
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir="."),  # moved into the run folder by ``open_run``
        # The shuffle order of epoch e depends only on (seed, e), so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        cpu=cpu,
    )
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(seed, device_specific=True)
    return accelerator


def decided_on_main_process(accelerator: Accelerator, decide):
    """``decide()`` run once, on the main process; every process gets its result or raises its error.

    For decisions that read a lot (verifying a checkpoint's hashes) and must be the same everywhere.
    """
    outcome = [None, None]
    if accelerator.is_main_process:
        try:
            outcome = [decide(), None]
        except Exception as error:  # handed to every process, so none waits for the others forever
            outcome = [None, error]
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def find_run(results_dir: str | os.PathLike, model_name: str, data_name: str, resume: str) -> Path:
    """The run folder ``--resume`` names, before anything is loaded or written (its settings are read first).

    Args:
        results_dir: parent of the run folders.
        model_name, data_name: what ``"latest"`` looks for (``NNN-<model>-<data>``).
        resume: ``"latest"`` (the newest run of this model and data), a run folder or one of its checkpoints.
    """
    if resume == "latest":
        run_dir = latest_run_dir(results_dir, model_name, data_name)
        if run_dir is None:
            raise FileNotFoundError(f"--resume latest: no earlier {model_name} run on {data_name} in {os.fspath(results_dir)!r}")
        return run_dir
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume!r}: no such folder; expected 'latest' or a run or checkpoint folder")
    if (path / "checkpoints").is_dir():
        return path
    return path.parent if path.name == "checkpoints" else path.parent.parent  # run_dir/checkpoints/step-NNNNNNN


def resume_checkpoint(accelerator: Accelerator, run_dir: Path, resume: str) -> Path:
    """The verified checkpoint ``--resume`` continues from (``resolve_resume``), decided on the main process."""
    create_logger(None, accelerator.is_main_process)  # stdout, for the damaged checkpoints it passes over
    target = run_dir if resume == "latest" else resume
    return decided_on_main_process(accelerator, lambda: resolve_resume(target, resume))


def open_run(
    accelerator: Accelerator,
    results_dir: str | os.PathLike,
    model_name: str,
    data_name: str,
    args: argparse.Namespace,
    resumed: tuple[Path, Path | None] | None = None,
    changes: dict[str, list] | None = None,
) -> tuple[Path, Path | None, logging.Logger]:
    """The run folder: a new ``results_dir/NNN-<model>-<data>/``, or the ``resumed`` one (``find_run``, ``resume_checkpoint``).

    Call it after every check that can refuse the start: a new run's number is taken here. A new run gets
    ``config.json`` (every argument); a resumed one keeps it and gets a line in ``resumes.jsonl`` with ``changes``.
    Points logging and TensorBoard into the folder.

    Returns:
        ``(run_dir, checkpoint to load or None, logger)``.
    """
    if resumed is not None:
        run_dir, checkpoint = resumed
        if accelerator.is_main_process:
            record_resume(run_dir, checkpoint, changes or {})
    else:
        run_dir, checkpoint = create_run_dir(results_dir, model_name, data_name, accelerator), None
        if accelerator.is_main_process:
            save_config(run_dir, args)
    logger = create_logger(run_dir, accelerator.is_main_process)
    accelerator.project_configuration.project_dir = accelerator.project_configuration.logging_dir = str(run_dir)
    accelerator.init_trackers("tensorboard")
    return run_dir, checkpoint, logger
