"""The memorization metric: training copies score about 1, held-out real images a small share, noise 0."""

import numpy as np
import pytest
import torch

from sdt_gen.data import DigitsDataset
from sdt_gen.metrics.memorization import copies_picture, memorization_metrics, search_training_set, two_nearest


def uint8_images(split: str) -> np.ndarray:
    """The bundled digits of ``split`` at 16 px as uint8 ``(N, 16, 16)``, as PNG samples would load."""
    images = DigitsDataset(split, image_size=16).images  # (N, 1, 16, 16) in [-1, 1]
    return ((images[:, 0].numpy() + 1) * 127.5).round().astype(np.uint8)


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    return {"train": uint8_images("train"), "heldout": uint8_images("val")}


@pytest.mark.parametrize("query_chunk, reference_chunk", [(7, 5), (1024, 16384)])
def test_two_nearest_is_the_exact_search(query_chunk, reference_chunk):
    g = torch.Generator().manual_seed(0)
    queries, references = torch.randn(23, 6, generator=g), torch.randn(31, 6, generator=g)
    distances, nearest = two_nearest(queries, references, query_chunk, reference_chunk)
    full = torch.cdist(queries, references).sort(dim=1)
    torch.testing.assert_close(distances, full.values[:, :2])
    assert torch.equal(nearest, full.indices[:, 0])


def test_copies_of_training_images_are_memorized_and_real_held_out_images_are_not(digits):
    rng = np.random.default_rng(0)
    copies = digits["train"][rng.choice(len(digits["train"]), 200, replace=False)]
    # A copy with a little noise on it is still a copy (what a memorizing model draws).
    noisy = np.clip(copies.astype(int) + rng.integers(-8, 9, copies.shape), 0, 255).astype(np.uint8)
    copied = memorization_metrics(noisy, digits["train"], heldout=digits["heldout"])
    assert copied["memorized_fraction"] > 0.95
    assert copied["closer_than_heldout_fraction"] > 0.95

    real = memorization_metrics(digits["heldout"], digits["train"])
    # The held-out digits' own share, the metric's false-positive rate on this data (0.0 when written).
    assert real["memorized_fraction"] < 0.05
    assert copied["heldout_memorized_fraction"] == real["memorized_fraction"]
    assert copied["heldout_nearest_train_median"] == pytest.approx(real["nearest_train_median"])
    assert copied["nearest_train_median"] < 0.2 * real["nearest_train_median"]


def test_noise_is_not_memorized(digits):
    noise = np.random.default_rng(0).integers(0, 256, (100, 16, 16), dtype=np.uint8)
    scores = memorization_metrics(noise, digits["train"], heldout=digits["heldout"])
    assert scores["memorized_fraction"] == 0.0 and scores["closer_than_heldout_fraction"] == 0.0


def test_features_and_images_of_another_size_are_refused_by_name(digits):
    with pytest.raises(ValueError, match=r"differ in size: \{'samples': 1024, 'train': 256\}"):
        memorization_metrics(np.zeros((4, 32, 32), np.uint8), digits["train"])
    with pytest.raises(ValueError, match=r"samples: expected a non-empty batch"):
        memorization_metrics(np.zeros((0, 16, 16), np.uint8), digits["train"])
    with pytest.raises(ValueError, match="at least 2 training images, got 1"):
        memorization_metrics(digits["heldout"], digits["train"][:1])


def test_the_picture_shows_the_most_copy_like_samples_beside_the_training_image_they_copy(digits, tmp_path):
    from PIL import Image

    samples = np.concatenate([digits["heldout"][:6], digits["train"][[5, 9]]])  # two copies at the end
    search = search_training_set(samples, digits["train"])
    assert search.nearest[-2:].tolist() == [5, 9] and (search.copy_ratios()[-2:] == 0).all()
    as_images = lambda a: torch.from_numpy(a)[:, None]  # noqa: E731  (N, 1, H, W) uint8
    path = copies_picture(search, as_images(samples), as_images(digits["train"]), tmp_path / "copies.png", count=3)
    grid = np.asarray(Image.open(path).convert("L"))
    assert grid.shape[0] > grid.shape[1]  # three rows of two
