"""Preprocessing and saving of SDT classifiers: the image processor and ``save_classifier``.

``image_processor_for`` builds the transformers image processor a classifier's config implies (resize,
centre crop, the model's normalisation); ``save_classifier`` writes the model and that processor into
one folder that ``transformers.pipeline("image-classification", model=folder)`` reads (after
``import sdt_gen``, which registers the model type).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .configuration_sdt import SDTConfig

if TYPE_CHECKING:
    from transformers import BitImageProcessor

    from .modeling_sdt import SDTForImageClassification


IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]


def default_normalization(config: SDTConfig) -> tuple[list[float], list[float]]:
    """The image mean and std the model expects (per model channel)."""
    if config.image_mean is not None and config.image_std is not None:
        return list(config.image_mean), list(config.image_std)
    if config.is_denoiser_probe or config.num_channels != 3:
        return [0.5] * config.num_channels, [0.5] * config.num_channels  # images in [-1, 1]
    return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


def image_processor_for(config: SDTConfig, crop_pct: float | None = None) -> BitImageProcessor:
    """A transformers image processor for an SDT classifier: RGB, resize, centre crop, normalise.

    Resizes the shorter side to ``image_size / crop_pct`` (bicubic), centre-crops ``image_size`` and
    normalises with the config's mean and std (see ``default_normalization``). A 1-channel model gets
    its grey mean/std repeated over RGB: it averages the three identical channels back to one.

    Args:
        config: the classifier's config.
        crop_pct: crop fraction; None: 0.875 (ImageNet evaluation) for 3-channel models trained from
            scratch, 1.0 (ADM's centre crop) for denoiser probes and 1-channel models.
    """
    from transformers import BitImageProcessor  # imports torchvision: only when asked for

    if config.num_channels not in (1, 3):
        raise ValueError(f"no RGB image processor fits a {config.num_channels}-channel model")
    if crop_pct is None:
        crop_pct = 1.0 if (config.is_denoiser_probe or config.num_channels == 1) else 0.875
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    mean, std = default_normalization(config)
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    height, width = config.image_hw
    return BitImageProcessor(
        size={"shortest_edge": int(round(max(height, width) / crop_pct))},
        crop_size={"height": height, "width": width},
        image_mean=mean,
        image_std=std,
    )


def save_classifier(
    model: SDTForImageClassification,
    path: str | Path,
    image_processor: Any | None = None,
    crop_pct: float | None = None,
) -> Path:
    """Save ``model`` and its image processor in one folder, ready for
    ``pipeline("image-classification", model=path)`` (after ``import sdt_gen``).

    Args:
        model: the classifier.
        path: output folder.
        image_processor: a processor to save instead of ``image_processor_for(model.config, crop_pct)``.
        crop_pct: see ``image_processor_for``.
    """
    path = Path(path)
    model.save_pretrained(path)
    (image_processor or image_processor_for(model.config, crop_pct)).save_pretrained(path)
    return path
