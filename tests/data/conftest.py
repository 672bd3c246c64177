"""Synthetic image class folders for the data tests."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def make_image_folder(tmp_path):
    """Factory: ``make_image_folder(name)`` writes ``tmp_path/name/<class>/<i>.png`` random RGB images."""

    def make(name="images", classes=("cat", "dog"), per_class=5, size=(24, 20), seed=0):
        rng = np.random.default_rng(seed)
        root = tmp_path / name
        for class_name in classes:
            (root / class_name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / class_name / f"{i}.png")
        return root

    return make


@pytest.fixture
def image_folder(make_image_folder):
    return make_image_folder()
