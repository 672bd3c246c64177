"""The bundled default data set: scikit-learn's handwritten digits, upscaled for a patch-2 model.

1797 real 8x8 grey images of the digits 0-9 with 4-bit values (0..16), shipped inside scikit-learn,
so ``python train_dit.py`` runs with no download. Upscaled bicubically (crisper strokes than
bilinear, far less blocky than nearest) and scaled to [-1, 1] like every image in this project.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGITS_ID2LABEL = {i: str(i) for i in range(10)}
DIGITS_SPLITS = ("all", "train", "val")


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


class DigitsDataset(Dataset):
    """scikit-learn's digits as ``(image, label)`` pairs with ``image`` of shape ``(channels, size, size)`` in [-1, 1].

    Args:
        split: ``"all"`` (1797 images), or the ``"train"`` / ``"val"`` part of ``train_val_split``.
        image_size: output side length; the 8x8 originals are upscaled bicubically.
        channels: 1 (grey) or 3 (grey repeated, for models that expect RGB).
        val_fraction: share of each class in the ``"val"`` split.
        seed: seed of the split.
    """

    def __init__(
        self, split: str = "all", image_size: int = 16, channels: int = 1, val_fraction: float = 0.1, seed: int = 0
    ):
        # Imported here: scikit-learn is slow to import and only this data set needs it.
        from sklearn.datasets import load_digits

        if split not in DIGITS_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(map(repr, DIGITS_SPLITS))}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least the original 8 pixels, got {image_size}")

        digits = load_digits()
        images = torch.from_numpy(digits.images).float()[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
        labels = torch.from_numpy(digits.target).long()  # (1797,)
        if split != "all":
            train, val = train_val_split(labels, val_fraction, seed)
            keep = torch.tensor(train if split == "train" else val)
            images, labels = images[keep], labels[keep]

        if image_size != 8:
            # Bicubic overshoots at stroke edges: clamp back to the valid intensity range.
            images = F.interpolate(images, size=image_size, mode="bicubic", align_corners=False).clamp(0, 1)
        self.images = (images * 2 - 1).expand(-1, channels, -1, -1).contiguous()  # (N, channels, size, size)
        self.targets = labels.tolist()
        self.id2label = dict(DIGITS_ID2LABEL)
        self.split = split

    @property
    def num_classes(self) -> int:
        return len(self.id2label)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]
