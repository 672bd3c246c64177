"""Checkpoint and exact resume on accelerate, with atomic writes.

A checkpoint is an ``accelerator.save_state`` folder ``run_dir/checkpoints/step-NNNNNNN``: model,
optimizer, RNG states, the data loader's sampler and every object registered with
``register_for_checkpointing`` (EMA, ``TrainState``). It is written as ``.tmp-step-NNNNNNN`` and
renamed when complete, so a run killed while saving leaves the previous checkpoint intact;
the next save removes the leftover temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..files import TMP_FOLDER_PREFIX, replace_folder, temporary_folder

if TYPE_CHECKING:
    from accelerate import Accelerator

_CHECKPOINT_RE = re.compile(r"step-(\d{7,})")
# Written by every accelerate save_state (process 0's RNG states): marks a checkpoint folder.
_STATE_MARKER = "random_states_0.pkl"


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


def latest_checkpoint(directory: str | os.PathLike) -> Path:
    """The newest complete checkpoint in ``directory`` (a run folder or its ``checkpoints/``)."""
    checkpoints = list_checkpoints(directory)
    if not checkpoints:
        raise FileNotFoundError(
            f"no checkpoint (a step-NNNNNNN folder) in {os.fspath(directory)!r} or its checkpoints/"
        )
    return checkpoints[-1]


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
    return path if (path / _STATE_MARKER).is_file() else latest_checkpoint(path)


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

    accelerator.save_state(os.fspath(tmp))
    accelerator.wait_for_everyone()  # every process has written its part (RNG states, shards)

    if accelerator.is_main_process:
        replace_folder(tmp, final)  # saving the same step twice (e.g. right after a resume) replaces it
        if keep_last is not None:
            for path in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return final


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
