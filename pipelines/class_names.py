"""Class names of a class-conditional pipeline: ids by name, names by id, and label validation."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral

import numpy as np
import torch

ClassLabels = int | str | Sequence[int | str] | torch.Tensor | np.ndarray
"""What ``SDTPipeline`` takes as class labels: one id or name, (nested) sequences of them, or tensors or arrays of ids."""


def label_slug(name: str) -> str:
    """A class name as a file-name part: lower case, runs of other characters as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "class"


class ClassNames:
    """The class names of a model with ``num_classes`` classes, looked up both ways.

    Several names of one class are separated by commas, as in ImageNet's class list; each one
    finds the class, case-insensitively.

    Args:
        id2label: class names by id (int or JSON string keys), or ``None`` for a model without names.
        num_classes: the model's class count; every id must lie in ``0..num_classes-1``.
    """

    def __init__(self, id2label: Mapping | None, num_classes: int):
        self.num_classes = num_classes
        self.id2label: dict[int, str] = {}
        for key, name in (id2label or {}).items():
            class_id = int(key)
            if not 0 <= class_id < num_classes:
                raise ValueError(f"id2label has class id {class_id}, outside the model's 0..{num_classes - 1}")
            self.id2label[class_id] = str(name)
        self.id2label = dict(sorted(self.id2label.items()))
        self._has_names = id2label is not None
        self._index: dict[str, list[int]] = {}
        for class_id, label in self.id2label.items():
            names = {label.strip().lower()} | {name.strip().lower() for name in label.split(",")}
            for name in names - {""}:
                self._index.setdefault(name, []).append(class_id)

    def to_json(self) -> dict[str, str] | None:
        """``id2label`` with string keys (as JSON has them), or ``None`` when there are no names."""
        return {str(k): v for k, v in self.id2label.items()} if self._has_names else None

    @property
    def labels(self) -> dict[str, int]:
        """Lower-case class name (each comma-separated synonym) to id, as ``DiTPipeline.labels``.

        Names shared by several classes (ImageNet has a few, e.g. "crane") are left out: use the id.
        """
        return {name: ids[0] for name, ids in sorted(self._index.items()) if len(ids) == 1}

    def name(self, class_id: int) -> str:
        """The first name of class ``class_id``, or the id as text when it has none."""
        label = self.id2label.get(int(class_id))
        return label.split(",")[0].strip() if label else str(class_id)

    def ids(self, labels: ClassLabels) -> list[int]:
        """Map class ids and names (case-insensitive, any comma-separated synonym) to validated ids, one per image.

        Takes what ``DiTPipeline`` takes, with its meaning: a list of ids, nested lists and integer tensors of
        any shape, flattened row-major (its ``torch.tensor(class_labels).reshape(-1)``); names through its
        ``get_label_ids``. Also one id, one name, lists mixing ids and names, and NumPy arrays.

        Raises:
            ValueError: an id outside ``0..num_classes-1``; an unknown or ambiguous name (suggesting the closest
                known names).
            TypeError: ``labels`` or one of its entries is neither a class id nor a class name.
        """
        if isinstance(labels, (torch.Tensor, np.ndarray)):
            labels = labels.reshape(-1).tolist()
        elif isinstance(labels, (str, Integral)):
            labels = [labels]
        elif not isinstance(labels, Iterable):
            raise TypeError(
                "class_labels must be a class id, a class name, a list of them (nested lists are flattened) or a "
                f"tensor of ids, got {labels!r} of type {type(labels).__name__}"
            )
        ids = []
        for label in labels:
            if isinstance(label, (list, tuple)) or (isinstance(label, (torch.Tensor, np.ndarray)) and label.ndim > 0):
                ids += self.ids(label)
            else:
                ids.append(self._id(label))
        return ids

    def _id(self, label) -> int:
        if isinstance(label, (torch.Tensor, np.ndarray)) and label.ndim == 0:
            label = label.item()  # [torch.tensor(3), 5] is a list of ids, as torch.tensor() reads it
        if isinstance(label, str) and label.strip().isdigit() and label.strip().lower() not in self._index:
            label = int(label)
        if isinstance(label, Integral) and not isinstance(label, (bool, np.bool_)):
            class_id = int(label)
            if not 0 <= class_id < self.num_classes:
                raise ValueError(
                    f"class id {class_id} is out of range: this model has classes 0..{self.num_classes - 1} "
                    f"(for unconditional samples use guidance_scale=0)"
                )
            return class_id
        if isinstance(label, str):
            return self.lookup(label)
        raise TypeError(
            f"class label {label!r} of type {type(label).__name__} is neither a class id (int) nor a class name (str)"
        )

    def lookup(self, name: str) -> int:
        """The id of class ``name`` (any of its comma-separated names, case-insensitive)."""
        key = name.strip().lower()
        if not self._index:
            raise ValueError(f"class name {name!r} given, but this pipeline has no id2label: pass class ids")
        ids = self._index.get(key)
        if ids is None:
            close = difflib.get_close_matches(key, list(self._index), n=5, cutoff=0.5)
            if close:
                hint = f"closest names: {', '.join(repr(c) for c in close)}"
            else:  # nothing close (digit names for a misspelt word): say what there is
                names = [self.id2label[i] for i in sorted(self.id2label)]
                hint = f"this pipeline's classes are {', '.join(repr(n) for n in names[:12])}" + (
                    f" and {len(names) - 12} more" if len(names) > 12 else "")
            raise ValueError(f"unknown class name {name!r}; {hint}")
        if len(ids) > 1:
            choices = ", ".join(f"{i} ({self.id2label[i]})" for i in ids)
            raise ValueError(f"class name {name!r} is ambiguous: it names classes {choices}; pass the id")
        return ids[0]


__all__ = ["ClassLabels", "ClassNames", "label_slug"]
