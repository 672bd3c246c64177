"""sdt-gen: the Spatial Decay Transformer for class-conditional generation and classification."""

from .models import SDT_PRESETS, SDTTransformer2DModel, SDTTransformer2DModelOutput

__all__ = ["SDT_PRESETS", "SDTTransformer2DModel", "SDTTransformer2DModelOutput"]
