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


def open_run(
    accelerator: Accelerator,
    results_dir: str | os.PathLike,
    model_name: str,
    data_name: str,
    resume: str | None,
    args: argparse.Namespace,
) -> tuple[Path, Path | None, logging.Logger]:
    """The run folder: a new ``results_dir/NNN-<model>-<data>/``, or the one ``resume`` continues.

    Writes ``config.json`` (every argument) and points logging and TensorBoard into the folder.

    Args:
        accelerator: the run's accelerator.
        results_dir: parent of the run folders.
        model_name, data_name: name the folder (``SDT-S/2`` + ``digits`` -> ``NNN-SDT-S-2-digits``).
        resume: ``None``; ``"latest"`` (the newest run of this model and data); or a run or checkpoint folder.
        args: the parsed arguments, saved as ``config.json``.

    Returns:
        ``(run_dir, checkpoint to load or None, logger)``.
    """
    create_logger(None, accelerator.is_main_process)  # stdout, for what resolving the checkpoint reports
    if resume == "latest":
        run_dir = latest_run_dir(results_dir, model_name, data_name)
        if run_dir is None:
            raise FileNotFoundError(f"--resume latest: no earlier {model_name} run on {data_name} in {os.fspath(results_dir)!r}")
        checkpoint = decided_on_main_process(accelerator, lambda: resolve_resume(run_dir, "latest"))
    elif resume:
        checkpoint = decided_on_main_process(accelerator, lambda: resolve_resume(resume, resume))
        run_dir = checkpoint.parent.parent  # run_dir/checkpoints/step-NNNNNNN
    else:
        run_dir, checkpoint = create_run_dir(results_dir, model_name, data_name, accelerator), None
    logger = create_logger(run_dir, accelerator.is_main_process)
    if accelerator.is_main_process:
        save_config(run_dir, args)
    accelerator.project_configuration.project_dir = accelerator.project_configuration.logging_dir = str(run_dir)
    accelerator.init_trackers("tensorboard")
    return run_dir, checkpoint, logger
