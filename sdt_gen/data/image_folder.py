"""ImageNet-style class folders with ADM's centre crop, as DiT trains on them.

``root/<class name>/<image>``: one sub-folder per class, sorted names give the class indices
(torchvision ``ImageFolder``). Optional JSON mapping from folder names to readable labels,
e.g. ``{"n01440764": "tench, Tinca tinca"}``, for ``id2label``. Without it, ImageNet-1k's layout (1,000
folders named by WordNet id, ``n01440764``...) gets ImageNet's names, so a pipeline trained on it takes
``"golden retriever"`` as ``DiTPipeline`` does; any other layout keeps its folder names.

A file that cannot be decoded does not stop a multi-day run: ``__getitem__`` warns, records it
and returns ``None``, and ``collate_skip_none`` drops it from the batch.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from functools import partial
from typing import Any

import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms
from torchvision.datasets import ImageFolder


_WORDNET_ID = re.compile(r"n\d{8}")


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM's centre crop: square ``image_size`` crop of the image resized so its short side fits.

    Halves the image with a BOX filter while the short side is at least ``2 * image_size``
    (cheap, alias-free downsampling of big photos), then resizes with BICUBIC so the short side
    is exactly ``image_size``, then cuts the central square.

    Args:
        pil_image: any PIL image.
        image_size: side of the output square.

    Returns:
        ``image_size x image_size`` PIL image in the input's mode.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(side // 2 for side in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(side * scale) for side in pil_image.size), resample=Image.BICUBIC)
    left = (pil_image.size[0] - image_size) // 2
    top = (pil_image.size[1] - image_size) // 2
    return pil_image.crop((left, top, left + image_size, top + image_size))


def imagenet_id2label() -> dict[int, str]:
    """ImageNet-1k's class names by index (``{0: "tench", ..., 207: "golden retriever", ...}``), as torchvision ships them."""
    from torchvision.models import ResNet50_Weights

    return dict(enumerate(ResNet50_Weights.IMAGENET1K_V1.meta["categories"]))


def load_class_names(path: str | os.PathLike) -> dict[str, str]:
    """Read a JSON object mapping class folder names to readable labels."""
    with open(path) as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(
            f"{path} must hold a JSON object of folder name -> label string, e.g. {{\"n01440764\": \"tench\"}}"
        )
    return mapping


def collate_skip_none(batch: list[Any]) -> Any:
    """``default_collate`` without the ``None`` items of corrupt files; ``None`` if nothing is left."""
    items = [item for item in batch if item is not None]
    return default_collate(items) if items else None


class ImageFolderDataset(ImageFolder):
    """Class folders as ``(image, label)`` pairs: ADM centre crop, optional flip, ``(3, size, size)`` in [-1, 1].

    Args:
        root: folder with one sub-folder of images per class.
        image_size: side of the square crop.
        random_flip: flip horizontally with probability 0.5 (DiT's only augmentation). Off for
            latent extraction, which stores the flipped copy itself.
        class_names: optional JSON file mapping folder names to labels; every class folder must
            appear in it. Without it the folder names are the labels, except that ImageNet-1k's 1,000
            WordNet-id folders get ImageNet's class names.

    Attributes:
        id2label: class index -> label.
        corrupt_files: paths this process failed to decode (with DataLoader workers, each worker
            keeps its own list: count the dropped items of the batches instead).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        random_flip: bool = True,
        class_names: str | os.PathLike | None = None,
    ):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"data folder {root!r} does not exist or is not a folder; expected root/<class>/<image>"
            )
        # A partial, not a lambda: DataLoader workers started by spawn/forkserver must pickle the dataset.
        steps = [transforms.Lambda(partial(center_crop_arr, image_size=image_size))]
        if random_flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=True)]
        transform = transforms.Compose(steps)
        try:
            super().__init__(root, transform=transform)
        except FileNotFoundError as err:
            # torchvision's messages do not say which layout it wanted.
            raise FileNotFoundError(f"no images found in {root!r}; expected root/<class>/<image> ({err})") from err

        self.image_size = image_size
        self.random_flip = random_flip
        if class_names is None and len(self.classes) == 1000 and all(map(_WORDNET_ID.fullmatch, self.classes)):
            # ImageNet-1k's class index is the rank of its WordNet id, the order torchvision's names follow.
            self.id2label = imagenet_id2label()
        elif class_names is None:
            self.id2label = dict(enumerate(self.classes))
        else:
            mapping = load_class_names(class_names)
            missing = [name for name in self.classes if name not in mapping]
            if missing:
                raise ValueError(
                    f"class folders {missing[:5]} (of {len(missing)}) have no entry in {os.fspath(class_names)!r}"
                )
            self.id2label = {i: mapping[name] for i, name in enumerate(self.classes)}
        self.corrupt_files: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        # PIL reports undecodable or truncated files as OSError, some broken headers as SyntaxError.
        except (OSError, SyntaxError) as err:
            self.corrupt_files.append(path)
            warnings.warn(f"skipping corrupt image {path!r} ({len(self.corrupt_files)} so far): {err}", stacklevel=2)
            return None
        return self.transform(image), target
