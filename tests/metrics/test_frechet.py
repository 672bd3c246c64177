"""Fréchet distance against independent computations, and the classifier-based metrics on a toy classifier."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from sdt_gen.metrics import classifier_metrics, feature_statistics, frechet_distance


def _gaussian_features(rng: np.random.Generator, mean: np.ndarray, cov: np.ndarray, count: int) -> np.ndarray:
    return rng.multivariate_normal(mean, cov, size=count)


def test_frechet_distance_matches_numpy_scipy_on_gaussian_features():
    rng = np.random.default_rng(0)
    dim = 16
    a = rng.normal(size=(dim, dim))
    features1 = _gaussian_features(rng, np.zeros(dim), a @ a.T / dim + np.eye(dim), 2000)
    features2 = _gaussian_features(rng, np.full(dim, 0.5), np.diag(rng.uniform(0.5, 2.0, dim)), 3000)

    mu1, sigma1 = features1.mean(0), np.cov(features1, rowvar=False)
    mu2, sigma2 = features2.mean(0), np.cov(features2, rowvar=False)
    expected = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2 * np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2).real)
    )
    got = frechet_distance(*feature_statistics(features1), *feature_statistics(torch.from_numpy(features2)))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_known_statistics_matches_the_closed_form():
    # For diagonal covariances the distance is |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_identical_statistics_is_zero():
    rng = np.random.default_rng(2)
    mu, sigma = feature_statistics(rng.normal(size=(500, 32)))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite():
    rng = np.random.default_rng(3)
    stats1 = feature_statistics(rng.normal(size=(5, 64)))
    stats2 = feature_statistics(rng.normal(size=(5, 64)) + 1.0)
    assert np.isfinite(frechet_distance(*stats1, *stats2))


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(3,\) and \(4,\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        feature_statistics(np.zeros((1, 3)))


NUM_CLASSES = 10


def _class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images whose red level encodes the class (20 * label), with noise elsewhere."""
    images = rng.integers(0, 256, (len(labels), 16, 16, 3), dtype=np.uint8)
    images[..., 0] = (20 * labels + 10)[:, None, None]
    return images


def _toy_classifier(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features: per-channel means; logits: closeness of the red level to each class's."""
    assert images.dtype == torch.uint8 and images.shape[1] == 3
    features = images.float().mean(dim=(2, 3))  # (B, 3)
    centers = 20 * torch.arange(NUM_CLASSES) + 10
    logits = -(features[:, :1] - centers).abs()  # (B, NUM_CLASSES)
    return features, logits


def test_classifier_accuracy_is_one_on_true_labels_and_chance_on_shuffled():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(NUM_CLASSES), 30)
    samples = _class_images(labels, rng)

    assert classifier_metrics(_toy_classifier, samples, labels)["classifier_accuracy"] == 1.0
    shuffled = classifier_metrics(_toy_classifier, samples, rng.permutation(labels), batch_size=64)
    assert abs(shuffled["classifier_accuracy"] - 1 / NUM_CLASSES) < 0.07


def test_classifier_frechet_distance_is_the_distance_of_the_classifier_features():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, NUM_CLASSES, 200)
    samples, reference = _class_images(labels, rng), _class_images(rng.integers(0, 5, 150), rng)

    out = classifier_metrics(_toy_classifier, samples, labels, reference, batch_size=32)
    expected = frechet_distance(
        *feature_statistics(_toy_classifier(torch.from_numpy(samples).permute(0, 3, 1, 2))[0]),
        *feature_statistics(_toy_classifier(torch.from_numpy(reference).permute(0, 3, 1, 2))[0]),
    )
    assert out["classifier_frechet_distance"] == pytest.approx(expected, rel=1e-6)
    same = classifier_metrics(_toy_classifier, samples, labels, samples)["classifier_frechet_distance"]
    assert abs(same) < 1e-6 < out["classifier_frechet_distance"]


def test_classifier_metrics_reject_bad_labels_and_outputs():
    images = _class_images(np.arange(4), np.random.default_rng(0))
    with pytest.raises(ValueError, match="labels of shape \\(3,\\) for 4 samples"):
        classifier_metrics(_toy_classifier, images, [0, 1, 2])
    with pytest.raises(ValueError, match="10 classes"):
        classifier_metrics(_toy_classifier, images, [0, 1, 2, 10])
    with pytest.raises(TypeError, match="expected a \\(features, logits\\) tuple"):
        classifier_metrics(lambda batch: batch.float(), images, [0, 1, 2, 3])
