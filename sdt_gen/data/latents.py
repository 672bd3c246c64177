"""Pre-extracted VAE latents (fast-DiT's speed-up): extraction under accelerate and a reader.

On-disk layout of ``out_dir``::

    shard-00000000-00004096.safetensors   items [0, 4096) of the image data set
    shard-00004096-00008192.safetensors   ...
    meta.json                             count, latent shape, scaling, id2label, VAE, shard list

Each shard holds ``latents`` and ``latents_flip`` (``(n, C, h, w)`` float32), ``labels`` and the
data set ``indices`` (``(n,)`` int64) of the items it holds. A latent is ONE sample of the VAE
posterior, shifted and scaled as the denoiser sees it: ``(z - shift_factor) * scaling_factor``
(fast-DiT's choice: half the storage of mean + std, at the price of a fixed posterior sample per
image; the flipped copy is a second, independent sample). Each shard draws its posterior noise
from ``seed + start``, so the result does not depend on the number of processes.

Shard names depend only on item ranges, never on the process that wrote them: the range is cut
into fixed-size chunks dealt round-robin to processes, each shard is written under a temporary
name and renamed into place, and a re-run skips shards that exist. A killed extraction resumes.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .image_folder import collate_skip_none
from ..files import atomic_file, write_json_atomically
from .vae import encode_images

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers import AutoencoderKL

LATENTS_FORMAT = "sdt-gen-latents-v1"
SHARD_KEYS = ("latents", "latents_flip", "labels", "indices")
_SHARD_RE = re.compile(r"shard-(\d{8})-(\d{8})\.safetensors")


def shard_name(start: int, end: int) -> str:
    """File name of the shard holding data set items ``[start, end)``."""
    return f"shard-{start:08d}-{end:08d}.safetensors"


def shard_ranges(num_items: int, shard_size: int) -> list[tuple[int, int]]:
    """Cut ``[0, num_items)`` into consecutive ``[start, end)`` chunks of ``shard_size`` (the last may be shorter)."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [(start, min(start + shard_size, num_items)) for start in range(0, num_items, shard_size)]


class _IndexedItems(Dataset):
    """Items ``[start, end)`` of ``dataset`` as ``(index, image, label)``; ``None`` stays ``None`` (corrupt file)."""

    def __init__(self, dataset: Dataset, start: int, end: int):
        self.dataset, self.start, self.end = dataset, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int] | None:
        item = self.dataset[self.start + i]
        return None if item is None else (self.start + i, *item)


def _write_atomic(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Write a safetensors file under a temporary name, then rename it: readers never see half a shard."""
    with atomic_file(path) as tmp:
        save_file(tensors, tmp)


@torch.no_grad()
def _encode_range(
    dataset: Dataset,
    vae: AutoencoderKL,
    start: int,
    end: int,
    batch_size: int,
    num_workers: int,
    seed: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Encode items ``[start, end)`` and their mirror images into one shard's tensors."""
    loader = DataLoader(
        _IndexedItems(dataset, start, end), batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_none
    )
    # A CPU generator gives the same posterior samples on any device and any process count.
    generator = torch.Generator().manual_seed(seed + start)
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in SHARD_KEYS}
    for batch in loader:
        if batch is None:  # every image of the batch was corrupt
            continue
        indices, images, labels = batch
        images = images.to(device=device, dtype=vae.dtype)  # (B, 3, H, W)
        both = torch.cat([images, images.flip(-1)])  # (2B, 3, H, W): originals, then mirrored
        # contiguous(): the encoder may hand back a channels-last layout, which safetensors refuses.
        latents = encode_images(vae, both, generator).float().cpu().contiguous()  # (2B, C, h, w)
        parts["latents"].append(latents[: len(images)])
        parts["latents_flip"].append(latents[len(images) :])
        parts["labels"].append(labels.long())
        parts["indices"].append(indices.long())
    if not parts["indices"]:
        raise ValueError(f"every image of items [{start}, {end}) failed to load; check the data set")
    return {key: torch.cat(values) for key, values in parts.items()}


@contextmanager
def open_shard(path: str, remedy: str) -> Iterator[Any]:
    """``safe_open(path)``; a damaged shard raises a ``ValueError`` naming it and ``remedy``."""
    try:
        f = safe_open(path, framework="pt")
    except (SafetensorError, OSError) as error:
        raise ValueError(f"latent shard {path} is damaged ({error}): {remedy}") from None
    with f:
        yield f


def _check_existing_shards(out_dir: str, plan: list[tuple[int, int]], shard_size: int) -> None:
    """Refuse to mix shards from an extraction with another data set size or shard size."""
    planned = {shard_name(start, end) for start, end in plan}
    foreign = sorted(name for name in os.listdir(out_dir) if _SHARD_RE.fullmatch(name) and name not in planned)
    if foreign:
        raise ValueError(
            f"{out_dir!r} holds shards {foreign[:3]} that do not fit this extraction ({plan[-1][1]} items, "
            f"shard size {shard_size}): use another folder or the original settings"
        )


def extract_latents(
    accelerator: Accelerator,
    dataset: Dataset,
    vae: AutoencoderKL,
    out_dir: str | os.PathLike,
    batch_size: int = 32,
    shard_size: int = 4096,
    num_workers: int = 4,
    seed: int = 0,
    vae_path: str | None = None,
) -> dict[str, Any]:
    """Encode every image of ``dataset`` (and its mirror image) with ``vae`` into safetensors shards.

    Call it on every process of an accelerate launch: chunk ``k`` of ``shard_size`` items goes to
    process ``k % num_processes``, so each image is encoded exactly once. Existing shards are kept
    (resume); corrupt images are skipped and counted in ``meta.json``.

    Args:
        accelerator: the ``accelerate.Accelerator`` of this launch.
        dataset: ``(image, label)`` items in [-1, 1] without random flips (e.g. ``ImageFolderDataset``
            with ``random_flip=False``), with an ``id2label`` attribute.
        vae: a diffusers ``AutoencoderKL``; moved to ``accelerator.device`` and put in eval mode.
        out_dir: output folder, created if needed.
        batch_size: images per encoder call (each call also encodes their mirror images).
        shard_size: items per shard. Must stay the same when resuming into the same folder.
        num_workers: DataLoader workers per process.
        seed: base seed of the posterior samples.
        vae_path: recorded in ``meta.json``; defaults to the path the VAE was loaded from.

    Returns:
        the contents of ``meta.json`` (on every process).
    """
    _check_extractable(dataset)
    out_dir = os.fspath(out_dir)
    if accelerator.is_main_process:
        os.makedirs(out_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    plan = shard_ranges(len(dataset), shard_size)
    _check_existing_shards(out_dir, plan, shard_size)

    vae = vae.to(accelerator.device).eval().requires_grad_(False)
    todo = [
        (start, end)
        for start, end in plan[accelerator.process_index :: accelerator.num_processes]
        if not os.path.exists(os.path.join(out_dir, shard_name(start, end)))
    ]
    for start, end in tqdm(todo, desc="extracting latents", disable=not accelerator.is_local_main_process):
        tensors = _encode_range(dataset, vae, start, end, batch_size, num_workers, seed, accelerator.device)
        _write_shard(tensors, os.path.join(out_dir, shard_name(start, end)))
    accelerator.wait_for_everyone()

    meta_path = os.path.join(out_dir, "meta.json")
    if accelerator.is_main_process:
        write_json_atomically(meta_path, _latents_meta(out_dir, plan, dataset, vae, vae_path, shard_size, seed))
    accelerator.wait_for_everyone()
    with open(meta_path) as f:
        return json.load(f)


def _check_extractable(dataset: Dataset) -> None:
    """Refuse a data set extraction cannot use: empty, without class names, or flipping at random."""
    if len(dataset) == 0:
        raise ValueError("the data set is empty: nothing to extract")
    if getattr(dataset, "id2label", None) is None:
        raise ValueError(f"{type(dataset).__name__} has no id2label attribute; the latents need the class names")
    if getattr(dataset, "random_flip", False):
        raise ValueError("build the data set with random_flip=False: extraction stores the mirrored copy itself")


def _write_shard(tensors: dict[str, torch.Tensor], shard_path: str) -> None:
    """Write one shard atomically; a failed write names the shard and how to continue."""
    try:
        _write_atomic(tensors, shard_path)
    except OSError as error:
        raise OSError(
            f"could not write latent shard {shard_path}: {error.strerror or error}; the shards written so far "
            "are complete, run the extraction again to continue"
        ) from error


def _latents_meta(out_dir, plan, dataset, vae, vae_path, shard_size: int, seed: int) -> dict[str, Any]:
    """``meta.json`` of a finished extraction, read back from its shards (count, shape, sizes)."""
    names = [shard_name(start, end) for start, end in plan]
    count = 0
    for name in names:
        with open_shard(os.path.join(out_dir, name), "delete it and run the extraction again") as f:
            count += f.get_slice("indices").get_shape()[0]
            latent_shape = f.get_slice("latents").get_shape()[1:]
    return {
        "format": LATENTS_FORMAT,
        "count": count,
        "num_images": len(dataset),
        "skipped": len(dataset) - count,
        "latent_shape": latent_shape,
        "scaling_factor": vae.config.scaling_factor,
        "shift_factor": getattr(vae.config, "shift_factor", None) or 0.0,
        "id2label": {str(k): v for k, v in dataset.id2label.items()},
        "vae": vae_path or getattr(vae.config, "_name_or_path", None),
        "shard_size": shard_size,
        "seed": seed,
        "shards": names,
        "shard_bytes": [os.path.getsize(os.path.join(out_dir, name)) for name in names],
    }


class LatentDataset(Dataset):
    """The shards written by ``extract_latents`` as ``(latent, label)`` pairs; no VAE needed.

    Labels are read once; latents are read row by row from memory-mapped shards, so the data set
    costs no RAM up front and each DataLoader worker opens its own file handles.

    Args:
        path: the extraction's ``out_dir``.
        random_flip: return the mirrored image's latent with probability 0.5 (DiT's flip).

    Attributes:
        meta: the contents of ``meta.json``.
        id2label: class index -> label.
        latent_shape: ``(C, h, w)`` of one latent.
        scaling_factor: the VAE scaling already applied to the latents (undo it before decoding).
    """

    def __init__(self, path: str | os.PathLike, random_flip: bool = True):
        path = os.fspath(path)
        meta_path = os.path.join(path, "meta.json")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"latents folder {path!r} does not exist; create it with extract_latents")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"{path!r} has no meta.json: not a finished latent extraction (run it again to resume)"
            )
        with open(meta_path) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != LATENTS_FORMAT:
            raise ValueError(f"{meta_path} has format {self.meta.get('format')!r}; expected {LATENTS_FORMAT!r}")

        listed = self.meta["shards"]
        on_disk = {name for name in os.listdir(path) if _SHARD_RE.fullmatch(name)}
        missing, unlisted = sorted(set(listed) - on_disk), sorted(on_disk - set(listed))
        if missing or unlisted:
            raise ValueError(
                f"shards in {path!r} disagree with meta.json: missing {missing[:3]}, not listed {unlisted[:3]}"
            )

        self.latent_shape = tuple(self.meta["latent_shape"])
        self.paths = [os.path.join(path, name) for name in listed]
        for shard_path, expected in zip(self.paths, self.meta.get("shard_bytes") or []):
            if os.path.getsize(shard_path) != expected:
                raise ValueError(
                    f"latent shard {shard_path} has {os.path.getsize(shard_path)} bytes but {expected} were written "
                    "(truncated or partly copied): copy it again, or delete it and meta.json and rerun the extraction"
                )
        labels, self.offsets = [], [0]  # offsets[k]: global row of shard k's first item
        for shard_path in self.paths:
            with open_shard(shard_path, "copy it again, or delete it and meta.json and rerun the extraction") as f:
                if set(f.keys()) != set(SHARD_KEYS):
                    raise ValueError(f"{shard_path} holds {sorted(f.keys())}; expected {sorted(SHARD_KEYS)}")
                shard_labels = f.get_tensor("labels")  # (n,)
                for key in ("latents", "latents_flip"):
                    shape, expected = tuple(f.get_slice(key).get_shape()), (len(shard_labels), *self.latent_shape)
                    if shape != expected:
                        raise ValueError(f"{shard_path}: {key} has shape {shape}; meta.json says {expected}")
            labels.append(shard_labels)
            self.offsets.append(self.offsets[-1] + len(shard_labels))
        if self.offsets[-1] != self.meta["count"]:
            raise ValueError(f"shards in {path!r} hold {self.offsets[-1]} items; meta.json says {self.meta['count']}")

        self.targets = torch.cat(labels).tolist()
        self.id2label = {int(k): v for k, v in self.meta["id2label"].items()}
        self.scaling_factor = self.meta["scaling_factor"]
        self.random_flip = random_flip
        self._files: list[Any] | None = None  # opened lazily, once per worker process

    @property
    def num_classes(self) -> int:
        return len(self.id2label)

    def __getstate__(self) -> dict[str, Any]:
        # Open file handles cannot be pickled into spawned DataLoader workers; they reopen their own.
        return {**self.__dict__, "_files": None}

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        if self._files is None:
            self._files = [safe_open(p, framework="pt") for p in self.paths]
        shard = bisect.bisect_right(self.offsets, index) - 1
        key = "latents_flip" if self.random_flip and torch.rand(()) < 0.5 else "latents"
        latent = self._files[shard].get_slice(key)[index - self.offsets[shard]]  # (C, h, w)
        return latent, self.targets[index]
