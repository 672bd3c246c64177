"""Checkpoint and exact resume on accelerate, with atomic writes.

A checkpoint is an ``accelerator.save_state`` folder ``run_dir/checkpoints/step-NNNNNNN``: model,
optimizer, RNG states, the data loader's sampler and every object registered with
``register_for_checkpointing`` (EMA, ``TrainState``). It is written as ``.tmp-step-NNNNNNN`` and
renamed when complete, so a run killed while saving leaves the previous checkpoint intact;
the next save removes the leftover temporary folder.

Before the rename, ``checkpoint.json`` records every file's size and sha256. A resume verifies
them, so a checkpoint damaged later (a partial copy, a full disk, a flaky network filesystem) is
named in one line and passed over for the newest intact one, never half-loaded.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..files import TMP_FOLDER_PREFIX, DamagedFolderError, replace_folder, temporary_folder, verify_manifest, write_manifest

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"step-(\d{7,})")
# Written by every accelerate save_state (process 0's RNG states): marks a checkpoint folder.
_STATE_MARKER = "random_states_0.pkl"
CHECKPOINT_MANIFEST = "checkpoint.json"
"""Written last into every checkpoint: its step and each file's size and sha256."""


@dataclass
class TrainState:
    """Training progress saved with each checkpoint (``accelerator.register_for_checkpointing(state)``).

    Attributes:
        step: optimizer steps taken.
        epoch: current pass over the data.
        batch_in_epoch: data loader batches consumed in the current epoch (differs from the steps
            with gradient accumulation); ``skip_consumed_batches`` skips them on resume.

    Example:
        >>> for batch in skip_consumed_batches(accelerator, loader, state):
        ...     ...  # train
        ...     state.batch_in_epoch += 1
        ...     state.step += accelerator.sync_gradients
        >>> state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        expected = {f.name for f in fields(self)}
        if set(state_dict) != expected:
            raise KeyError(f"TrainState checkpoint has keys {sorted(state_dict)}; expected {sorted(expected)}")
        for name, value in state_dict.items():
            setattr(self, name, int(value))


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint at ``step``: ``step-0001000``."""
    return f"step-{step:07d}"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``directory`` (a run folder or its ``checkpoints/``), oldest first.

    Temporary folders of unfinished saves never match.
    """
    directory = Path(directory)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    if not directory.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := _CHECKPOINT_RE.fullmatch(path.name)) and path.is_dir()
    ]
    return [path for _, path in sorted(found)]


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Checks that checkpoint ``path`` holds every file its ``checkpoint.json`` records, whole and unchanged.

    A checkpoint written before manifests existed (no ``checkpoint.json``) passes with a warning.

    Raises:
        DamagedFolderError: naming the file that is missing, truncated or corrupted.
    """
    path = Path(path)
    if not (path / CHECKPOINT_MANIFEST).is_file() and (path / _STATE_MARKER).is_file():
        logger.warning(f"checkpoint {os.fspath(path)} has no {CHECKPOINT_MANIFEST}; loading it unverified")
        return
    verify_manifest(path, CHECKPOINT_MANIFEST)


def latest_checkpoint(directory: str | os.PathLike) -> Path:
    """The newest intact checkpoint in ``directory`` (a run folder or its ``checkpoints/``).

    Damaged newer checkpoints are passed over, each with one warning line naming what is wrong.
    """
    checkpoints = list_checkpoints(directory)
    if not checkpoints:
        raise FileNotFoundError(
            f"no checkpoint (a step-NNNNNNN folder) in {os.fspath(directory)!r} or its checkpoints/"
        )
    damaged = []
    for path in reversed(checkpoints):
        try:
            verify_checkpoint(path)
        except DamagedFolderError as error:
            logger.warning(f"checkpoint {path.name} is damaged, skipped: {error}")
            damaged.append(str(error))
            continue
        return path
    raise DamagedFolderError(
        f"every checkpoint in {os.fspath(directory)!r} is damaged: {'; '.join(damaged)}"
    )


def resolve_resume(run_dir: str | os.PathLike, resume: str | os.PathLike | None) -> Path | None:
    """Turn a ``--resume`` value into a checkpoint folder.

    Args:
        run_dir: run folder (or its ``checkpoints/``) searched by ``"latest"``.
        resume: ``None`` (fresh start), ``"latest"``, a checkpoint folder, or a run / checkpoints
            folder (its newest checkpoint).

    Returns:
        the checkpoint folder for ``accelerator.load_state``, or ``None`` for a fresh start.
    """
    if resume is None or resume == "":
        return None
    if resume == "latest":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--resume {os.fspath(resume)!r}: no such folder; expected 'latest' or a checkpoint folder"
        )
    if not (path / _STATE_MARKER).is_file() and not (path / CHECKPOINT_MANIFEST).is_file():
        return latest_checkpoint(path)  # a run or checkpoints folder
    try:
        verify_checkpoint(path)
    except DamagedFolderError as error:
        raise DamagedFolderError(
            f"--resume {os.fspath(resume)!r} is damaged: {error}; resume from another checkpoint "
            "(--resume latest picks the newest intact one)"
        ) from None
    return path


def save_checkpoint(
    accelerator: Accelerator, run_dir: str | os.PathLike, step: int, keep_last: int | None = None
) -> Path:
    """Save the full training state as ``run_dir/checkpoints/step-NNNNNNN``, atomically. Call on every process.

    Args:
        accelerator: the ``accelerate.Accelerator`` (without automatic checkpoint naming).
        run_dir: the run folder; the checkpoints folder must be on storage all processes share.
        step: the training step, used in the folder name.
        keep_last: keep only this many newest checkpoints; ``None`` keeps all.

    Returns:
        the checkpoint folder.

    Raises:
        OSError: a process could not write its part (no space left, no permission). The previous
            checkpoints are untouched and the temporary folder is removed; the message names the
            folder and the error.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 (or None to keep all), got {keep_last}")
    if accelerator.project_configuration.automatic_checkpoint_naming:
        raise ValueError(
            "save_checkpoint names checkpoints itself: build the Accelerator without automatic_checkpoint_naming"
        )
    root = Path(run_dir) / "checkpoints"
    final = root / checkpoint_name(step)
    tmp = temporary_folder(final)
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        # Leftovers of a save that was killed: never complete, never read.
        for stray in root.glob(f"{TMP_FOLDER_PREFIX}*"):
            shutil.rmtree(stray)
    accelerator.wait_for_everyone()

    error = None
    try:
        accelerator.save_state(os.fspath(tmp))
    except OSError as raised:
        error = raised
    # Every process has written its part (RNG states, shards), or all learn that one could not.
    _raise_if_any_failed(accelerator, error, tmp, final)
    if accelerator.is_main_process:
        try:
            write_manifest(tmp, CHECKPOINT_MANIFEST, step=step)
            replace_folder(tmp, final)  # saving the same step twice (e.g. right after a resume) replaces it
        except OSError as raised:
            error = raised
    _raise_if_any_failed(accelerator, error, tmp, final)
    if accelerator.is_main_process and keep_last is not None:
        for path in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return final


def _raise_if_any_failed(accelerator: Accelerator, error: OSError | None, tmp: Path, final: Path) -> None:
    """A collective: raises on every process if ``error`` is set on any, after removing the temporary folder."""
    failed = torch.tensor([error is not None], device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.gather(failed)
    if not bool(failed.any()):
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    reason = f"{error.strerror or error}" if error is not None else "another process could not write its part"
    where = f" ({error.filename})" if error is not None and error.filename else ""
    raise OSError(
        f"could not write checkpoint {os.fspath(final)}: {reason}{where}; the earlier checkpoints are intact "
        "and the partial one was removed",
    )


def skip_consumed_batches(accelerator: Accelerator, dataloader: Any, state: TrainState) -> Any:
    """The data loader for epoch ``state.epoch``, without the batches a resumed run already consumed.

    Call it at the start of every epoch. It sets the sampler's epoch (the shuffle order of
    epoch ``e`` is the same in every run when the loader was prepared with accelerate's seedable
    sampler), then skips ``state.batch_in_epoch`` batches with ``accelerator.skip_first_batches``.

    Args:
        accelerator: the ``accelerate.Accelerator`` that prepared ``dataloader``.
        dataloader: a prepared data loader.
        state: the restored training state.
    """
    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(state.epoch)
    if state.batch_in_epoch == 0:
        return dataloader
    return accelerator.skip_first_batches(dataloader, state.batch_in_epoch)


def check_finite(value: torch.Tensor | float, step: int, run_dir: str | os.PathLike) -> None:
    """Stop training on a NaN or infinite loss, naming the step and the last good checkpoint.

    Pass a value that is the same on every process (e.g. the loss reduced for logging), so all
    processes stop together instead of waiting for each other forever.

    Args:
        value: the loss (any shape) to check.
        step: the current training step.
        run_dir: the run folder, searched for the last checkpoint.

    Raises:
        FloatingPointError: if any element of ``value`` is not finite.
    """
    value = torch.as_tensor(value).detach()
    if bool(torch.isfinite(value).all()):
        return
    shown = f"{value.item()}" if value.numel() == 1 else "not finite"
    checkpoints = list_checkpoints(run_dir)
    where = (
        f"the last good checkpoint is {os.fspath(checkpoints[-1])!r} (resume with --resume latest)"
        if checkpoints
        else "no checkpoint was saved before it"
    )
    raise FloatingPointError(
        f"loss is {shown} at step {step}; {where}. "
        "Try a lower learning rate, gradient clipping, or bf16 instead of fp16."
    )
