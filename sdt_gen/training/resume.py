"""A resumed run stays the experiment it was started as: its saved settings, not the command line's defaults.

nanoGPT takes a resumed model's arguments from its checkpoint; here every setting comes from the run's
``config.json`` (written once, when the run started) unless the command line gives it. A given setting that
would change the experiment (model, decay, positions, data, objective, loss, seed, batch) is refused, all
differences named at once, before anything is written. Settings of the schedule and of the machine (steps,
checkpoint and sample cadence, workers, backend) may change; a few that change the numbers but not what is
trained (the learning rate, mixed precision, accumulation) may change with a warning. Each resume appends what
it changed to the run's ``resumes.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RESUMES_RECORD = "resumes.jsonl"

# What any training run may change on resume: the process, the machine and the run folder.
RUN_OPTIONS = frozenset({
    "resume", "results_dir", "cpu", "num_workers", "keep_checkpoints", "push_to_hub", "debug", "given_options",
})


def _as_json(value: Any) -> Any:
    """``value`` as ``config.json`` holds it (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def restore_run_settings(
    args: argparse.Namespace,
    run_dir: str | os.PathLike,
    free: Iterable[str],
    warned: Iterable[str],
) -> dict[str, list]:
    """Give ``args`` the settings of the run in ``run_dir`` for every option the command line did not give.

    Args:
        args: the parsed command line; ``args.given_options`` maps what it gave to its option
            (``cli.OptionRecordingParser``).
        run_dir: the run folder, with the ``config.json`` written when the run started.
        free: options that may change silently besides ``RUN_OPTIONS`` (the schedule, the machine).
        warned: options that may change, recorded and reported as a change of the run's numbers.

    Returns:
        ``{option: [the run's value, the new value]}`` for every allowed change.

    Raises:
        ValueError: one line per given option that would change the experiment, naming both values.
    """
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: the run's settings are unknown, so it cannot be resumed")
    saved = json.loads(config_path.read_text())
    given = getattr(args, "given_options", {})
    free, warned = set(free), set(warned)
    refused, changes = [], {}
    for key, value in saved.items():
        if key not in vars(args) or key in RUN_OPTIONS:
            continue
        if key not in given:
            setattr(args, key, value)
            continue
        new = _as_json(getattr(args, key))
        if new == value:
            continue
        if key in free or key in warned:
            changes[key] = [value, new]
        else:
            refused.append(f"{given[key]}: the run has {value!r}, you gave {new!r}")
    if refused:
        raise ValueError(
            f"--resume {os.fspath(run_dir)} would train another experiment than the run started:\n  "
            + "\n  ".join(refused)
            + "\nresume without these options (the run's own settings apply) or start a new run"
        )
    return changes


def warned_changes(changes: dict[str, list], warned: Iterable[str]) -> list[str]:
    """The lines a resume reports for changes of ``warned`` options."""
    return [f"{flag(key)} changed from {old!r} to {new!r} on resume" for key, (old, new) in changes.items() if key in set(warned)]


def record_resume(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None, changes: dict[str, list]) -> None:
    """Append one line to ``run_dir/resumes.jsonl``: when, from which checkpoint, what changed."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": checkpoint and os.fspath(checkpoint),
             "changes": changes}
    with open(Path(run_dir) / RESUMES_RECORD, "a") as f:
        f.write(json.dumps(entry) + "\n")


__all__ = ["RESUMES_RECORD", "RUN_OPTIONS", "record_resume", "restore_run_settings", "warned_changes"]
