"""Saved pipeline folders: what a complete one holds, and the record of the training step it was exported at."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sdt_gen.files import DamagedFolderError, verify_manifest

EXPORT_RECORD = "training_state.json"  # written by train_dit.py into its pipeline folder: the step, each file's hash


def exported_step(folder: str | os.PathLike) -> int | None:
    """The training step of the EMA weights in pipeline ``folder``; ``None`` if it has no intact export record."""
    try:
        return verify_manifest(folder, EXPORT_RECORD)["step"]
    except DamagedFolderError:
        return None


class StalePipelineWarning(UserWarning):
    """A run's exported pipeline is older than the run's newest checkpoint."""


def stale_export_note(folder: str | os.PathLike) -> str | None:
    """A line for whoever loads a run's exported pipeline while the run holds a newer checkpoint (a run stopped
    between a checkpoint and its export, or exported before its last save), saying how to refresh it; else None."""
    folder = Path(folder)
    record = folder / EXPORT_RECORD
    steps = sorted(int(p.name[5:]) for p in (folder.parent / "checkpoints").glob("step-*") if p.name[5:].isdigit())
    if not record.is_file() or not steps:
        return None
    exported = json.loads(record.read_text()).get("step")
    if exported is None or steps[-1] <= exported:
        return None
    newest = folder.parent / "checkpoints" / f"step-{steps[-1]:07d}"
    return (f"{folder} holds the EMA weights of step {exported}, but its run has a newer checkpoint, {newest.name}: "
            f"refresh it with `python train_dit.py --resume {newest} --max-steps {steps[-1]}`")


def check_pipeline_folder(path: str | os.PathLike, required: Sequence[str] = ()) -> dict:
    """Check that ``path`` holds a saved diffusers pipeline with all its components; return its index.

    Raises ``FileNotFoundError`` naming what is missing: the folder, ``model_index.json``, a
    component listed there (or in ``required``), its config file or its weights.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (pass a saved pipeline folder or a Hub repo id)")
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{folder} is not a saved pipeline: it has no model_index.json")
    index = json.loads(index_file.read_text())
    for name in required:
        entry = index.get(name)
        if not isinstance(entry, list) or entry[0] is None:
            raise FileNotFoundError(f"{folder} lacks the {name!r} component: model_index.json lists none")
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise FileNotFoundError(
                f"{folder} lacks the {name!r} component ({entry[1]}): there is no {name}/ folder"
            )
        if not any(sub.glob("*config.json")):
            raise FileNotFoundError(f"{folder} lacks the {name!r} component ({entry[1]}): {name}/ has no config file")
        is_model = (sub / "config.json").is_file()
        if is_model and not any(f for pattern in ("*.safetensors", "*.bin", "*.index.json") for f in sub.glob(pattern)):
            raise FileNotFoundError(f"{folder} lacks the {name!r} component's weights: {name}/ has no weight file")
    return index


__all__ = ["EXPORT_RECORD", "StalePipelineWarning", "check_pipeline_folder", "exported_step", "stale_export_note"]
