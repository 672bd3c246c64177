"""Class-balanced training subsets (train_dit.py --train-size)."""

import pickle
from collections import Counter

import pytest

from sdt_gen.data import BalancedSubset, DigitsDataset, balanced_indices


@pytest.fixture(scope="module")
def digits():
    return DigitsDataset(image_size=8)


def test_every_class_gets_its_share_and_the_seed_alone_decides(digits):
    chosen = balanced_indices(digits.targets, 43, seed=0)
    counts = Counter(digits.targets[i] for i in chosen)
    assert len(chosen) == len(set(chosen)) == 43 and sorted(counts.values()) == [4] * 7 + [5] * 3
    assert balanced_indices(digits.targets, 43, seed=0) == chosen
    assert balanced_indices(digits.targets, 43, seed=1) != chosen
    # A larger subset of another seed is not a superset: each size is its own draw.
    assert Counter(digits.targets[i] for i in balanced_indices(digits.targets, 100, seed=3)) == {c: 10 for c in range(10)}


def test_a_subset_reads_through_to_its_set_and_survives_a_worker(digits):
    subset = BalancedSubset(digits, 20, seed=0)
    assert len(subset) == 20 and subset.id2label == digits.id2label
    assert Counter(subset.targets) == {c: 2 for c in range(10)}
    image, label = subset[0]
    assert label == subset.targets[0] and image.shape == digits[0][0].shape
    copy = pickle.loads(pickle.dumps(subset))  # as DataLoader workers started by spawn receive it
    assert copy.indices == subset.indices and copy.id2label == digits.id2label


def test_sizes_no_balanced_subset_can_have_are_refused_by_name(digits):
    with pytest.raises(ValueError, match="subset of 5 items needs between 10 .* and 1797"):
        balanced_indices(digits.targets, 5, seed=0)
    with pytest.raises(ValueError, match="class 1 has 1 items; a balanced subset of 20 needs 10"):
        balanced_indices([0] * 30 + [1], 20, seed=0)


def test_a_data_path_runs_subset_reads_back_as_the_images_it_chose(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from sdt_gen.data import SUBSET_FILE, ImageFolderDataset
    from sdt_gen.metrics.datasets import training_subset_images

    for label in ("cat", "dog"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(4):
            value = 20 * i + (0 if label == "cat" else 100)
            Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / "train" / label / f"{i}.png")
    folder = ImageFolderDataset(tmp_path / "train", image_size=8, random_flip=False)
    subset = BalancedSubset(folder, 4, seed=0)
    subset.save_record(tmp_path, data_path=str(tmp_path / "train"), image_size=8)
    assert json.loads((tmp_path / SUBSET_FILE).read_text())["indices"] == subset.indices

    images = training_subset_images(tmp_path)
    assert len(images) == 4 and images.size == (8, 8)
    chosen = [folder.samples[i][0] for i in subset.indices]
    for index, path in enumerate(chosen):
        assert images[index][0, 0, 0].item() == np.asarray(Image.open(path))[0, 0, 0]
