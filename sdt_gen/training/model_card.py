"""Model cards (a folder's ``README.md`` in the Hugging Face format) and the upload of a finished folder.

The card is what the Hub shows for a repository: YAML front matter (``library_name``, tags,
license, datasets) rendered by ``huggingface_hub.ModelCardData``, then the model's config, what it
was trained on and for how long, the numbers the run measured, a sample grid and the lines that
load it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..files import atomic_file, copy_file_atomically

LICENSE = "apache-2.0"
# Hub dataset ids of the data the scripts know by name.
HUB_DATASETS = {"mnist32": "ylecun/mnist", "imagenet": "ILSVRC/imagenet-1k"}


def _card(card_data: ModelCardData, title: str, sections: Mapping[str, str]) -> ModelCard:
    body = "\n\n".join(f"## {heading}\n\n{text.strip()}" for heading, text in sections.items() if text)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n# {title}\n\n{body}\n")


def _config_block(config: Mapping) -> str:
    public = {k: v for k, v in config.items() if not k.startswith("_")}
    return "```json\n" + json.dumps(public, indent=2, sort_keys=True, default=str) + "\n```"


def _metrics_table(metrics: Mapping[str, float]) -> str:
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in metrics.items())
    return f"| metric | value |\n|---|---|\n{rows}" if metrics else ""


def _dataset_ids(data_name: str) -> list[str] | None:
    hub_id = next((v for k, v in HUB_DATASETS.items() if data_name.startswith(k)), None)
    return [hub_id] if hub_id else None


def _attention_line(attention: str | None, switch: str) -> str:
    if attention is None:
        return ""
    return f" Attention backend that ran in training: `{attention}` (a choice of the machine, not saved: {switch})."


def denoiser_card(
    config: Mapping, data_name: str, step: int, metrics: Mapping[str, float], grid: str | None = None,
    attention: str | None = None,
) -> ModelCard:
    """The card of an exported ``SDTPipeline`` folder.

    Args:
        config: the transformer's config.
        data_name: what it was trained on (``"digits"``, ``"mnist32"``, ``"latents32"``, ...).
        step: the training step of the weights.
        metrics: numbers the run measured, e.g. ``{"train loss": 0.03}``.
        grid: file name of a sample grid inside the folder.
        attention: the attention backend that ran in training, e.g. ``"sdpa on cpu (auto)"``.
    """
    decay = config.get("decay_mode", "cag")
    data = ModelCardData(
        library_name="diffusers", license=LICENSE, datasets=_dataset_ids(data_name),
        pipeline_tag="unconditional-image-generation", tags=["sdt-gen", "spatial-decay-transformer", f"decay-{decay}", "class-conditional", "diffusion", "dit"],
    )
    load = (
        "```python\nfrom sdt_gen import SDTPipeline   # pip install sdt-gen\n\n"
        'pipe = SDTPipeline.from_pretrained("REPO_OR_FOLDER")\n'
        "images = pipe(class_labels=[0, 1], guidance_scale=4.0, num_inference_steps=50).images\n```\n\n"
        "Or with diffusers alone (the folder carries a two-line `pipeline_sdt.py` that imports sdt-gen):\n\n"
        "```python\nfrom diffusers import DiffusionPipeline\n\n"
        'pipe = DiffusionPipeline.from_pretrained("REPO_OR_FOLDER", trust_remote_code=True)\n```'
    )
    sections = {
        "Model": (
            f"A class-conditional DiT-style denoiser whose attention carries spatial decay `{decay}` "
            "(`none`: DiT, `fixed`: RMT's Manhattan decay, `cag`: SDT's Context-Aware Gate) and positions "
            f"`{config.get('position_embedding', 'sincos')}` (`sincos`: DiT's absolute table, `rope`: 2D rotary), "
            f"{config.get('depth')} blocks of width {config.get('hidden_size')}, patch {config.get('patch_size')}, "
            f"{config.get('num_classes')} classes. Trained with sdt-gen's `train_dit.py`.\n\n" + _config_block(config)
        ),
        "Training": f"Data: `{data_name}`. Weights: the EMA weights after {step:,} optimizer steps."
        + _attention_line(attention, "`from_pretrained(..., attention_backend=...)` or `set_attention_backend`"),
        "Measured": _metrics_table(metrics),
        "Samples": f"![EMA samples]({grid})" if grid else "",
        "Use": load,
    }
    return _card(data, f"SDT denoiser ({decay}) on {data_name}", sections)


def classifier_card(
    config: Mapping, data_name: str, epochs: int, metrics: Mapping[str, float], attention: str | None = None
) -> ModelCard:
    """The card of a saved ``SDTForImageClassification`` folder (same arguments as ``denoiser_card``)."""
    data = ModelCardData(
        library_name="transformers", license=LICENSE, datasets=_dataset_ids(data_name),
        pipeline_tag="image-classification", tags=["sdt-gen", "spatial-decay-transformer", "image-classification"],
        metrics=["accuracy"] if "top1" in metrics else None,
    )
    load = (
        "```python\nimport sdt_gen   # pip install sdt-gen: registers model type \"sdt\"\n"
        "from transformers import pipeline\n\n"
        'classify = pipeline("image-classification", model="REPO_OR_FOLDER")\n```'
    )
    sections = {
        "Model": (
            f"An SDT image classifier (`{config.get('preset') or config.get('architecture')}`), "
            f"{config.get('num_labels', len(config.get('id2label', {})))} labels. Trained with sdt-gen's "
            "`train_classifier.py`.\n\n" + _config_block(config)
        ),
        "Training": f"Data: `{data_name}`, {epochs} epochs."
        + _attention_line(attention, "`from_pretrained(..., attn_implementation=...)` or `set_attn_implementation`"),
        "Measured": _metrics_table(metrics),
        "Use": load,
    }
    return _card(data, f"SDT classifier on {data_name}", sections)


def save_card(card: ModelCard, folder: str | os.PathLike, images: Mapping[str, Path] | None = None) -> None:
    """Write ``card`` as ``folder/README.md`` and copy ``images`` (``{name: source}``) beside it, each file whole."""
    folder = Path(folder)
    for name, source in (images or {}).items():
        copy_file_atomically(source, folder / name)
    with atomic_file(folder / "README.md") as tmp:
        card.save(tmp)


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, commit_message: str) -> str:
    """Upload a finished folder to the Hub repository ``repo_id`` (created if needed); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(Path(folder)), commit_message=commit_message)
    return f"https://huggingface.co/{repo_id}"


__all__ = ["classifier_card", "denoiser_card", "push_folder_to_hub", "save_card"]
