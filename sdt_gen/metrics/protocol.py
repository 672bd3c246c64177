"""The record of an evaluation: every metric next to the full protocol that produced it.

Unclear protocols (guidance scale, sampler, reference set, label sampling) are why DiT's FIDs
were hard to reproduce, so each run writes ``results.json`` with the metrics and everything
that determined them, and appends the same record as one line to ``history.jsonl``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from ..files import file_sha256, write_json_atomically

# Files of a diffusers pipeline (or a bare model folder) that fix what a checkpoint computes.
CONFIG_FILES = ("model_index.json", "transformer/config.json", "scheduler/scheduler_config.json", "config.json")
_VERSIONED_PACKAGES = ("sdt-gen", "torch-fidelity", "torch", "diffusers")


def _model_record(model_path: str | os.PathLike) -> dict[str, Any]:
    """The model's path and the sha256 of each of its config files (raw bytes, so ``sha256sum`` agrees).

    Args:
        model_path: a diffusers pipeline folder or a bare model folder.
    """
    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(f"model {path} is not a folder; expected a diffusers pipeline folder")
    hashes = {name: file_sha256(path / name) for name in CONFIG_FILES if (path / name).is_file()}
    if not hashes:
        raise ValueError(f"model {path} holds none of {list(CONFIG_FILES)}; expected a diffusers pipeline folder")
    return {"path": str(path.resolve()), "config_sha256": hashes}


def _reference_record(
    reference: str | os.PathLike | None, cache_name: str | None, resize: bool
) -> dict[str, Any] | None:
    """The reference's path and kind: ``folder``, ``npz`` or ``cache`` (statistics read by name).

    ``None`` when there was no reference (Inception Score or conditional accuracy alone).

    Args:
        reference: the reference folder or ``.npz``, or ``None`` when only the cache was read.
        cache_name: the reference's name in torch-fidelity's cache, if any.
        resize: whether reference images were resized to the samples' size.
    """
    if reference is None:
        if cache_name is None:
            return None
        kind = "cache"
    else:
        reference = Path(reference)
        if reference.is_dir():
            kind = "folder"
        elif reference.is_file() and reference.suffix == ".npz":
            kind = "npz"
        else:
            raise FileNotFoundError(f"reference {reference} is neither a folder nor an .npz file")
        reference = str(reference.resolve())
    return {"path": reference, "kind": kind, "cache_name": cache_name, "resize": resize}


def build_protocol(
    *,
    num_samples: int,
    reference: str | os.PathLike | None,
    model_path: str | os.PathLike | None = None,
    scheduler: Any = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    guidance_channels: int | Sequence[int] | str | None = None,
    guidance_interval: Sequence[float] | None = None,
    label_mode: str | None = None,
    seed: int | None = None,
    samples_path: str | os.PathLike | None = None,
    cache_name: str | None = None,
    resize_reference: bool = False,
    feature_extractors: Mapping[str, str | os.PathLike] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that determines a metric value, as a JSON-ready dict.

    Model and sampling fields are ``None`` when existing images were scored (``--samples-dir``).

    Args:
        num_samples: how many images were scored.
        reference: the reference folder or ``.npz``; ``None`` when only cached statistics were read
            or nothing was compared against a reference.
        model_path: the pipeline folder; its config files are hashed.
        scheduler: the scheduler (its class name and config are recorded) or its class name.
        num_inference_steps: sampling steps.
        guidance_scale: classifier-free guidance scale.
        guidance_channels: which latent channels guidance was applied to.
        guidance_interval: the noise levels ``[lo, hi]`` guidance was applied at (``SDTPipeline``).
        label_mode: how class labels were drawn, e.g. ``"random"`` or ``"balanced"``.
        seed: the base seed of sampling.
        samples_path: where the scored images are.
        cache_name: the reference's name in torch-fidelity's cache, if any.
        resize_reference: whether reference images were resized to the samples' size.
        feature_extractors: extractor name to weights file, as ``compute_metrics`` returns it;
            each file is recorded with its sha256.
        extra: further fields, recorded under ``"extra"``.
    """
    scheduler_name = scheduler if scheduler is None or isinstance(scheduler, str) else type(scheduler).__name__
    scheduler_config = dict(scheduler.config) if hasattr(scheduler, "config") else None
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "model": _model_record(model_path) if model_path is not None else None,
        "sampling": {
            "scheduler": scheduler_name,
            "scheduler_config": scheduler_config,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "guidance_channels": guidance_channels,
            "guidance_interval": list(guidance_interval) if guidance_interval is not None else None,
            "label_mode": label_mode,
            "seed": seed,
        },
        "num_samples": num_samples,
        "samples_path": str(Path(samples_path).resolve()) if samples_path is not None else None,
        "reference": _reference_record(reference, cache_name, resize_reference),
        "feature_extractors": {
            name: {"weights": str(Path(path).resolve()), "sha256": file_sha256(Path(path))}
            for name, path in (feature_extractors or {}).items()
        },
        "versions": {name: version(name) for name in _VERSIONED_PACKAGES} | {"python": platform.python_version()},
        "extra": dict(extra or {}),
    }


def _json_default(value: Any) -> Any:
    """Makes NumPy values and paths JSON-serialisable; anything else is recorded as its ``str``."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


def write_results(out_dir: str | os.PathLike, metrics: Mapping[str, Any], protocol: Mapping[str, Any]) -> Path:
    """Writes ``results.json`` and appends the same record as one line to ``history.jsonl``.

    Returns the path of ``results.json``, which holds ``{"metrics": ..., "protocol": ...}``.

    Args:
        out_dir: the evaluation folder; created if missing.
        metrics: what ``compute_metrics`` (and ``classifier_metrics``) returned.
        protocol: what ``build_protocol`` returned.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"metrics": dict(metrics), "protocol": dict(protocol)}
    results = out_dir / "results.json"
    # Written beside and renamed, so a crash never leaves a truncated results.json.
    write_json_atomically(results, record, default=_json_default)
    with open(out_dir / "history.jsonl", "a") as history:
        history.write(json.dumps(record, default=_json_default) + "\n")
    return results


# Rows of the table: label, value key, and the key of its ± spread if any.
_TABLE_ROWS = (
    ("FID", "frechet_inception_distance", None),
    ("IS", "inception_score_mean", "inception_score_std"),
    ("KID", "kernel_inception_distance_mean", "kernel_inception_distance_std"),
    ("Precision", "precision", None),
    ("Recall", "recall", None),
    ("F-score", "f_score", None),
    ("Cond. accuracy", "classifier_accuracy", None),
    ("Classifier FD", "classifier_frechet_distance", None),
    ("Classifier precision", "classifier_precision", None),
    ("Classifier recall", "classifier_recall", None),
    ("Memorized", "memorized_fraction", None),
    ("Nearer than held-out", "closer_than_heldout_fraction", None),
    ("Nearest-train median", "nearest_train_median", None),
    ("Held-out nearest median", "heldout_nearest_train_median", None),
    ("Held-out memorized", "heldout_memorized_fraction", None),
)


def format_table(metrics: Mapping[str, Any]) -> str:
    """A short printable table of the metrics present, image counts and adaptation notes.

    Args:
        metrics: what ``compute_metrics`` (and ``classifier_metrics``) returned.
    """
    width = max(len(label) for label, _, _ in _TABLE_ROWS)
    lines = []
    for label, key, spread in _TABLE_ROWS:
        if key in metrics:
            value = f"{metrics[key]:.6g}" + (f" ± {metrics[spread]:.3g}" if spread in metrics else "")
            lines.append(f"{label:<{width}}  {value}")
    counts = [
        f"{name} {metrics[key]}"
        for name, key in (("samples", "num_samples"), ("reference", "num_reference"), ("KID subset", "kid_subset_size"))
        if metrics.get(key) is not None
    ]
    if counts:
        lines.append(", ".join(counts))
    lines.extend(f"note: {note}" for note in metrics.get("notes", ()))
    return "\n".join(lines)
