"""Pictures for humans: sample grids (and, alongside, other plots of the method)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .extras import require

# --------------------------------------------------------------------------------------
#                                    Sample grids
# --------------------------------------------------------------------------------------


def to_uint8_images(
    images: torch.Tensor | np.ndarray | Sequence[Image.Image], value_range: tuple[float, float] = (-1.0, 1.0)
) -> np.ndarray:
    """Bring a batch of images to ``(N, H, W, 3)`` uint8.

    Args:
        images: ``(N, C, H, W)`` tensor or array with ``C`` in {1, 3} (uint8 as is, floats mapped
            from ``value_range`` and clipped), or a list of same-sized PIL images.
        value_range: the float values shown as black and white; ``(-1, 1)`` is the model's range.
    """
    if isinstance(images, Sequence) and images and isinstance(images[0], Image.Image):
        return np.stack([np.asarray(image.convert("RGB")) for image in images])
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C in (1, 3), got {array.shape}")
    if array.dtype != np.uint8:
        low, high = value_range
        array = np.clip((array.astype(np.float32) - low) / (high - low), 0.0, 1.0)
        array = np.round(array * 255).astype(np.uint8)
    array = array.transpose(0, 2, 3, 1)  # (N, H, W, C)
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def make_grid_png(
    images: torch.Tensor | np.ndarray | Sequence[Image.Image],
    nrow: int,
    path: str | os.PathLike | None = None,
    row_labels: Sequence[str] | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    scale: int | None = None,
    padding: int = 2,
) -> Image.Image:
    """Tile images into a grid, ``nrow`` per row, with an optional label left of each row; save as PNG.

    Args:
        images: ``(N, C, H, W)`` uint8 or float tensor/array, or a list of PIL images (see ``to_uint8_images``).
        nrow: images per grid row (torchvision's convention).
        path: where to write the PNG (parent folders are created); ``None`` only returns the image.
        row_labels: one text per grid row, e.g. the class name of the samples in that row.
        value_range: float values mapped to black and white.
        scale: integer nearest-neighbour magnification; by default small images (e.g. 16 px digits)
            are enlarged to about 64 px so they can be seen, larger ones are kept as they are.
        padding: white pixels between and around the images.

    Returns:
        the grid as an RGB PIL image.
    """
    if nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    if scale is not None and scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    tiles = to_uint8_images(images, value_range)  # (N, H, W, 3)
    if len(tiles) == 0:
        raise ValueError("no images to put in the grid")
    scale = scale or max(1, 64 // max(tiles.shape[1:3]))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    num_rows = math.ceil(len(tiles) / nrow)
    if row_labels is not None and len(row_labels) != num_rows:
        raise ValueError(f"got {len(row_labels)} row labels for {num_rows} rows ({len(tiles)} images, {nrow} per row)")

    height, width = tiles.shape[1:3]
    font = ImageFont.load_default(size=max(10, min(height // 2, 24)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = 0
    if row_labels:
        label_width = max(int(measure.textlength(str(label), font=font)) for label in row_labels) + 2 * padding

    grid = Image.new(
        "RGB",
        (label_width + nrow * (width + padding) + padding, num_rows * (height + padding) + padding),
        color="white",
    )
    draw = ImageDraw.Draw(grid)
    for i, tile in enumerate(tiles):
        row, col = divmod(i, nrow)
        corner = (label_width + padding + col * (width + padding), padding + row * (height + padding))
        grid.paste(Image.fromarray(tile), corner)
    for row, label in enumerate(row_labels or []):
        center_y = padding + row * (height + padding) + height // 2
        draw.text((padding, center_y), str(label), fill="black", font=font, anchor="lm")

    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        grid.save(path, format="PNG")
    return grid


# --------------------------------------------------------------------------------------
#                                    Decay maps
# --------------------------------------------------------------------------------------


def save_decay_maps(
    maps: torch.Tensor,
    path: str | os.PathLike | None = None,
    sample: int = 0,
    colormap: str = "viridis",
    scale: int | None = None,
) -> Image.Image:
    """Draw each layer's and head's decay over the token grid as a PNG: one row per layer, one column per head.

    Args:
        maps: ``(depth, B, H, h, w)`` decay values in (0, 1], e.g. ``SDTTransformer2DModel.decay_maps(...)``.
        path: where to write the PNG; ``None`` only returns the image.
        sample: which batch element to draw.
        colormap: a matplotlib colormap name; 0 and 1 map to its ends, so layers compare by colour.
        scale: nearest-neighbour magnification (default: token grids enlarged to about 96 px).
    """
    colormaps = require("matplotlib", "decay-map pictures", extra="plots").colormaps

    if maps.dim() != 5:
        raise ValueError(f"maps must be (depth, B, H, h, w), got shape {tuple(maps.shape)}")
    depth, _, heads, height, width = maps.shape
    values = maps[:, sample].detach().float().clamp(0, 1).cpu().numpy().reshape(depth * heads, height, width)
    rgb = (colormaps[colormap](values)[..., :3] * 255).round().astype(np.uint8)  # (depth*H, h, w, 3)
    scale = scale or max(1, 96 // max(height, width))
    return make_grid_png(
        rgb.transpose(0, 3, 1, 2), heads, path, [f"layer {i}" for i in range(depth)], value_range=(0, 255), scale=scale
    )
