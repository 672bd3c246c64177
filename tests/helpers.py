"""Helpers shared by the test modules (on the path through pytest's ``pythonpath = ["tests"]``)."""

import torch


def perturbed(model, scale=0.05, seed=0):
    """Random offsets on every parameter, so zero-initialised paths (adaLN-Zero, CAG W_g, output layers) are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model
