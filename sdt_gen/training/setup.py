"""The start of every training run: its settings, the accelerator, the run folder to write (or resume) in, and
the training data loader."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    ProjectConfiguration,
    broadcast_object_list,
    set_seed,
)
from torch.utils.data import DataLoader, Dataset

from ..extras import MissingExtraError, install_hint
from .checkpoint import resolve_resume
from .fsdp import check_checkpoint_sharding
from .resume import RESUMES_RECORD, record_resume, restore_run_settings, warned_changes
from .run_dir import create_logger, create_run_dir, latest_run_dir, save_config


def apply_settings(
    args: argparse.Namespace,
    apply_defaults: Callable[[argparse.Namespace], None],
    run_names: Callable[[argparse.Namespace], tuple[str, str]],
    free: Iterable[str],
    warned: Iterable[str],
) -> tuple[dict[str, list], Path | None]:
    """Give ``args`` the recipe's defaults and, with ``--resume``, the run's own settings (``restore_run_settings``).

    Args:
        args: the parsed command line.
        apply_defaults: sets the script's recipe for every setting still ``None``.
        run_names: the ``(model, data)`` names of the run folder ``--resume latest`` looks for.
        free, warned: the options a resume may change silently, and with a warning.

    Returns:
        ``(changes, resumed run folder)``; ``({}, None)`` without ``--resume``.
    """
    apply_defaults(args)
    if not args.resume:
        return {}, None
    # The run's own settings for every flag not given; a changed experiment is refused here.
    run_dir = find_run(args.results_dir, *run_names(args), args.resume)
    changes = restore_run_settings(args, run_dir, free, warned)
    apply_defaults(args)  # for settings a run saved before they existed
    return changes, run_dir


# ``--report-to``: accelerate's trackers by name (the package each needs), ``all`` (every one installed) or ``none``.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "mlflow": "mlflow"}
REPORT_TO = (*TRACKER_PACKAGES, "all", "none")
TRACKING_PROJECT = "sdt-gen"  # the wandb / comet_ml / mlflow project; TensorBoard's folder under the run's tensorboard/


def trackers_for(report_to: str) -> list[str]:
    """accelerate's ``log_with`` for ``--report-to``; a tracker whose package is missing is refused here, before any
    run folder exists (accelerate would drop it silently and train unlogged)."""
    if report_to not in REPORT_TO:
        raise ValueError(f"unknown --report-to {report_to!r}; expected one of {', '.join(REPORT_TO)}")
    if report_to in ("all", "none"):
        return [report_to] if report_to == "all" else []
    package = TRACKER_PACKAGES[report_to]
    if importlib.util.find_spec(package) is None:
        raise MissingExtraError(
            f"--report-to {report_to} needs the package {package!r}: {install_hint(package, None)} "
            "(or choose another tracker, or --report-to none)"
        )
    return [report_to]


def create_accelerator(
    mixed_precision: str | None = None, gradient_accumulation_steps: int = 1, cpu: bool = False, seed: int = 0,
    report_to: str = "tensorboard",
) -> Accelerator:
    """An ``Accelerator`` set up for exact resume, with the trackers of ``report_to`` and TF32 on CUDA.

    Args:
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"``; ``None`` leaves it to the launch configuration
            (``accelerate launch`` passes its config's choice as ``ACCELERATE_MIXED_PRECISION``), as
            diffusers' training scripts do: a script default would override the user's config.
        gradient_accumulation_steps: micro-batches per optimizer step.
        cpu: stay on the CPU even when a GPU is present.
        seed: global seed; each process adds its rank, so processes draw different noise.
        report_to: one of ``REPORT_TO`` (``trackers_for``); trackers start in ``open_run``.
    """
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=trackers_for(report_to) or None,
        project_config=ProjectConfiguration(project_dir="."),  # moved into the run folder by ``open_run``
        # The shuffle order of epoch e depends only on (seed, e), so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        cpu=cpu,
    )
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(seed, device_specific=True)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type != DistributedType.FSDP:
        warnings.warn(
            f"the launch configuration asks for FSDP, but accelerate shards on GPUs only: this runs "
            f"{accelerator.distributed_type.value} on {accelerator.device.type}",
            RuntimeWarning, stacklevel=2,
        )
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
    """The verified checkpoint ``--resume`` continues from (``resolve_resume``), decided on the main process, written
    sharded or not as this launch shards."""
    create_logger(None, accelerator.is_main_process)  # stdout, for the damaged checkpoints it passes over
    target = run_dir if resume == "latest" else resume
    checkpoint = decided_on_main_process(accelerator, lambda: resolve_resume(target, resume))
    check_checkpoint_sharding(accelerator, checkpoint)
    return checkpoint


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
    Points logging into the folder and starts the trackers: TensorBoard's events go to ``tensorboard/``, the
    others log to project ``sdt-gen`` under the run folder's name, with the run's settings.

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
    accelerator.project_configuration.project_dir = str(run_dir)
    accelerator.project_configuration.logging_dir = str(run_dir / "tensorboard")
    if accelerator.log_with:
        accelerator.init_trackers(TRACKING_PROJECT, config=tracker_config(args), init_kwargs=run_named(run_dir.name))
    return run_dir, checkpoint, logger


def tracker_config(args: argparse.Namespace) -> dict[str, bool | int | float | str]:
    """The run's settings as the scalars every tracker stores (TensorBoard's hyperparameters take no lists)."""
    return {
        key: value if isinstance(value, (bool, int, float, str)) else str(value)
        for key, value in sorted(vars(args).items()) if key != "given_options"
    }


def run_named(name: str) -> dict[str, dict]:
    """The trackers' keywords naming a run, so runs of one project tell apart by their folder's name."""
    return {"wandb": {"name": name}, "mlflow": {"run_name": name}}


def start_run(
    accelerator: Accelerator,
    args: argparse.Namespace,
    model_name: str,
    data_name: str,
    resumed_dir: Path | None,
    changes: dict[str, list],
    warned: Iterable[str],
) -> tuple[Path, Path | None, logging.Logger]:
    """``open_run`` on ``resumed_dir`` at its verified checkpoint, or on a new folder; logs each warned change.

    Returns:
        ``(run_dir, checkpoint to load or None, logger)``.
    """
    resumed = None if resumed_dir is None else (resumed_dir, resume_checkpoint(accelerator, resumed_dir, args.resume))
    run_dir, checkpoint, logger = open_run(accelerator, args.results_dir, model_name, data_name, args, resumed, changes)
    for line in warned_changes(changes, warned):
        logger.warning(f"{line} (recorded in {run_dir / RESUMES_RECORD})")
    return run_dir, checkpoint, logger


def batch_per_process(batch_size: int, flag: str, num_processes: int, accumulation_steps: int = 1) -> int:
    """``batch_size`` shared out over processes and accumulation steps; a ValueError naming ``flag`` if it does not
    divide evenly (a floored share would train on a smaller batch than asked, with the asked-for learning rate)."""
    per_process, left = divmod(batch_size, num_processes * accumulation_steps)
    if left or per_process == 0:
        raise ValueError(
            f"{flag} {batch_size} is not divisible by {num_processes} processes x {accumulation_steps} accumulation "
            "steps; choose a multiple of their product"
        )
    return per_process


def training_loader(
    dataset: Dataset, batch_size: int, seed: int, num_workers: int, collate_fn: Callable, **options
) -> DataLoader:
    """A shuffled ``DataLoader`` of full batches, its worker seeds drawn from its own generator (plus ``options``)."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers, collate_fn=collate_fn,
        # Each new iterator draws a worker seed from this generator; from the global one, the iterator
        # created after a resume would shift the training noise (exact resume).
        generator=torch.Generator().manual_seed(seed), **options,
    )
