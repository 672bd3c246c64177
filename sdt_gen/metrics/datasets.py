"""Images as torch-fidelity wants them: uint8 tensors (3, H, W), one size for the whole set.

Three sources, all picklable so DataLoader workers can receive them: a folder of PNG/JPEG files,
an ADM-style ``.npz`` (``arr_0``: uint8, N x H x W x 3) and an in-memory uint8 array. Pixels go
from the decoder straight to the tensor, with no lossy re-encoding on the way.

Every image is checked against the set's size (the first image's, or the samples' for a
reference set). A different size is an error unless resizing was asked for, in which case the
image is resized (shorter side, bicubic, antialiased) and center-cropped, as ADM prepares its
reference batches.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from ..files import atomic_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

ImageSource = Union[str, os.PathLike, np.ndarray, torch.Tensor, "ImageDataset"]
"""What the metrics accept as a set of images: a folder, an ``.npz`` path, a uint8 array or a dataset."""


def _resize_center_crop(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scales the shorter side to fit ``size`` (bicubic, antialiased), then crops the center.

    Args:
        image: uint8 tensor (3, H, W).
        size: target (height, width).
    """
    height, width = image.shape[-2:]
    scale = max(size[0] / height, size[1] / width)
    # max() keeps rounding from leaving the resized image a pixel short of the crop.
    scaled = [max(size[0], round(height * scale)), max(size[1], round(width * scale))]
    image = TF.resize(image, scaled, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(image, list(size))


class ImageDataset(Dataset):
    """Base class: uint8 tensors (3, H, W), all of size ``self.size``.

    Subclasses set their data, then call ``super().__init__(source)``, which reads the first
    image to learn the set's size.

    Args:
        source: a description of where the images come from, used in error messages.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.resize = False
        self.size: tuple[int, int] = tuple(self._load(0).shape[-2:])

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> torch.Tensor:
        """Returns image ``index`` as a uint8 tensor (3, H, W) at its stored size."""
        raise NotImplementedError

    def _name(self, index: int) -> str:
        """Names image ``index`` for error messages."""
        return f"image {index} of {self.source}"

    def with_size(self, size: tuple[int, int], resize: bool) -> ImageDataset:
        """Returns a copy that yields images of ``size``.

        Args:
            size: the (height, width) every image must have, usually the samples' size.
            resize: resize and center-crop images of another size instead of raising.
        """
        size = tuple(size)
        if size != self.size and not resize:
            raise ValueError(
                f"the images of {self.source} are {self.size[0]}x{self.size[1]} but {size[0]}x{size[1]} is "
                f"required (the samples' size); ask for resizing (resize=True) to resize and center-crop them"
            )
        out = copy.copy(self)
        out.size, out.resize = size, resize
        return out

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self._load(index)
        if tuple(image.shape[-2:]) != self.size:
            if not self.resize:
                raise ValueError(
                    f"{self._name(index)} is {image.shape[-2]}x{image.shape[-1]} but the images of {self.source} "
                    f"must all be {self.size[0]}x{self.size[1]}; ask for resizing (resize=True) to resize and "
                    f"center-crop them"
                )
            image = _resize_center_crop(image, self.size)
        return image


class ImageFilesDataset(ImageDataset):
    """The images of a list of PNG/JPEG files, in the order given (picklable, as torch-fidelity wants).

    Grayscale, palette and RGBA images are converted to RGB. ``files`` lists the paths in the
    order the dataset yields them, so callers can read labels from the file names.

    Args:
        files: the image files.
        source: a description for error messages, e.g. their folder; defaults to the first file's folder.
    """

    def __init__(self, files: Sequence[str | os.PathLike], source: str | None = None) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise ValueError("no image files given")
        super().__init__(source or str(self.files[0].parent))

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> torch.Tensor:
        try:
            with Image.open(self.files[index]) as image:
                return TF.pil_to_tensor(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for truncated or garbled files
            raise ValueError(
                f"{self.files[index]} is damaged or not an image ({error}): replace or delete it (eval_fid.py "
                "samples missing files again)"
            ) from None

    def _name(self, index: int) -> str:
        return str(self.files[index])


class ScoringImageFolder(ImageFilesDataset):
    """The PNG and JPEG files under a folder as the metrics score them, searched recursively and sorted by
    relative path (uint8, one size). Not the training set: that is ``sdt_gen.data.ImageFolderDataset``.

    Args:
        root: the folder.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder; expected a folder of PNG/JPEG images")
        files = sorted(
            (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
        super().__init__(files, source=str(root))


class ArrayImageDataset(ImageDataset):
    """Images held in a uint8 array (N, H, W, 3); (N, H, W, 1) and (N, H, W) are read as grayscale.

    Args:
        images: the array (a NumPy array or a CPU tensor).
        source: a description for error messages.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, source: str = "an in-memory array") -> None:
        array = images.numpy() if isinstance(images, torch.Tensor) else images
        if array.dtype != np.uint8:
            raise TypeError(
                f"{source} holds {array.dtype} values; expected uint8 images (N, H, W, 3), e.g. "
                f"(images * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1]"
            )
        channels_last = array.ndim == 4 and array.shape[-1] in (1, 3)
        if not (array.ndim == 3 or channels_last):
            hint = "; it looks channels-first, transpose it to (N, H, W, 3)" if array.ndim == 4 else ""
            raise ValueError(
                f"{source} has shape {tuple(array.shape)}; expected (N, H, W, 3), (N, H, W, 1) or (N, H, W){hint}"
            )
        if len(array) == 0:
            raise ValueError(f"{source} holds no images")
        self.array = array
        super().__init__(source)

    def __len__(self) -> int:
        return len(self.array)

    def _load(self, index: int) -> torch.Tensor:
        # np.array copies: memory-mapped arrays are read-only, and torch wants writable memory.
        image = torch.from_numpy(np.array(self.array[index]))
        if image.ndim == 2:
            image = image[..., None]
        image = image.permute(2, 0, 1)  # (C, H, W)
        return image.repeat(3, 1, 1) if image.shape[0] == 1 else image


def _open_npz_array(path: Path, key: str = "arr_0") -> np.ndarray:
    """Returns ``key`` from an ``.npz``, memory-mapped when it is stored uncompressed (as np.savez does).

    Mapping matters at ADM scale: 50k images of 256x256 are 9.8 GB, and a loaded copy would be
    repeated in every DataLoader worker.

    Args:
        path: the ``.npz`` file.
        key: the array's name inside it.
    """
    member = f"{key}.npy"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if member not in names:
            found = ", ".join(n.removesuffix(".npy") for n in names) or "nothing"
            raise ValueError(
                f"{path} holds no '{key}' (it holds {found}); expected an ADM-style .npz with images in '{key}'"
            )
        info = archive.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            with archive.open(info) as stream:
                return np.lib.format.read_array(stream)
    with open(path, "rb") as f:
        # The member's data starts after its local header: 30 fixed bytes, then name and extra field.
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran_order else "C")


class NpzImageDataset(ArrayImageDataset):
    """The images of an ADM-style ``.npz`` (``arr_0``: uint8, N x H x W x 3), memory-mapped when possible.

    Args:
        path: the ``.npz`` file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        super().__init__(_open_npz_array(self.path), source=str(self.path))

    def __getstate__(self) -> dict:
        # Workers map the file themselves instead of receiving a pickled copy of every image.
        return {**self.__dict__, "array": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.array = _open_npz_array(self.path)


def as_image_dataset(
    source: ImageSource, size: tuple[int, int] | None = None, resize: bool = False
) -> ImageDataset:
    """Opens a set of images.

    Args:
        source: a folder of PNG/JPEG images, an ADM-style ``.npz``, a uint8 array (N, H, W, 3) or
            an ``ImageDataset``.
        size: the (height, width) the images must have; ``None`` takes the first image's.
        resize: resize and center-crop images whose size differs from ``size`` instead of raising.
    """
    if isinstance(source, ImageDataset):
        dataset = source
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        dataset = ArrayImageDataset(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            dataset = ScoringImageFolder(path)
        elif path.suffix == ".npz" and path.is_file():
            dataset = NpzImageDataset(path)
        elif not path.exists():
            raise FileNotFoundError(f"{path} does not exist; expected a folder of images or an .npz file")
        else:
            raise ValueError(f"{path} is neither a folder nor an .npz file; expected a folder of images or an .npz")
    else:
        raise TypeError(
            f"cannot read images from a {type(source).__name__}; expected a folder, an .npz path, "
            f"a uint8 array (N, H, W, 3) or an ImageDataset"
        )
    return dataset if size is None else dataset.with_size(size, resize)


def write_adm_npz(images: ImageSource, path: str | os.PathLike) -> Path:
    """Writes images in the layout of ADM's evaluator: ``arr_0``, uint8, N x H x W x 3.

    Streams one image at a time into an uncompressed archive, so 50k samples never sit in memory
    at once, and writes to a temporary name first so an interrupted run leaves no partial file.

    Args:
        images: a folder of images, an ``.npz``, a uint8 array or an ``ImageDataset``; all one size.
        path: the ``.npz`` to write.
    """
    dataset = as_image_dataset(images)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (len(dataset), *dataset.size, 3),
    }
    with atomic_file(path) as partial:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for index in range(len(dataset)):
                    member.write(dataset[index].permute(1, 2, 0).numpy().tobytes())  # (H, W, 3), C order
    return path


def bundled_images(name: str, split: str, image_size: int) -> ArrayImageDataset:
    """A bundled data set's split (``sdt_gen.data.BUNDLED_DATASETS``) as uint8 images at ``image_size``.

    Args:
        name: ``"digits"`` or ``"mnist"``.
        split: ``"all"``, ``"train"`` or ``"val"`` (the held-out part).
        image_size: the side of the images the compared models make.
    """
    from ..data import BUNDLED_DATASETS

    images = BUNDLED_DATASETS[name](split, image_size=image_size).images[:, 0]  # (N, H, W) in [-1, 1]
    grey = ((images.numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return ArrayImageDataset(grey, source=f"the bundled {name} ({split} split)")


def training_subset_images(run_dir: str | os.PathLike) -> ImageDataset:
    """The images a ``train_dit.py --train-size`` run trained on, from its ``train_subset.json``.

    Args:
        run_dir: the run folder (bundled data and ``--data-path`` runs; latents hold no images).
    """
    from ..data import SUBSET_FILE, ImageFolderDataset

    record = json.loads((Path(run_dir) / SUBSET_FILE).read_text())
    if record.get("dataset"):
        everything = bundled_images(record["dataset"], record["split"], record["image_size"])
        return ArrayImageDataset(everything.array[record["indices"]], source=f"{run_dir}'s training subset")
    if record.get("data_path"):
        folder = ImageFolderDataset(record["data_path"], record["image_size"], random_flip=False)
        return ImageFilesDataset([folder.samples[i][0] for i in record["indices"]], source=f"{run_dir}'s training subset")
    raise ValueError(f"{run_dir} trained on pre-extracted latents, which hold no images: pass the folder of images "
                     "they were extracted from")
