"""Assembled networks built from ``sdt_gen.layers``."""

from .configuration_sdt import SDT_CLASSIFIER_PRESETS, DerivedKeyError, SDTConfig
from .modeling_sdt import SDTForImageClassification, SDTModel, SDTPreTrainedModel, register_auto_classes
from .processing_sdt import image_processor_for, save_classifier
from .transformer_sdt import SDT_PRESETS, SDTTransformer2DModel, SDTTransformer2DModelOutput

__all__ = [
    "SDT_CLASSIFIER_PRESETS",
    "SDT_PRESETS",
    "DerivedKeyError",
    "SDTConfig",
    "SDTForImageClassification",
    "SDTModel",
    "SDTPreTrainedModel",
    "SDTTransformer2DModel",
    "SDTTransformer2DModelOutput",
    "image_processor_for",
    "register_auto_classes",
    "save_classifier",
]
