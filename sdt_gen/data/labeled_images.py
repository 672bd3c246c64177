"""Small labelled image sets held in memory as one tensor: the base of the bundled digit data sets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

SPLITS = ("all", "train", "val")


def train_val_split(
    labels: Sequence[int] | torch.Tensor, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Deterministic stratified split of item indices into train and validation.

    Each class contributes ``round(count * val_fraction)`` items to validation, so small classes
    keep their share; the same ``labels`` and ``seed`` always give the same split.

    Args:
        labels: class index of every item (e.g. ``dataset.targets``).
        val_fraction: share of each class held out, in ``[0, 1)``.
        seed: seed of the permutation within each class.

    Returns:
        ``(train_indices, val_indices)``, each sorted ascending.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in labels.unique(sorted=True):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        num_val = round(len(members) * val_fraction)
        val += members[:num_val].tolist()
        train += members[num_val:].tolist()
    return sorted(train), sorted(val)


class LabeledImages(Dataset):
    """``(image, label)`` pairs of one split of an in-memory image set, images in [-1, 1].

    Args:
        images: every image of the set, ``(N, 1, H, W)`` in ``[0, 1]``.
        labels: their class indices ``(N,)``.
        id2label: class names.
        split: ``"all"``, or the ``"train"`` / ``"val"`` part of ``train_val_split``.
        channels: 1 (grey) or 3 (grey repeated, for models that expect RGB).
        val_fraction: share of each class in the ``"val"`` split.
        seed: seed of the split.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        id2label: dict[int, str],
        split: str = "all",
        channels: int = 1,
        val_fraction: float = 0.1,
        seed: int = 0,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(map(repr, SPLITS))}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if split != "all":
            train, val = train_val_split(labels, val_fraction, seed)
            keep = torch.tensor(train if split == "train" else val)
            images, labels = images[keep], labels[keep]
        self.images = (images * 2 - 1).expand(-1, channels, -1, -1).contiguous()  # (N, channels, H, W)
        self.targets = labels.tolist()
        self.id2label = dict(id2label)
        self.split = split

    @property
    def num_classes(self) -> int:
        return len(self.id2label)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]
