"""sdt-gen: the Spatial Decay Transformer for class-conditional generation and classification."""

from .models import (
    SDT_CLASSIFIER_PRESETS,
    SDT_PRESETS,
    SDTConfig,
    SDTForImageClassification,
    SDTModel,
    SDTTransformer2DModel,
    SDTTransformer2DModelOutput,
    image_processor_for,
    save_classifier,
)
from .pipelines import SDTPipeline

__all__ = [
    "SDT_CLASSIFIER_PRESETS",
    "SDT_PRESETS",
    "SDTConfig",
    "SDTForImageClassification",
    "SDTModel",
    "SDTPipeline",
    "SDTTransformer2DModel",
    "SDTTransformer2DModelOutput",
    "image_processor_for",
    "save_classifier",
]
