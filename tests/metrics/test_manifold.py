"""k-NN precision and recall against a direct numpy computation of the definition."""

import numpy as np
import pytest

from sdt_gen.metrics import knn_precision_recall


def brute_force(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    def share(points, centres, r):
        d = np.linalg.norm(points[:, None] - centres[None], axis=-1)
        return (d <= r[None]).any(axis=1).mean()

    return share(fake, real, radii(real)), share(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_matches_the_definition(k):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 5))
    fake = rng.normal(loc=0.7, scale=0.6, size=(45, 5))  # narrower and shifted: precision != recall
    out = knn_precision_recall(real, fake, k=k, chunk=16)
    precision, recall = brute_force(real, fake, k)
    assert (out["precision"], out["recall"]) == pytest.approx((precision, recall))
    assert out["precision"] != out["recall"]


def test_identical_sets_score_one_and_far_sets_zero():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(30, 3))
    assert knn_precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0}
    assert knn_precision_recall(real, real + 100.0) == {"precision": 0.0, "recall": 0.0}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="expected \\(N, D\\) and \\(M, D\\)"):
        knn_precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="need more than 3"):
        knn_precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
