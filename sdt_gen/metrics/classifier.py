"""A transformers image classifier as the ``features_and_logits`` callable of ``classifier_metrics``."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class TransformersImageClassifier:
    """A transformers image classifier folder as a ``features_and_logits`` callable of ``classifier_metrics``.

    Loads the model with ``AutoModelForImageClassification`` (``import sdt_gen`` has registered the
    ``sdt`` model type) and the image processor saved beside it with ``AutoImageProcessor``. The
    features are the pooled pre-logits, the classifier head's input: through
    ``forward_features`` / ``forward_head(pre_logits=True)`` for timm-style models (the SDT
    classifiers), else captured at the input of the head module (``model.classifier``, as ViT,
    ConvNeXt, Swin, ResNet name it), else the mean of the last hidden state's tokens.

    Args:
        path: the classifier folder (``config.json``, weights, ``preprocessor_config.json``).
        device: where the classifier runs.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        import sdt_gen  # noqa: F401  (registers the "sdt" model type with transformers)
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"classifier folder {folder} does not exist")
        for name, hint in (
            ("config.json", "save the model with save_pretrained"),
            ("preprocessor_config.json", "save its image processor beside it (sdt_gen.save_classifier does both)"),
        ):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"classifier folder {folder} has no {name}: {hint}")
        self.path = folder
        self.device = torch.device(device)
        self.model = AutoModelForImageClassification.from_pretrained(folder).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(folder)
        config = self.model.config
        self.num_labels = int(config.num_labels)
        self.id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, 3, H, W) to pooled pre-logits (B, F) and logits (B, num_labels)."""
        model = self.model
        pixel_values = self.processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(self.device, model.dtype)  # (B, C, h, w), the classifier's size
        if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
            tokens = model.forward_features(pixel_values)
            return model.forward_head(tokens, pre_logits=True).flatten(1), model.forward_head(tokens)
        head = getattr(model, "classifier", None)
        if isinstance(head, torch.nn.Module):
            captured = []
            handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
            try:
                logits = model(pixel_values=pixel_values).logits
            finally:
                handle.remove()
            return captured[-1].flatten(1), logits  # (B, F), (B, num_labels)
        out = model(pixel_values=pixel_values, output_hidden_states=True)
        last = out.hidden_states[-1]
        features = last.mean(dim=1) if last.ndim == 3 else last.flatten(2).mean(dim=2)  # tokens or (B, C, H, W)
        return features, out.logits
