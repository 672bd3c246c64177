"""Assembled networks built from ``sdt_gen.layers``."""

from .transformer_sdt import SDT_PRESETS, SDTTransformer2DModel, SDTTransformer2DModelOutput

__all__ = ["SDT_PRESETS", "SDTTransformer2DModel", "SDTTransformer2DModelOutput"]
