"""The bundled digits: shapes, range, labels and the deterministic split."""

import pytest
import torch

from sdt_gen.data import DIGITS_ID2LABEL, DigitsDataset, train_val_split


def test_digits_shapes_range_labels():
    dataset = DigitsDataset()
    assert len(dataset) == 1797
    image, label = dataset[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    assert dataset.images.min() >= -1 and dataset.images.max() <= 1
    assert dataset.images.min() == -1 and dataset.images.max() > 0.9  # the range is used, not squashed
    assert isinstance(label, int) and set(dataset.targets) == set(range(10))
    assert dataset.id2label == {i: str(i) for i in range(10)} == DIGITS_ID2LABEL
    assert dataset.num_classes == 10


def test_digits_three_channels_and_size():
    dataset = DigitsDataset(channels=3, image_size=32)
    image, _ = dataset[5]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[2])


def test_split_is_deterministic_stratified_and_disjoint():
    train, val = DigitsDataset("train"), DigitsDataset("val")
    assert len(train) + len(val) == 1797
    assert 170 <= len(val) <= 190
    assert torch.bincount(torch.tensor(val.targets)).min() >= 17  # every class held out
    again = DigitsDataset("val")
    assert torch.equal(val.images, again.images)

    labels = DigitsDataset().targets
    train_idx, val_idx = train_val_split(labels, 0.1, seed=0)
    assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == 1797
    assert train_val_split(labels, 0.1, seed=1)[1] != val_idx


@pytest.mark.parametrize(
    "kwargs, message",
    [({"split": "test"}, "unknown split 'test'"), ({"channels": 2}, "channels must be 1 or 3, got 2")],
)
def test_digits_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataset(**kwargs)


def test_split_bad_fraction():
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.5"):
        train_val_split([0, 1, 1], 1.5)
