"""Samples for evaluation: written to a folder, spread over processes, deterministic and resumable.

Image ``i`` of a run is fixed by the run's settings alone:

* its label is entry ``i`` of ``sample_labels(num_samples, num_classes, mode, seed)``: uniform at
  random from ``torch.Generator().manual_seed(seed)`` (``"random"``, as DiT) or ``i % num_classes``
  (``"balanced"``). Both are prefixes of longer runs, so a run of 10k images is the start of one
  of 50k with the same seed. Or the run gives every label itself (``sample.py --classes 7 3
  --per-class 2``: ``[7, 7, 3, 3]``);
* its noise comes from its own generator, seeded ``image_seed(seed, i) = seed * 1_000_003 + i``,
  which draws the initial latents and every ancestral-sampling step of that image only.

Process ``r`` of ``W`` draws the images ``r, r + W, ...`` among those still missing, so the union
is every index exactly once, and the same command gives the same images on 1 or 8 processes (up
to the float round-off of different batch compositions, which CPU kernels do not show).

Each image is written as ``{i:06d}_{label}_{name}.png`` under a temporary name and then renamed,
so an interrupted run leaves only whole files; running again into the same folder draws only the
missing ones. ``sampling.json`` in the folder records the settings that determine the images
(model config and weights hash, scheduler, steps, guidance, labels, seed); a run with other
settings into a folder that holds samples is an error naming the first setting that differs,
instead of a silent mix of two protocols. So is a folder of samples without ``sampling.json`` (as
``sample.py --out-dir`` wrote them before it used this module): nothing tells what drew them.

Also here: reading labels back from the file names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..pipelines.class_names import label_slug
from ..pipelines.seeding import SEED_STRIDE, image_seed
from ..files import PARTIAL_SUFFIX, atomic_file, write_json_atomically

logger = logging.getLogger(__name__)

LABEL_MODES = ("random", "balanced")
MANIFEST = "sampling.json"
_SAMPLE_NAME = re.compile(r"^(\d{6,})_(\d+)_(.*)\.png$")


class ProcessGroup(Protocol):
    """What sampling needs of ``accelerate.Accelerator`` or ``accelerate.PartialState``."""

    process_index: int
    num_processes: int

    def wait_for_everyone(self) -> None: ...


#################################################################################
#                           Labels, seeds, file names                           #
#################################################################################

def sample_labels(num_samples: int, num_classes: int, mode: str = "random", seed: int = 0) -> list[int]:
    """The conditioning label of each image index.

    Args:
        num_samples: number of images.
        num_classes: labels are drawn from ``0..num_classes-1``.
        mode: ``"random"``: uniform, drawn at once from ``torch.Generator().manual_seed(seed)``
            (as DiT's ``sample_ddp.py``); ``"balanced"``: ``i % num_classes``, every class equally
            often (within one) in any prefix.
        seed: the base seed of the run.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; expected one of {', '.join(LABEL_MODES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if mode == "balanced":
        return [i % num_classes for i in range(num_samples)]
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(num_classes, (num_samples,), generator=generator).tolist()


def _label_plan(labels: str | Sequence[int], num_samples: int, num_classes: int, seed: int) -> list[int]:
    """The label of each image: drawn by ``sample_labels`` for a mode, checked for a list given by the run."""
    if isinstance(labels, str):
        return sample_labels(num_samples, num_classes, labels, seed)
    plan = [int(label) for label in labels]
    if len(plan) != num_samples:
        raise ValueError(f"got {len(plan)} labels for {num_samples} samples; give one label per image")
    outside = [label for label in plan if not 0 <= label < num_classes]
    if outside:
        raise ValueError(f"label {outside[0]} is not a class of the model (0..{num_classes - 1})")
    return plan


def sample_file_name(index: int, label: int, name: str) -> str:
    """``{index:06d}_{label}_{slug of name}.png``, e.g. ``000042_207_golden_retriever.png``.

    Args:
        index: the image index.
        label: its class id.
        name: its class name.
    """
    return f"{index:06d}_{label}_{label_slug(name)}.png"


def parse_sample_file_name(path: str | os.PathLike) -> tuple[int, int]:
    """The ``(index, label)`` in a sample's file name; ``ValueError`` when it does not follow the pattern.

    Args:
        path: a file written by ``sample_to_folder`` (or named like one).
    """
    match = _SAMPLE_NAME.match(Path(path).name)
    if match is None:
        raise ValueError(
            f"{Path(path).name} does not name a sample as {{index:06d}}_{{label}}_{{name}}.png; "
            f"the labels of images from elsewhere are unknown"
        )
    return int(match.group(1)), int(match.group(2))


def labels_from_file_names(paths: Sequence[str | os.PathLike]) -> list[int]:
    """The conditioning label of each sample, read from its file name (``{index}_{label}_{name}.png``).

    Args:
        paths: sample files, e.g. ``ScoringImageFolder(folder).files``.
    """
    return [parse_sample_file_name(path)[1] for path in paths]


def existing_samples(folder: str | os.PathLike) -> dict[int, Path]:
    """The sample files (named ``{index:06d}_{label}_{name}.png``) already in ``folder``, by index.

    Args:
        folder: a samples folder; one that does not exist holds none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _SAMPLE_NAME.match(path.name)
        if match is not None and path.is_file():
            index = int(match.group(1))
            if index in found:
                raise ValueError(f"{folder} holds two samples of index {index}: {found[index].name} and {path.name}")
            found[index] = path
    return found


#################################################################################
#                              Sampling protocol                                #
#################################################################################

def _public_config(config: Any) -> dict[str, Any] | None:
    """A diffusers config as plain JSON values, without the private ``_*`` entries."""
    if config is None:
        return None
    public = {key: value for key, value in dict(config).items() if not key.startswith("_")}
    return json.loads(json.dumps(public, sort_keys=True, default=str))


def weights_sha256(*modules: torch.nn.Module | None) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the modules' state dicts (exact, any device).

    Args:
        modules: the networks whose weights determine the samples; ``None`` entries are skipped.
    """
    digest = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Settings recorded only when they differ from these defaults, so folders drawn before the option existed
# keep their record; a comparison reads a missing entry as its default.
_UNRECORDED_DEFAULTS = {"guidance_interval": [0.0, 1.0]}


def sampling_record(
    pipe: Any,
    labels: str | Sequence[int],
    seed: int,
    guidance_scale: float,
    guided_channels: int | None,
    num_inference_steps: int,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Any]:
    """Everything that determines image ``i`` of a run, as JSON values (what ``sampling.json`` holds).

    Args:
        pipe: the ``SDTPipeline``.
        labels: the label mode, or every image's label (recorded as the list).
        seed: the base seed.
        guidance_scale: classifier-free guidance scale.
        guided_channels: guided channels; ``None`` is all of them.
        num_inference_steps: sampling steps.
        guidance_interval: the noise levels guided (``SDTPipeline``); recorded when it is not every step, so
            folders drawn before the option existed keep their record.
    """
    transformer = pipe.transformer
    vae = getattr(pipe, "vae", None)
    interval = [float(value) for value in guidance_interval]
    return {
        "transformer_config": _public_config(transformer.config),
        "vae_config": _public_config(vae.config) if vae is not None else None,
        "dtype": str(transformer.dtype),  # before the hash of the weights, which it changes
        "weights_sha256": weights_sha256(transformer, vae),
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": _public_config(pipe.scheduler.config),
        "num_inference_steps": int(num_inference_steps),
        "guidance_scale": float(guidance_scale),
        "guided_channels": int(guided_channels if guided_channels is not None else transformer.config.in_channels),
        **({"guidance_interval": interval} if interval != _UNRECORDED_DEFAULTS["guidance_interval"] else {}),
        "labels": labels if isinstance(labels, str) else [int(label) for label in labels],
        "seed": int(seed),
        "image_seed": f"seed * {SEED_STRIDE} + index",
        "file_name": "{index:06d}_{label}_{name}.png",
    }


_ABSENT = object()  # an entry one of two records lacks
_LIST_SHOWN_WHOLE = 8  # longer lists (given labels) are named by their first differing entry, or by their length


def _first_difference(saved: Any, record: Any, name: str = "") -> tuple[str, Any, Any] | None:
    """The first entry, in ``record``'s order and into configs and long lists, that differs: ``(name, saved, record)``."""
    if isinstance(saved, dict) and isinstance(record, dict):
        keys = [*record, *(key for key in saved if key not in record)]
        entries = [(saved.get(key, _ABSENT), record.get(key, _ABSENT), f"{name}.{key}" if name else key) for key in keys]
    elif isinstance(saved, list) and isinstance(record, list) and len(saved) == len(record) > _LIST_SHOWN_WHOLE:
        entries = [(there, here, f"{name}[{i}]") for i, (there, here) in enumerate(zip(saved, record))]
    else:
        return None if saved == record else (name, saved, record)
    for entry in entries:
        found = _first_difference(*entry)
        if found is not None:
            return found
    return None


def _shown(value: Any) -> str:
    """A recorded value in a message: long lists and long strings (the weights' hash) shortened."""
    if value is _ABSENT:
        return "nothing recorded"
    if isinstance(value, list) and len(value) > _LIST_SHOWN_WHOLE:
        return f"{len(value)} values [{', '.join(map(repr, value[:4]))}, ...]"
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:16] + "...")
    return repr(value)


def _check_folder(folder: Path, record: dict[str, Any], existing: dict[int, Path]) -> None:
    """Raises when ``folder`` holds samples that other settings than ``record``, or unknown ones, drew."""
    if not existing:  # nothing to mix with: the manifest is (re)written for this run
        return
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{folder} holds {len(existing)} sample PNGs but no {MANIFEST}, so the settings that drew them are "
            f"unknown (sample.py wrote such folders before it recorded them); move them away or write to another folder"
        )
    saved = json.loads(path.read_text())
    for key, default in _UNRECORDED_DEFAULTS.items():  # a default comes last, so the record's order says what is first
        saved.setdefault(key, default)
        record = {**record, key: record.get(key, default)}
    difference = _first_difference(saved, record)
    if difference is not None:
        name, there, here = difference
        raise ValueError(
            f"{folder} holds images drawn with {name} {_shown(there)}; this run asks for {_shown(here)}. "
            f"Rerun with the settings in {path} or write to another folder"
        )


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in ``[0, 1]`` to uint8, rounding as diffusers' ``numpy_to_pil`` does."""
    return (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)


def _write_png_atomically(image: np.ndarray, path: Path) -> None:
    """Writes a uint8 (H, W, C) image, C = 1 (grey) or 3, under a temporary name first, then renames it."""
    with atomic_file(path) as partial:
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(partial, format="PNG")


#################################################################################
#                                   Sampling                                    #
#################################################################################

def _wait(processes: ProcessGroup | None) -> None:
    if processes is not None and processes.num_processes > 1:
        processes.wait_for_everyone()


class SamplingStopped(Exception):
    """``sample_to_folder`` stopped at a batch boundary because ``stop_requested`` said so."""


def _check_sampling_arguments(num_samples: int, seed: int, batch_size: int) -> None:
    """Raises ``ValueError`` for a run ``sample_to_folder`` cannot draw."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_samples > SEED_STRIDE:
        raise ValueError(f"num_samples must be at most {SEED_STRIDE}, got {num_samples}")
    if not (isinstance(seed, int) and 0 <= seed and image_seed(seed, num_samples) < 2**63):
        raise ValueError(f"seed must be a non-negative integer below 2**63 / {SEED_STRIDE}, got {seed}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _missing_indices(out_dir: Path, paths: list[Path], record: dict[str, Any]) -> list[int]:
    """The indices of ``paths`` not in ``out_dir`` yet; raises when the folder holds samples of other settings."""
    existing = existing_samples(out_dir)
    _check_folder(out_dir, record, existing)
    for index, path in sorted(existing.items()):  # a renamed class (id2label is not in the record)
        if index < len(paths) and path.name != paths[index].name:
            raise ValueError(
                f"{out_dir} holds {path.name} where these settings give {paths[index].name}: the folder holds "
                f"samples of another run; write to another output folder"
            )
    return [i for i in range(len(paths)) if i not in existing]


def _prepare_folder(out_dir: Path, record: dict[str, Any], num_samples: int, num_missing: int) -> None:
    """Creates ``out_dir`` with its ``sampling.json`` and reports how many samples it holds already."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"*.png{PARTIAL_SUFFIX}"):  # left by an interrupted run
        stale.unlink()
    write_json_atomically(out_dir / MANIFEST, record, sort_keys=True)  # equal to the one there, if any (checked)
    if num_samples > num_missing:
        rest = f"drawing the other {num_missing}" if num_missing else "nothing to draw"
        logger.info(f"{out_dir}: {num_samples - num_missing} of {num_samples} samples exist, {rest}")


def draw_samples(
    pipe: Any,
    labels: list[int],
    seeds: list[int],
    guidance_scale: float,
    guided_channels: int | None,
    guidance_interval: tuple[float, float],
    num_inference_steps: int,
) -> np.ndarray:
    """One batch as uint8 (B, H, W, C): image j of class ``labels[j]``, from a generator seeded ``seeds[j]``.

    Args:
        pipe: an ``SDTPipeline``.
        labels: the class of each image.
        seeds: the seed of each image's generator (``image_seed(seed, i)`` for image ``i`` of a run).
        guidance_scale: classifier-free guidance scale (1: none).
        guided_channels: guide only the first k channels; ``None``: all.
        guidance_interval: guide only at noise levels in ``[lo, hi]``.
        num_inference_steps: sampling steps of the pipeline's scheduler.
    """
    return to_uint8(
        pipe(
            class_labels=labels,
            guidance_scale=guidance_scale,
            guided_channels=guided_channels,
            guidance_interval=guidance_interval,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            num_inference_steps=num_inference_steps,
            batch_size=len(labels),
            output_type="np",
        ).images  # (B, H, W, C) floats in [0, 1]
    )


def _write_samples(images: np.ndarray, paths: list[Path], out_dir: Path) -> None:
    """Writes image j to ``paths[j]``; a failed write names the file and says the others are whole."""
    for image, path in zip(images, paths):
        try:
            _write_png_atomically(image, path)
        except OSError as error:
            raise OSError(
                f"could not write sample {path}: {error.strerror or error}; the samples written so far "
                f"in {out_dir} are complete, run again to continue"
            ) from error


def _stopped_by_signal(out_dir: Path, num_samples: int) -> SamplingStopped:
    """The ``SamplingStopped`` raised on a stop request, counting the samples now in ``out_dir``."""
    written = sum(index < num_samples for index in existing_samples(out_dir))
    return SamplingStopped(
        f"stopped by a signal: {written} of {num_samples} samples are written in {out_dir} (complete "
        "PNGs); run the same command again to continue from them"
    )


def sample_to_folder(
    pipe: Any,
    out_dir: str | os.PathLike,
    num_samples: int,
    labels: str | Sequence[int] = "random",
    seed: int = 0,
    guidance_scale: float = 1.5,
    guided_channels: int | None = None,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    num_inference_steps: int = 250,
    batch_size: int = 32,
    accelerator: ProcessGroup | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> list[Path]:
    """Draws the images ``0..num_samples-1`` of a run that are not in ``out_dir`` yet; returns all their paths.

    Every process of ``accelerator`` must call it with the same arguments; each draws its share of
    the missing images, and all return once every image exists. See the module docstring for
    labels, seeds and file names. The pipeline's own progress bar is switched off for a bar over
    all images on the main process.

    Args:
        pipe: an ``SDTPipeline`` on the process's device.
        out_dir: the samples folder; created if missing, continued if it holds samples of the
            same settings (extra files, e.g. of indices >= ``num_samples``, are left alone); a
            ``ValueError`` naming the first setting that differs if it holds samples of other settings.
        num_samples: how many images the run has.
        labels: ``"random"`` (uniform, as DiT), ``"balanced"``, or the class of each image
            (``num_samples`` of them).
        seed: base seed (>= 0) of labels and noise.
        guidance_scale: classifier-free guidance scale (1: none).
        guided_channels: guide only the first k channels; ``None``: all.
        guidance_interval: guide only at noise levels in ``[lo, hi]`` (``SDTPipeline``); default every step.
        num_inference_steps: sampling steps of the pipeline's scheduler.
        batch_size: images denoised at once per process.
        accelerator: an ``accelerate.Accelerator`` or ``PartialState``; ``None`` for one process.
        stop_requested: asked after every batch (e.g. whether SIGTERM arrived); when it says yes, the images
            written so far stay (complete PNGs) and ``SamplingStopped`` is raised: a rerun continues from them.
    """
    # 1. Check the arguments and plan every image
    _check_sampling_arguments(num_samples, seed, batch_size)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    out_dir = Path(out_dir)
    plan = _label_plan(labels, num_samples, pipe.transformer.config.num_classes, seed)
    paths = [out_dir / sample_file_name(i, label, pipe.label_name(label)) for i, label in enumerate(plan)]
    record = sampling_record(pipe, labels, seed, guidance_scale, guided_channels, num_inference_steps, guidance_interval)

    # 2. What is there already (every process checks, so an error stops all of them)
    missing = _missing_indices(out_dir, paths, record)
    _wait(accelerator)  # nobody writes before every process has listed what is missing
    if rank == 0:
        _prepare_folder(out_dir, record, num_samples, len(missing))
    _wait(accelerator)

    # 3. Draw this process's share of the missing images, each from its own generator
    mine = missing[rank::world]
    pipe.set_progress_bar_config(disable=True)
    description = f"sampling on {world} processes" if world > 1 else "sampling"
    with tqdm(total=len(missing), disable=rank != 0, desc=description, unit="img") as progress:
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            images = draw_samples(pipe, [plan[i] for i in batch], [image_seed(seed, i) for i in batch], guidance_scale,
                           guided_channels, guidance_interval, num_inference_steps)
            _write_samples(images, [paths[i] for i in batch], out_dir)
            # The other processes advance at the same pace.
            progress.update(min(len(batch) * world, progress.total - progress.n))
            if stop_requested is not None and stop_requested():
                raise _stopped_by_signal(out_dir, num_samples)
    _wait(accelerator)

    # 4. Every image must now exist
    absent = [path.name for path in paths if not path.is_file()]
    if absent:
        raise RuntimeError(f"{len(absent)} samples are missing in {out_dir} after sampling, e.g. {absent[0]}")
    return paths
