"""The bundled default data set: scikit-learn's handwritten digits, upscaled for a patch-2 model.

1797 real 8x8 grey images of the digits 0-9 with 4-bit values (0..16), shipped inside scikit-learn,
so ``python train_dit.py`` runs with no download. Upscaled bicubically (crisper strokes than
bilinear, far less blocky than nearest) and scaled to [-1, 1] like every image in this project.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .labeled_images import LabeledImages

DIGITS_ID2LABEL = {i: str(i) for i in range(10)}


class DigitsDataset(LabeledImages):
    """scikit-learn's digits as ``(image, label)`` pairs with ``image`` of shape ``(channels, size, size)`` in [-1, 1].

    Args:
        split: ``"all"`` (1797 images), or the ``"train"`` / ``"val"`` part of ``train_val_split``.
        image_size: output side length; the 8x8 originals are upscaled bicubically.
        channels: 1 (grey) or 3 (grey repeated, for models that expect RGB).
        val_fraction: share of each class in the ``"val"`` split.
        seed: seed of the split.
    """

    ID2LABEL = DIGITS_ID2LABEL

    def __init__(
        self, split: str = "all", image_size: int = 16, channels: int = 1, val_fraction: float = 0.1, seed: int = 0
    ):
        # Imported here: scikit-learn is slow to import and only this data set needs it.
        from sklearn.datasets import load_digits

        if image_size < 8:
            raise ValueError(f"image_size must be at least the original 8 pixels, got {image_size}")
        digits = load_digits()
        images = torch.from_numpy(digits.images).float()[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
        if image_size != 8:
            # Bicubic overshoots at stroke edges: clamp back to the valid intensity range.
            images = F.interpolate(images, size=image_size, mode="bicubic", align_corners=False).clamp(0, 1)
        labels = torch.from_numpy(digits.target).long()  # (1797,)
        super().__init__(images, labels, self.ID2LABEL, split, channels, val_fraction, seed)
