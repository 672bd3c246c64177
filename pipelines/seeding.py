"""The seed of every image: image ``i`` of a run has its own generator, so batching and process count never
change what it is."""

from __future__ import annotations

SEED_STRIDE = 1_000_003  # a prime larger than any sample count: seeds of different base seeds never meet


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s own generator, ``seed * 1_000_003 + index``: sample.py and eval_fid.py
    give image ``index`` of a run with base ``seed`` the same noise, whatever the batching or process count.

    Args:
        seed: the base seed of the run (>= 0).
        index: the image index (< 1_000_003).
    """
    return seed * SEED_STRIDE + index


__all__ = ["SEED_STRIDE", "image_seed"]
