"""Fixtures of the metrics tests: no network, a private TORCH_HOME, random-weights extractors, tiny images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import random_inception_weights, random_vgg16_weights, refuse_network


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory: pytest.TempPathFactory):
    """Makes any internet access fail loudly and points TORCH_HOME (weights, fidelity cache) at an empty folder."""
    with pytest.MonkeyPatch.context() as patch:
        refuse_network(patch)
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        yield


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch-fidelity's Inception with random weights (``helpers.random_inception_weights``)."""
    return random_inception_weights(tmp_path_factory.mktemp("inception") / "weights-inception-random.pth")


@pytest.fixture(scope="session")
def vgg16_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's VGG16 with random weights, the model torch-fidelity's ``vgg16`` extractor loads."""
    return random_vgg16_weights(tmp_path_factory.mktemp("vgg16") / "vgg16-random.pth")


def _random_images(count: int, size: int, seed: int, brightness: float = 0.0) -> np.ndarray:
    """Smooth random uint8 images (count, size, size, 3): upsampled 4x4 noise, shifted by ``brightness``.

    Args:
        count: number of images.
        size: height and width.
        seed: NumPy seed.
        brightness: added to every pixel before clipping, to make sets that differ.
    """
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (count, 3, 4, 4)))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") + brightness
    return fine.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="session")
def make_image_array() -> Callable[..., np.ndarray]:
    """Returns the factory of smooth random uint8 images (count, size, size, 3)."""
    return _random_images


@pytest.fixture(scope="session")
def make_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Returns a factory writing random images to a new folder as PNGs (optionally one gray PNG, one JPEG)."""

    def make(count: int, size: int = 32, seed: int = 0, brightness: float = 0.0, mixed: bool = False) -> Path:
        folder = tmp_path_factory.mktemp("images")
        for index, image in enumerate(_random_images(count, size, seed, brightness)):
            picture = Image.fromarray(image)
            if mixed and index == 0:
                picture.convert("L").save(folder / f"{index:03d}.png")
            elif mixed and index == 1:
                picture.save(folder / f"{index:03d}.jpg", quality=95)
            else:
                picture.save(folder / f"{index:03d}.png")
        return folder

    return make


@pytest.fixture(scope="session")
def samples_dir(make_image_folder: Callable[..., Path]) -> Path:
    """Four 32x32 PNG "samples"."""
    return make_image_folder(4, seed=1)


@pytest.fixture(scope="session")
def reference_dir(make_image_folder: Callable[..., Path]) -> Path:
    """Five brighter 32x32 "reference" images, one grayscale PNG and one JPEG among them."""
    return make_image_folder(5, seed=2, brightness=60.0, mixed=True)
