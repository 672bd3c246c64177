"""Fixtures of the metrics tests: no network, a private TORCH_HOME, random-weights extractors, tiny images."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch_fidelity import FeatureExtractorInceptionV3


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory: pytest.TempPathFactory):
    """Makes any internet access fail loudly and points TORCH_HOME (weights, fidelity cache) at an empty folder."""

    def refuse(*args, **kwargs):
        raise OSError("a metrics test tried to reach the network")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address):
        # Local sockets stay usable: DataLoader workers hand tensors over AF_UNIX.
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse()
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse()
        return real_connect_ex(self, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        yield


class _InceptionWithoutLoading(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception with weight loading skipped, so it keeps its random initialisation."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state_dict of torch-fidelity's own Inception class with random weights.

    torch-fidelity loads it through its real code path (``feature_extractor_weights_path``,
    strict ``load_state_dict``), so a key or shape mismatch would fail there.
    """
    folder = tmp_path_factory.mktemp("inception")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    model = _InceptionWithoutLoading("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    # PyTorch's default init shrinks activations to ~1e-8 a hundred layers deep; He init keeps
    # features of order 1, so distances between image sets are not trivially zero.
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = folder / "weights-inception-random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def vgg16_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights state_dict of torchvision's VGG16, the model torch-fidelity's ``vgg16`` extractor loads."""
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in torchvision.models.vgg16().state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    # He-scaled Gaussians, drawn directly: torchvision's own init of the 100M-weight fc layer is slow.
    state_dict = {
        name: torch.randn(shape, generator=generator) * (2 / shape[1:].numel()) ** 0.5
        if len(shape) > 1
        else torch.zeros(shape)
        for name, shape in shapes.items()
    }
    path = tmp_path_factory.mktemp("vgg16") / "vgg16-random.pth"
    torch.save(state_dict, path)
    return path


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
