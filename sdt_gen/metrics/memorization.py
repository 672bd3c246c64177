"""Memorization: how many generated samples are copies of training images.

For every sample, the distances to its nearest and second-nearest training image. A sample is a copy by
the ratio test of Yoon et al. (2023) and Gu et al. (2023) when the nearest is much closer than the second
(``d1 / d2 < 1/3``): a copy sits on one training image, a new image sits between several. Beside it, the
samples' nearest-training distances are set against those of real held-out images (images the model never
saw, drawn from the same distribution): a copy is closer to the training set than any held-out image is.

Distances are Euclidean, in pixel space on [0, 1] at the model's resolution by default, or in any feature
space. The search is exact and chunked (``query_chunk x reference_chunk`` distances at a time), so its
memory is bounded and its cost is ``N * M * D`` multiply-adds for N samples, M training images of
D values each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .frechet import FeaturesAndLogits, features_and_logits_of

MEMORIZATION = "memorization"  # its name among eval_fid.py's --metrics
COPY_RATIO = 1 / 3  # Yoon et al. (2023), Gu et al. (2023): nearest / second nearest below this is a copy


def two_nearest(
    queries: torch.Tensor,
    references: torch.Tensor,
    query_chunk: int = 1024,
    reference_chunk: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances from each query to its two nearest references, and the nearest one's index.

    Args:
        queries: ``(N, D)``.
        references: ``(M, D)``, M >= 2, on the device of ``queries`` (the search runs there).
        query_chunk: queries per block.
        reference_chunk: references per block; memory is ``query_chunk * reference_chunk`` distances.

    Returns:
        ``(N, 2)`` distances, nearest first, and ``(N,)`` indices of the nearest reference.
    """
    distances, indices = [], []
    for q in range(0, len(queries), query_chunk):
        block = queries[q : q + query_chunk]
        best = torch.full((len(block), 2), float("inf"), dtype=block.dtype, device=block.device)
        best_index = torch.zeros(len(block), 2, dtype=torch.long, device=block.device)
        for r in range(0, len(references), reference_chunk):
            dist = torch.cdist(block, references[r : r + reference_chunk])  # (n, m)
            k = min(2, dist.shape[1])
            near, where = dist.topk(k, dim=1, largest=False)
            merged = torch.cat([best, near], dim=1)
            order = merged.argsort(dim=1)[:, :2]
            best = merged.gather(1, order)
            best_index = torch.cat([best_index, where + r], dim=1).gather(1, order)
        distances.append(best)
        indices.append(best_index[:, 0])
    return torch.cat(distances), torch.cat(indices)


def as_vectors(images: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """``(N, ...)`` uint8 images (0-255) or float features -> ``(N, D)`` float64, uint8 scaled to [0, 1]."""
    array = torch.as_tensor(np.asarray(images))
    if array.ndim < 2 or len(array) == 0:
        raise ValueError(f"{name}: expected a non-empty batch (N, ...), got shape {tuple(array.shape)}")
    scale = 255.0 if array.dtype == torch.uint8 else 1.0
    return array.reshape(len(array), -1).double() / scale


def copied_share(distances: torch.Tensor) -> float:
    """The share of rows of ``(N, 2)`` nearest distances that pass the ratio test for a copy."""
    return (distances[:, 0] < COPY_RATIO * distances[:, 1]).double().mean().item()


@dataclass
class TrainingSetSearch:
    """Where each sample (and held-out image) sits against the training set: its two nearest distances and the
    index of the nearest training image. ``scores()`` reads the metric off it."""

    samples: torch.Tensor  # (N, 2) distances, nearest first
    nearest: torch.Tensor  # (N,) index of each sample's nearest training image
    heldout: torch.Tensor | None  # (M, 2) distances of the held-out images, or None

    def copy_ratios(self) -> torch.Tensor:
        """``d1 / d2`` of every sample: below ``COPY_RATIO`` it is a copy."""
        return self.samples[:, 0] / self.samples[:, 1]

    def scores(self) -> dict[str, float]:
        """``memorized_fraction`` (ratio test), ``nearest_train_median`` and ``nearest_train_p05`` (the samples'
        nearest-training distances); with held-out images, the same two for them, their own
        ``heldout_memorized_fraction``, and ``closer_than_heldout_fraction``: the share of samples nearer to the
        training set than the nearest held-out image is."""
        near, real = self.samples, self.heldout
        results = {
            "memorized_fraction": copied_share(near),
            "nearest_train_median": near[:, 0].median().item(),
            "nearest_train_p05": near[:, 0].quantile(0.05).item(),
        }
        if real is not None:
            results |= {
                "heldout_memorized_fraction": copied_share(real),
                "heldout_nearest_train_median": real[:, 0].median().item(),
                "heldout_nearest_train_p05": real[:, 0].quantile(0.05).item(),
                "closer_than_heldout_fraction": (near[:, 0] < real[:, 0].min()).double().mean().item(),
            }
        return results


def search_training_set(
    samples: np.ndarray | torch.Tensor,
    train: np.ndarray | torch.Tensor,
    heldout: np.ndarray | torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    query_chunk: int = 1024,
    reference_chunk: int = 16384,
) -> TrainingSetSearch:
    """Each sample's (and held-out image's) two nearest training images.

    Args:
        samples: generated images ``(N, H, W[, C])`` as uint8, or features ``(N, D)``.
        train: the training images (or their features) in the same space, at least 2.
        heldout: real images the model did not train on, in the same space.
        device: where the search runs (float64 on CPU, float32 on an accelerator).
        query_chunk, reference_chunk: block sizes of the search (``two_nearest``).
    """
    dtype = torch.float64 if torch.device(device).type == "cpu" else torch.float32
    sets = {"samples": samples, "train": train} | ({"heldout": heldout} if heldout is not None else {})
    vectors = {name: as_vectors(values, name).to(device, dtype) for name, values in sets.items()}
    widths = {name: v.shape[1] for name, v in vectors.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"samples and references differ in size: {widths} values per image; resize them alike")
    if len(vectors["train"]) < 2:
        raise ValueError(f"the ratio test needs at least 2 training images, got {len(vectors['train'])}")

    def nearest(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        distances, index = two_nearest(vectors[name], vectors["train"], query_chunk, reference_chunk)
        return distances.cpu().double(), index.cpu()

    near, index = nearest("samples")
    return TrainingSetSearch(near, index, nearest("heldout")[0] if heldout is not None else None)


def memorization_metrics(
    samples: np.ndarray | torch.Tensor,
    train: np.ndarray | torch.Tensor,
    heldout: np.ndarray | torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """The share of ``samples`` that copy a ``train`` image, and how close the samples sit to the training set
    (``TrainingSetSearch.scores``); arguments as ``search_training_set``'s."""
    return search_training_set(samples, train, heldout, device).scores()


def copies_picture(search: TrainingSetSearch, samples, train, path: str | os.PathLike, count: int = 16) -> Path:
    """A PNG of the ``count`` samples most like a copy (lowest ``d1 / d2``), each beside its nearest training image,
    labelled with its ratio (a copy: below 0.33).

    Args:
        search: the search of ``samples`` against ``train``.
        samples, train: the images searched, indexable to uint8 ``(C, H, W)`` (tensors or ``ImageDataset``).
        path: where to write it.
        count: how many pairs.
    """
    from ..visualize import make_grid_png

    ratios = search.copy_ratios()
    order = ratios.argsort()[:count]
    pairs = torch.stack([torch.stack([samples[i], train[search.nearest[i]]]) for i in order.tolist()])
    labels = [f"{ratios[i]:.2f}" for i in order.tolist()]
    make_grid_png(pairs.flatten(0, 1), nrow=2, path=path, row_labels=labels)
    return Path(path)


def image_vectors(images: torch.utils.data.Dataset, side: int | None = None, batch_size: int = 256) -> torch.Tensor:
    """A dataset of uint8 images ``(3, H, W)`` as uint8 ``(N, 3, H', W')``, area-downsampled to ``side`` if given."""
    batches = []
    for batch in torch.utils.data.DataLoader(images, batch_size=batch_size):
        if side is not None and batch.shape[-1] != side:
            batch = F.interpolate(batch.float(), size=(side, side), mode="area").round().to(torch.uint8)
        batches.append(batch)
    return torch.cat(batches)


def dataset_memorization(
    samples: torch.utils.data.Dataset,
    train: torch.utils.data.Dataset,
    heldout: torch.utils.data.Dataset | None = None,
    features: FeaturesAndLogits | None = None,
    side: int | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    picture: str | os.PathLike | None = None,
) -> dict[str, float | str | int]:
    """``memorization_metrics`` of image datasets (uint8 ``(3, H, W)``, as ``sdt_gen.metrics`` opens them).

    Args:
        samples, train, heldout: the generated, training and held-out real images, all of one size.
        features: a classifier callable (``TransformersImageClassifier``): distances in its pre-logit features
            instead of pixels.
        side: pixel space only: area-downsample every image to ``side x side`` first, which divides the search's
            cost by ``(H / side)^2`` (64 for 256 px images at 32).
        device: where the search (and nothing else) runs.
        batch_size: images per load (and per classifier call).
        picture: also write this PNG of the samples most like a copy beside their nearest training images
            (``copies_picture``).
    """
    sets = {"samples": samples, "train": train} | ({"heldout": heldout} if heldout is not None else {})
    for name, images in sets.items():
        if len(images) == 0:
            raise ValueError(f"the {name} set is empty ({getattr(images, 'source', 'no source')})")
    if features is not None:
        vectors = {name: features_and_logits_of(features, images, batch_size, 0)[0] for name, images in sets.items()}
    else:
        vectors = {name: image_vectors(images, side, batch_size) for name, images in sets.items()}
        if all((v[:, 1:] == v[:, :1]).all() for v in vectors.values()):
            vectors = {name: v[:, :1] for name, v in vectors.items()}  # grey images: one channel, not three alike
    search = search_training_set(vectors["samples"], vectors["train"], vectors.get("heldout"), device)
    if picture is not None:
        copies_picture(search, samples, train, picture)
    scores = search.scores()
    space = "classifier features" if features is not None else f"pixels, {vectors['train'].shape[-1]} px"
    return scores | {"memorization_space": space, "train_images": len(train)}
