"""Precision and recall of generated samples through k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019).

Each set's manifold is the union of balls around its points, each ball reaching the point's k-th
nearest neighbour within the set. Precision is the share of generated points inside the real
manifold (are samples realistic?), recall the share of real points inside the generated manifold
(is the data's variety covered?). The same definition as torch-fidelity's ``prc`` (k = 3), in any
feature space.
"""

from __future__ import annotations

import numpy as np
import torch


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point of the same set: ``(N,)``."""
    radii = []
    for start in range(0, len(features), chunk):
        dist = torch.cdist(features[start : start + chunk], features)  # (chunk, N)
        radii.append(dist.kthvalue(k + 1, dim=1).values)  # the 1st nearest is the point itself
    return torch.cat(radii)


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Share of ``points`` within ``radii[j]`` of some ``centres[j]``."""
    inside = []
    for start in range(0, len(points), chunk):
        dist = torch.cdist(points[start : start + chunk], centres)  # (chunk, M)
        inside.append((dist <= radii[None]).any(dim=1))
    return torch.cat(inside).double().mean().item()


def knn_precision_recall(
    real_features: np.ndarray | torch.Tensor,
    fake_features: np.ndarray | torch.Tensor,
    k: int = 3,
    chunk: int = 1024,
) -> dict[str, float]:
    """``{"precision": ..., "recall": ...}`` of generated features against real ones.

    Args:
        real_features: ``(N, D)`` features of real images.
        fake_features: ``(M, D)`` features of generated images.
        k: neighbourhood size of the manifold balls (torch-fidelity's default: 3).
        chunk: rows per distance block, bounding memory at ``chunk * max(N, M)`` floats.
    """
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features have shapes {tuple(real.shape)} and {tuple(fake.shape)}; expected (N, D) and (M, D)")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"k = {k} neighbours need more than {k} real and fake points; got {len(real)} and {len(fake)}")
    precision = _share_inside(fake, real, _kth_neighbour_radii(real, k, chunk), chunk)
    recall = _share_inside(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk)
    return {"precision": precision, "recall": recall}
