"""Class-balanced training subsets: the same ``size`` images for every run that asks with the same seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ..files import write_json_atomically

SUBSET_FILE = "train_subset.json"  # in a run folder: the data, size, seed and indices of its subset


def balanced_indices(targets: Sequence[int], size: int, seed: int) -> list[int]:
    """``size`` indices into a labelled set, ``size // C`` of each of its C classes (the first ``size % C``
    classes of a seeded order get one more), each class's drawn at random with ``seed``; sorted.

    Args:
        targets: the class of every item.
        size: how many items, at least one per class.
        seed: the subset's own seed, apart from the training seed, so every run of a study shares it.
    """
    labels = torch.as_tensor(list(targets))
    classes = labels.unique().tolist()
    if not len(classes) <= size <= len(labels):
        raise ValueError(f"a class-balanced subset of {size} items needs between {len(classes)} (one per class) and "
                         f"{len(labels)} (the whole set)")
    g = torch.Generator().manual_seed(seed)
    extra = set(torch.tensor(classes)[torch.randperm(len(classes), generator=g)[: size % len(classes)]].tolist())
    chosen = []
    for label in classes:
        members = (labels == label).nonzero().flatten()
        wanted = size // len(classes) + (label in extra)
        if len(members) < wanted:
            raise ValueError(f"class {label} has {len(members)} items; a balanced subset of {size} needs {wanted}")
        chosen += members[torch.randperm(len(members), generator=g)[:wanted]].tolist()
    return sorted(chosen)


class BalancedSubset(Subset):
    """A class-balanced subset of a labelled training set (``balanced_indices``); everything else of the set
    (``id2label``, ``meta``, ...) is read through to it.

    Args:
        dataset: a set with ``targets``, the class of every item.
        size: how many items.
        seed: the subset's seed.
    """

    def __init__(self, dataset: Dataset, size: int, seed: int) -> None:
        super().__init__(dataset, balanced_indices(dataset.targets, size, seed))
        self.targets = [dataset.targets[i] for i in self.indices]
        self.seed = seed

    def save_record(self, run_dir: str | os.PathLike, **source: Any) -> Path:
        """Writes ``run_dir/train_subset.json``: ``source`` (where the full set comes from: ``dataset`` and
        ``split``, or ``data_path``; ``image_size``), the size, the seed and the items chosen."""
        path = Path(run_dir) / SUBSET_FILE
        write_json_atomically(path, {**source, "size": len(self), "seed": self.seed, "indices": self.indices})
        return path

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a DataLoader worker): no read-through
            raise AttributeError(name)
        return getattr(self.dataset, name)
