"""The Fréchet distance between Gaussians fitted to features, and classifier-based metrics.

``frechet_distance`` is FID's formula for any feature space. ``classifier_metrics`` applies it in
the feature space of a classifier, next to k-NN precision and recall in the same features and the
conditional accuracy of class-conditional samples: how this project scores generators where
Inception weights do not fit (the bundled digits) or are not available.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg
import scipy.stats
import torch
from torch.utils.data import DataLoader

from .datasets import ImageSource, as_image_dataset
from .manifold import knn_precision_recall

FeaturesAndLogits = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Maps a uint8 image batch (B, 3, H, W) to features (B, D) and class logits (B, num_classes)."""


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Returns the mean (D,) and covariance (D, D) of features, in float64.

    Args:
        features: one feature vector per row, (N, D) with N >= 2.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features have shape {features.shape}; expected (N, D) with at least 2 rows")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2))``, in float64.

    Args:
        mu1: mean of the first Gaussian, (D,).
        sigma1: covariance of the first Gaussian, (D, D).
        mu2: mean of the second Gaussian, (D,).
        sigma2: covariance of the second Gaussian, (D, D).
        eps: added to both diagonals when the matrix square root is not finite.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"the means have shapes {mu1.shape} and {mu2.shape}; expected two vectors of one length")
    dim = len(mu1)
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"the covariances have shapes {sigma1.shape} and {sigma2.shape}; expected ({dim}, {dim}) to match the means"
        )

    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A singular product (fewer samples than dimensions) can defeat sqrtm; moving both
        # covariances off the singularity by eps changes the distance by O(eps).
        offset = np.eye(dim) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Round-off leaves a tiny imaginary part; a large one means the inputs are not covariances.
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3:
            raise ValueError(
                f"sqrt(sigma1 @ sigma2) has an imaginary component of {imaginary:.3g}; expected symmetric "
                f"positive semi-definite covariance matrices"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@torch.no_grad()
def features_and_logits_of(
    features_and_logits: FeaturesAndLogits, images: torch.utils.data.Dataset, batch_size: int, num_workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the classifier over a dataset; returns float32 features (N, D) and logits (N, C) on the CPU.

    Args:
        features_and_logits: the classifier callable.
        images: a dataset of uint8 images (3, H, W).
        batch_size: images per call.
        num_workers: DataLoader workers decoding images.
    """
    features, logits = [], []
    for batch in DataLoader(images, batch_size=batch_size, num_workers=num_workers):
        out = features_and_logits(batch)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"features_and_logits returned a {type(out).__name__}; expected a (features, logits) tuple")
        batch_features, batch_logits = out
        shapes_ok = batch_features.ndim == 2 and batch_logits.ndim == 2
        if not (shapes_ok and len(batch_features) == len(batch_logits) == len(batch)):
            raise ValueError(
                f"features_and_logits returned features {tuple(batch_features.shape)} and logits "
                f"{tuple(batch_logits.shape)} for {len(batch)} images; expected (B, D) and (B, num_classes)"
            )
        features.append(batch_features.float().cpu())
        logits.append(batch_logits.float().cpu())
    return torch.cat(features), torch.cat(logits)


def classifier_metrics(
    features_and_logits: FeaturesAndLogits,
    samples: ImageSource,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    reference: ImageSource | None = None,
    batch_size: int = 64,
    resize: bool = False,
    num_workers: int = 0,
    reference_features: torch.Tensor | None = None,
    neighbourhood: int = 3,
) -> dict[str, float]:
    """Conditional accuracy of class-conditional samples; Fréchet distance, precision, recall in a classifier's features.

    Returns ``classifier_accuracy``, the share of samples the classifier assigns to their
    conditioning label, and, when a reference is given, ``classifier_frechet_distance`` between
    the samples' and the reference's features and ``classifier_precision`` / ``classifier_recall``
    (``knn_precision_recall`` with ``neighbourhood`` neighbours).

    Args:
        features_and_logits: any classifier as a callable from a uint8 batch (B, 3, H, W) to
            ``(features (B, D), logits (B, num_classes))``; it moves the batch to its device and
            applies its own preprocessing.
        samples: the generated images (folder, ``.npz``, uint8 array or ``ImageDataset``).
        labels: the conditioning label of each sample, in the samples' order (for a folder:
            ``ScoringImageFolder(folder).files``).
        reference: real images, or ``None`` for the accuracy alone.
        batch_size: images per classifier call.
        resize: resize and center-crop reference images of another size than the samples.
        num_workers: DataLoader workers decoding images.
        reference_features: the reference's features, computed once with ``features_and_logits_of``
            for many calls; instead of ``reference``.
        neighbourhood: k of the precision / recall manifolds.
    """
    if reference is not None and reference_features is not None:
        raise ValueError("pass reference images or reference_features, not both")
    samples = as_image_dataset(samples)
    sample_features, logits = features_and_logits_of(features_and_logits, samples, batch_size, num_workers)
    if reference is not None:
        reference = as_image_dataset(reference, size=samples.size, resize=resize)
        reference_features, _ = features_and_logits_of(features_and_logits, reference, batch_size, num_workers)
    return feature_metrics(sample_features, logits, labels, reference_features, neighbourhood)


def feature_metrics(
    sample_features: torch.Tensor,
    logits: torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    reference_features: torch.Tensor | None = None,
    neighbourhood: int = 3,
) -> dict[str, float]:
    """``classifier_metrics`` from features already computed (``features_and_logits_of``).

    Args:
        sample_features: the samples' features ``(N, D)``.
        logits: the samples' class logits ``(N, num_classes)``.
        labels: the conditioning label of each sample ``(N,)``.
        reference_features: the reference's features ``(M, D)``, or ``None`` for the accuracy alone.
        neighbourhood: k of the precision / recall manifolds.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if labels.shape != (len(sample_features),):
        raise ValueError(
            f"got labels of shape {tuple(labels.shape)} for {len(sample_features)} samples; expected one each"
        )
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"labels range over [{labels.min()}, {labels.max()}] but the classifier has {logits.shape[1]} classes; "
            f"expected labels in [0, {logits.shape[1] - 1}]"
        )
    out = {"classifier_accuracy": (logits.argmax(dim=1) == labels).double().mean().item()}
    if reference_features is not None:
        out["classifier_frechet_distance"] = frechet_distance(
            *feature_statistics(sample_features), *feature_statistics(reference_features)
        )
        manifold = knn_precision_recall(reference_features, sample_features, k=neighbourhood)
        out["classifier_precision"], out["classifier_recall"] = manifold["precision"], manifold["recall"]
    return out


def frechet_bootstrap(
    sample_features: torch.Tensor | np.ndarray,
    reference_features: torch.Tensor | np.ndarray,
    replicates: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """The Fréchet distance's uncertainty from the finite sample set: a bootstrap over the samples.

    The samples are redrawn with replacement ``replicates`` times (the reference stays fixed) and the distance
    recomputed. With the reference's covariance ``S_r`` fixed, ``tr sqrt(S S_r)`` is the sum of the square roots of
    the eigenvalues of the symmetric ``S_r^(1/2) S S_r^(1/2)``, so each replicate costs one symmetric eigensolve.

    Args:
        sample_features: ``(N, D)``.
        reference_features: ``(M, D)``.
        replicates: bootstrap draws.
        seed: seed of the draws.
        confidence: coverage of the interval.

    Returns:
        ``fd`` (the distance of the samples as drawn), ``std`` (the bootstrap standard error), ``low`` and ``high``
        (``fd -/+ z * std``, the normal interval: resampling with replacement repeats samples, which inflates the
        distance, so the replicates' percentiles sit above ``fd`` and would not cover it), ``bias`` (mean replicate
        minus ``fd``) and ``replicates``.
    """
    samples = np.asarray(torch.as_tensor(sample_features).double().cpu())
    mu_ref, sigma_ref = feature_statistics(reference_features)
    eigenvalues, vectors = np.linalg.eigh(sigma_ref)
    root_ref = (vectors * np.sqrt(eigenvalues.clip(min=0))) @ vectors.T  # S_r^(1/2)

    def distance(features: np.ndarray) -> float:
        mu, sigma = feature_statistics(features)
        cross = np.linalg.eigvalsh(root_ref @ sigma @ root_ref).clip(min=0)
        diff = mu - mu_ref
        return float(diff @ diff + np.trace(sigma) + np.trace(sigma_ref) - 2 * np.sqrt(cross).sum())

    rng = np.random.default_rng(seed)
    fd = distance(samples)
    values = np.array([distance(samples[rng.integers(0, len(samples), len(samples))]) for _ in range(replicates)])
    half = float(scipy.stats.norm.ppf(0.5 + confidence / 2) * values.std(ddof=1))
    return {
        "fd": fd, "std": float(values.std(ddof=1)), "low": fd - half, "high": fd + half,
        "bias": float(values.mean() - fd), "replicates": replicates,
    }
