"""The run folder: ``results/NNN-<model>-<data>/`` with its config, log, checkpoints and samples."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator

RUN_SUBDIRS = ("checkpoints", "samples")
_RUN_RE = re.compile(r"(\d{3,})-(.+)")


def run_tag(model_name: str, data_name: str) -> str:
    """``<model>-<data>`` with path separators replaced, e.g. ``SDT-S/2`` + ``digits`` -> ``SDT-S-2-digits``."""
    return f"{model_name}-{data_name}".replace("/", "-").replace(os.sep, "-")


def _run_index(name: str) -> int | None:
    match = _RUN_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def create_run_dir(
    results_dir: str | os.PathLike, model_name: str, data_name: str, accelerator: Accelerator | None = None
) -> Path:
    """Create the next numbered run folder ``results_dir/NNN-<model>-<data>/`` with ``checkpoints/`` and ``samples/``.

    ``NNN`` is one more than the highest number in ``results_dir`` (DiT's scheme, robust to deleted
    runs). Under accelerate the main process creates the folder and every process gets its path.

    Args:
        results_dir: parent of all runs; created if needed.
        model_name: e.g. ``"SDT-S/2"`` (``/`` becomes ``-``).
        data_name: short name of the data, e.g. ``"digits"`` or ``"imagenet256"``.
        accelerator: the ``accelerate.Accelerator``; omit in a single-process program.

    Returns:
        the run folder, identical on every process.
    """
    run_dir: Path | None = None
    if accelerator is None or accelerator.is_main_process:
        os.makedirs(results_dir, exist_ok=True)
        while run_dir is None:
            indices = [_run_index(name) for name in os.listdir(results_dir)]
            index = 1 + max((i for i in indices if i is not None), default=-1)
            candidate = Path(results_dir) / f"{index:03d}-{run_tag(model_name, data_name)}"
            try:
                candidate.mkdir()
            except FileExistsError:  # a run started at the same moment took this number: take the next
                continue
            run_dir = candidate
        for sub in RUN_SUBDIRS:
            (run_dir / sub).mkdir()
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        run_dir = broadcast_object_list([run_dir], from_process=0)[0]
    return run_dir


def latest_run_dir(results_dir: str | os.PathLike, model_name: str, data_name: str) -> Path | None:
    """The highest-numbered ``NNN-<model>-<data>`` folder in ``results_dir``, or ``None``."""
    if not os.path.isdir(results_dir):
        return None
    tag = run_tag(model_name, data_name)
    runs = [
        (index, name)
        for name in os.listdir(results_dir)
        if (index := _run_index(name)) is not None and name.split("-", 1)[1] == tag
    ]
    return Path(results_dir) / max(runs)[1] if runs else None


def save_config(run_dir: str | os.PathLike, args: Any) -> Path:
    """Write every argument to ``run_dir/config.json`` and return its path.

    Args:
        run_dir: the run folder.
        args: an argparse ``Namespace``, a dict or a dataclass. Values JSON cannot hold (paths,
            dtypes) are written as strings.
    """
    if isinstance(args, argparse.Namespace):
        config = {key: value for key, value in vars(args).items() if key != "given_options"}
    elif dataclasses.is_dataclass(args):
        config = dataclasses.asdict(args)
    elif isinstance(args, dict):
        config = args
    else:
        raise TypeError(f"args must be an argparse.Namespace, a dict or a dataclass, got {type(args).__name__}")
    path = Path(run_dir) / "config.json"
    with open(path, "w") as f:
        json.dump(config, f, indent=2, default=str)
    return path


def create_logger(
    run_dir: str | os.PathLike | None, is_main_process: bool = True, name: str = "sdt_gen"
) -> logging.Logger:
    """A logger writing to stdout and ``run_dir/log.txt`` on the main process, and nowhere elsewhere.

    Calling it again replaces the handlers, so tests and notebooks do not print every line twice.

    Args:
        run_dir: folder of ``log.txt``; ``None`` logs to stdout only.
        is_main_process: ``accelerator.is_main_process``; other processes get a silent logger.
        name: logger name.
    """
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False  # the root logger (accelerate, diffusers) must not repeat our lines
    if not is_main_process:
        logger.addHandler(logging.NullHandler())
        return logger
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(Path(run_dir) / "log.txt"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger
