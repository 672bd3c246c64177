"""Sample grid PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdt_gen.visualize import make_grid_png, to_uint8_images


def test_grid_size_without_labels(tmp_path):
    path = tmp_path / "samples" / "grid.png"
    grid = make_grid_png(torch.rand(10, 3, 8, 8) * 2 - 1, nrow=4, path=path, padding=2, scale=1)
    # 4 columns and ceil(10 / 4) = 3 rows of 8x8 tiles with 2-pixel padding around each.
    assert grid.size == (4 * 10 + 2, 3 * 10 + 2)
    with Image.open(path) as saved:
        assert saved.size == grid.size and saved.format == "PNG"


def test_grid_with_row_labels_is_wider_and_scaled(tmp_path):
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    plain = make_grid_png(images, nrow=3, scale=2)
    labelled = make_grid_png(images, nrow=3, path=tmp_path / "g.png", row_labels=["class 0", "class 1"], scale=2)
    assert plain.size == (3 * 34 + 2, 2 * 34 + 2)
    assert labelled.size[1] == plain.size[1] and labelled.size[0] > plain.size[0] + 20
    # The label margin holds dark text pixels.
    margin = np.asarray(labelled)[:, : labelled.size[0] - plain.size[0]]
    assert (margin < 100).any()


def test_uint8_conversion():
    floats = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 2, 2)
    assert to_uint8_images(floats)[0, :, :, 0].tolist() == [[0, 128], [255, 255]]
    assert to_uint8_images(floats, value_range=(0, 1))[0, :, :, 1].tolist() == [[0, 0], [255, 255]]
    pil = [Image.new("L", (5, 4), 7)]
    assert to_uint8_images(pil).shape == (1, 4, 5, 3)


def test_grid_errors():
    with pytest.raises(ValueError, match="got 1 row labels for 2 rows"):
        make_grid_png(torch.zeros(4, 3, 4, 4), nrow=2, row_labels=["a"])
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\) with C in \(1, 3\), got \(4, 2, 4, 4\)"):
        make_grid_png(torch.zeros(4, 2, 4, 4), nrow=2)


def test_decay_maps_png_has_one_row_per_layer_and_one_column_per_head(tmp_path):
    from sdt_gen import SDTTransformer2DModel
    from sdt_gen.visualize import save_decay_maps

    model = SDTTransformer2DModel(
        sample_size=16, patch_size=2, in_channels=1, hidden_size=32, depth=3, num_heads=4, num_classes=10,
        attention_backend="sdpa",
    )
    maps = model.decay_maps(torch.randn(1, 1, 16, 16), 10, torch.tensor([3]), query=(4, 4))
    grid = save_decay_maps(maps, tmp_path / "decay.png", scale=4)
    assert (tmp_path / "decay.png").is_file()
    tile = 8 * 4 + 2  # an 8x8 token grid at 4x, plus padding
    assert grid.height == 3 * tile + 2
    assert grid.width > 4 * tile  # four heads and the layer labels
    # The query cell has decay 1, the far corner less: the picture is not flat.
    pixels = np.asarray(grid)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8
