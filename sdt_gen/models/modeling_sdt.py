"""SDT classifiers as Hugging Face transformers models: ``SDTModel`` and ``SDTForImageClassification``.

Two backbones from the same attention core (``sdt_gen.layers.SpatialDecayAttention``), chosen by
``config.architecture``, each an encoder module: **SDT-H** (``"hierarchical"``, RMT's four-stage layout with SDT
attention, ``modeling_sdt_h.SDTHierarchicalEncoder``) and **isotropic** (``"isotropic"``, ViT-style,
``modeling_sdt_vit.SDTIsotropicEncoder``), whose blocks are plain pre-norm blocks when trained from scratch or, built
by ``SDTForImageClassification.from_denoiser`` (``denoiser_probe.SDTProbeEncoder``), a trained denoiser's own adaLN
blocks with the conditioning fixed, so the features are exactly the denoiser's hidden states.

This file holds what they share: initialisation and the transformers plumbing
(``SDTPreTrainedModel``), the backbone (``SDTModel``: the config's encoder and the pooler), the
classifier (``SDTForImageClassification``), the renaming of checkpoint keys saved before the encoders were
modules, and the auto-class registration: importing ``sdt_gen`` registers model type ``"sdt"`` with
``AutoConfig``, ``AutoModel`` and ``AutoModelForImageClassification``.
``processing_sdt.save_classifier`` writes a folder that
``transformers.pipeline("image-classification", model=folder)`` reads (after ``import sdt_gen``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, PreTrainedModel
from transformers import initialization as init  # skips tensors already loaded from a checkpoint
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from ..layers import (
    ATTENTION_BACKENDS,
    SpatialDecayAttention,
    check_choice,
    recording_attentions,
    resolve_backend,
    rmt_gammas,
    set_attention_backend,
)
from .configuration_sdt import SDTConfig
from .denoiser_probe import SDTProbeEncoder, load_denoiser, probe_config
from .modeling_sdt_h import SDTHierarchicalEncoder, SDTLayer, SDTPooler
from .modeling_sdt_vit import SDTIsotropicEncoder, SDTPatchEncoder
from .transformer_sdt import SDTTransformer2DModel


#################################################################################
#                                    Models                                     #
#################################################################################

# transformers' ``attn_implementation`` -> the attention backend of ``sdt_gen.layers``.
ATTENTION_BACKEND_OF = {"eager": "eager", "sdpa": "sdpa", "flex_attention": "flex"}

# ``config.architecture`` -> the encoder of ``SDTModel``; a denoiser probe's config (``denoiser_config``) is isotropic
# but gets ``SDTProbeEncoder``.
ENCODERS = {"hierarchical": SDTHierarchicalEncoder, "isotropic": SDTIsotropicEncoder}


def encoder_class(config: SDTConfig) -> type[nn.Module]:
    """The encoder class ``SDTModel`` builds for ``config``."""
    return SDTProbeEncoder if config.is_denoiser_probe else ENCODERS[config.architecture]


class SDTPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the transformers plumbing shared by the SDT classifiers."""

    config_class = SDTConfig
    base_model_prefix = "sdt"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SDTLayer", "SDTProbeBlock"]
    _supports_sdpa = True
    _supports_flex_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """timm/RMT initialisation; also rebuilds every non-persistent buffer (gammas, positions).

        transformers >= 5 builds a model on the meta device before loading a checkpoint and calls
        this for what the checkpoint did not hold, which includes all non-persistent buffers; its
        ``init`` functions skip tensors that were loaded.
        """
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # PyTorch's default conv init (kaiming-uniform), which RMT keeps for its convs.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight[0].numel())
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, SpatialDecayAttention):
            # Runs after its children, so after the generic Linear init of the gate.
            _init_decay(module)
        elif isinstance(module, SDTLayer):
            for scale in (module.layer_scale_1, module.layer_scale_2):
                if scale is not None:
                    init.constant_(scale, module.layer_scale_init_value)
        elif isinstance(module, SDTPatchEncoder):
            module.init_buffers()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' ``from_pretrained``, then the config's freezing (loading makes new parameters)."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_freeze()
        return loaded

    def set_attn_implementation(self, attn_implementation, *args, **kwargs) -> None:
        """transformers' switch (``"sdpa"``, ``"flex_attention"`` or ``"eager"``), passed on to every attention layer."""
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        self.apply_attn_implementation()

    def set_attention_backend(self, backend: str, device: torch.device | str | None = None) -> None:
        """The denoiser's switch, for classifiers: ``"auto"`` (FlexAttention on CUDA, SDPA elsewhere, decided for
        ``device``, default the model's), ``"sdpa"``, ``"flex"`` or ``"eager"``, set as ``attn_implementation``."""
        check_choice("attention_backend", backend, ATTENTION_BACKENDS)
        resolved = resolve_backend(backend, torch.device(device) if device is not None else self.device)
        self.set_attn_implementation({value: key for key, value in ATTENTION_BACKEND_OF.items()}[resolved])

    def apply_attn_implementation(self) -> None:
        """Give every attention layer the backend of ``config._attn_implementation``."""
        implementation = self.config._attn_implementation
        if implementation not in ATTENTION_BACKEND_OF:
            raise ValueError(
                f"attn_implementation={implementation!r} is not one the SDT attention has; expected one of "
                f"{', '.join(ATTENTION_BACKEND_OF)}"
            )
        set_attention_backend(self, ATTENTION_BACKEND_OF[implementation])

    def apply_freeze(self) -> None:
        """With ``freeze_backbone`` only the pooler (and the classifier) train; the encoder's frozen modules (a
        probe's VAE) never do."""
        backbone = self if isinstance(self, SDTModel) else self.sdt
        if self.config.freeze_backbone:
            for name, param in backbone.named_parameters():
                param.requires_grad_(name.startswith("pooler."))
        for module in backbone.encoder.frozen_modules():
            module.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters to train without weight decay (timm's convention, full names).

        Every 1-D parameter: biases, norm scales, layer scales, the CAG scales ``alpha``.
        """
        return {name for name, param in self.named_parameters() if param.ndim <= 1 or name.endswith("gate.alpha")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch for gradient (activation) checkpointing of every block."""
        if enable:
            switch = getattr(self, "activation_checkpointing_enable", None) or self.gradient_checkpointing_enable
        else:
            switch = getattr(self, "activation_checkpointing_disable", None) or self.gradient_checkpointing_disable
        switch()


class SDTModel(SDTPreTrainedModel):
    """The SDT backbone: pixels ``(B, C, H, W)`` to tokens and pooled features.

    Returns a ``BaseModelOutputWithPooling``: ``last_hidden_state`` ``(B, N, C)`` (tokens of the last
    stage; for a denoiser probe exactly the denoiser's hidden states after block ``denoiser_layer``),
    ``pooler_output`` ``(B, F)`` (the pre-logits), with ``output_hidden_states`` the tokens after
    the stem/embedding and after every stage (SDT-H) or block (isotropic), and with ``output_attentions``
    each block's attention probabilities ``(B, heads, N, N)``, decay included.

    Its ``encoder`` is the architecture (``encoder_class``), the ``pooler`` is shaped by it. Every encoder
    takes ``(pixel_values, output_hidden_states)`` and returns ``(tokens, hidden_states or None)``, checks the
    input size it accepts, and has ``num_features``, ``head_hidden_size`` and ``fc_norm`` (the pooler's
    arguments), ``get_input_embeddings`` / ``set_input_embeddings`` and ``frozen_modules``.

    The attention runs with transformers' ``attn_implementation`` (``"sdpa"`` by default, ``"flex_attention"``,
    ``"eager"``), chosen at load (``from_pretrained(..., attn_implementation=...)``) or with
    ``set_attn_implementation``. Fused kernels cannot return probabilities: with ``output_attentions`` that call
    computes them explicitly (``sdt_gen.layers.attention_weights``), whatever the implementation. A block of the
    decomposed layout attends within rows, then within columns; its returned matrix is the one that pair applies,
    ``A[(r, c), (r', c')] = C_c[r, r'] * R_r'[c, c']`` (rows sum to 1). The decay alone, without the content
    term, is what the denoiser's ``decay_maps`` shows.
    """

    def __init__(self, config: SDTConfig):
        super().__init__(config)
        self.encoder = encoder_class(config)(config)
        self.pooler = SDTPooler(
            self.encoder.num_features, self.encoder.head_hidden_size, self.encoder.fc_norm, config.layer_norm_eps
        )
        self.num_features = self.pooler.num_features
        self.register_load_state_dict_pre_hook(rename_keys_saved_before_the_encoder_split)
        self.post_init()
        self.apply_freeze()
        self.apply_attn_implementation()

    def get_input_embeddings(self) -> nn.Module:
        """The pixel embedding: the conv stem (SDT-H) or the patch embedding (isotropic), as ViT returns its
        patch embeddings."""
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the module ``get_input_embeddings`` returns (it must give the same output shape)."""
        self.encoder.set_input_embeddings(value)

    # ------------------------------------------------------------------ forward

    def train(self, mode: bool = True) -> "SDTModel":
        """A frozen backbone (linear probe) stays in eval mode: BatchNorm statistics and drop path frozen."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.encoder.eval()
        return self

    def forward_features(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Pixels to the last stage's tokens ``(B, N, C)`` (normalised, except for denoiser probes) and, with
        ``output_hidden_states``, the hidden states."""
        config = self.config
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
        channels = pixel_values.shape[1]
        if channels != config.num_channels:
            if config.num_channels == 1 and channels == 3:
                pixel_values = pixel_values.mean(dim=1, keepdim=True)  # grey images converted to RGB
            else:
                raise ValueError(f"pixel_values must have {config.num_channels} channels, got {channels}")
        return self.encoder(pixel_values, output_hidden_states)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """Args:
        pixel_values: ``(B, num_channels, H, W)`` images normalised as by ``image_processor_for``.
        output_attentions: also return every block's attention probabilities (see the class docstring).
        output_hidden_states: also return the tokens after the embedding and after each stage / block.
        return_dict: return a ``BaseModelOutputWithPooling`` instead of a tuple.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if output_attentions:
            with recording_attentions(self) as recorded:
                features, hidden_states = self.forward_features(pixel_values, bool(output_hidden_states))
            attentions = tuple(recorded)
        else:
            features, hidden_states = self.forward_features(pixel_values, bool(output_hidden_states))
            attentions = None
        pooled = self.pooler(features)  # (B, F)
        if not return_dict:
            return tuple(value for value in (features, pooled, hidden_states, attentions) if value is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=features, pooler_output=pooled, hidden_states=hidden_states, attentions=attentions
        )


class SDTForImageClassification(SDTPreTrainedModel):
    """An SDT backbone (``self.sdt``) with a linear classifier on its pooled features.

    ``forward(pixel_values, labels)`` returns an ``ImageClassifierOutput``; with ``labels`` the loss is
    chosen by ``config.problem_type`` exactly as for transformers' classifiers (``self.loss_function``):
    ``"regression"`` (MSE), ``"single_label_classification"`` (cross-entropy on class indices),
    ``"multi_label_classification"`` (BCE with logits on float targets), inferred on the first loss when
    None. One addition: with ``"single_label_classification"``, float labels of the logits' shape are
    soft targets (mixup/cutmix) and give the cross-entropy of that distribution. Label smoothing is
    the training script's business.

    Example:
        ```python
        import sdt_gen
        from sdt_gen import SDTConfig, SDTForImageClassification, save_classifier
        from transformers import pipeline

        model = SDTForImageClassification(SDTConfig.from_preset("SDT-H-T", num_labels=1000))
        probe = SDTForImageClassification.from_denoiser("results/003/pipeline", timestep=100)
        save_classifier(model, "cls")  # weights, config and image processor
        pipeline("image-classification", model="cls")("cat.jpg")
        ```
    """

    def __init__(self, config: SDTConfig):
        super().__init__(config)
        self.sdt = SDTModel(config)
        self.num_features = self.sdt.num_features
        self.classifier = nn.Linear(self.num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    # ------------------------------------------------------------------ timm-style API

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels to the backbone's tokens ``(B, N, C)``."""
        return self.sdt.forward_features(pixel_values)[0]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``(B, N, C)`` to logits ``(B, num_labels)``, or the pooled pre-logits ``(B, F)``."""
        pooled = self.sdt.pooler(features)
        return pooled if pre_logits else self.classifier(pooled)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_labels: int, id2label: dict[int, str] | None = None) -> None:
        """A fresh head for ``num_labels`` classes (0: no head, logits are the pre-logits); updates the config."""
        if id2label is not None and len(id2label) != num_labels:
            raise ValueError(f"num_labels={num_labels} does not match id2label with {len(id2label)} labels")
        device = next(self.parameters()).device
        if num_labels > 0:
            self.classifier = nn.Linear(self.num_features, num_labels, device=device)
            init.trunc_normal_(self.classifier.weight, std=self.config.initializer_range)
            init.zeros_(self.classifier.bias)
        else:
            self.classifier = nn.Identity()
        if id2label is not None:
            self.config.id2label = {int(k): v for k, v in id2label.items()}
            self.config.label2id = {v: k for k, v in self.config.id2label.items()}
        else:
            self.config.num_labels = num_labels

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """Args:
        pixel_values: ``(B, num_channels, H, W)`` images normalised as by ``image_processor_for``.
        labels: targets of the loss selected by ``config.problem_type`` (see the class docstring): class
            indices ``(B,)``, float targets ``(B, num_labels)`` (multi-label, or soft targets with
            ``"single_label_classification"``), or regression values ``(B,)`` / ``(B, num_labels)``.
        output_attentions: also return the backbone's attention probabilities (see ``SDTModel``).
        output_hidden_states: also return the backbone's hidden states.
        return_dict: return an ``ImageClassifierOutput`` instead of a tuple.
        **kwargs: passed to the loss (e.g. the Trainer's ``num_items_in_batch``).
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.sdt(
            pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)  # (B, num_labels)
        loss = None
        if labels is not None:
            soft_targets = (
                self.config.problem_type == "single_label_classification"
                and labels.dtype.is_floating_point
                and labels.shape == logits.shape
            )
            if soft_targets:  # transformers' loss takes only class indices here
                loss = F.cross_entropy(logits, labels.to(logits.device))
            else:
                loss = self.loss_function(labels, logits, self.config, **kwargs)
        if not return_dict:
            return tuple(value for value in (loss, logits, outputs.hidden_states, outputs.attentions) if value is not None)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_preset(cls, name: str, **config_overrides) -> "SDTForImageClassification":
        """A randomly initialised classifier of preset ``name`` (see ``SDT_CLASSIFIER_PRESETS``)."""
        return cls(SDTConfig.from_preset(name, **config_overrides))

    @classmethod
    def from_denoiser(
        cls,
        denoiser: str | Path | SDTTransformer2DModel | Any,
        timestep: int | float = 100,
        layer: int | None = None,
        pool: str = "mean",
        freeze: bool = True,
        vae: nn.Module | None = None,
        **config_overrides,
    ) -> "SDTForImageClassification":
        """A classifier on the hidden states of a trained ``SDTTransformer2DModel``.

        The backbone is the denoiser's patch embedding, positions and blocks ``0..layer`` with the
        adaLN conditioning fixed to ``timestep`` and the null label (computed once, stored as a buffer),
        so ``forward_features(image)`` equals the denoiser's hidden states after block ``layer`` for
        ``denoiser(image, timestep, null_label)``: the image is fed as the clean sample, no noise added.

        Pixel-space denoisers take the image in [-1, 1] (the image processor's mean and std are 0.5).
        A latent denoiser needs its ``AutoencoderKL``: found in the pipeline folder's ``vae``
        subfolder or passed as ``vae``; the image is encoded to ``latent_dist.mean * scaling_factor``
        (the VAE's encoder is kept, frozen, inside the classifier, so it saves and loads with it).

        Args:
            denoiser: an ``SDTPipeline`` folder (``model_index.json``, subfolder ``transformer``), an
                ``SDTTransformer2DModel`` folder, a loaded pipeline or a loaded ``SDTTransformer2DModel``.
            timestep: the diffusion step of the fixed conditioning.
            layer: the block whose output is the feature (0-based, negative counts from the end;
                None: the last block). Later blocks are dropped.
            pool: token pooling, ``"mean"``.
            freeze: True for a linear probe (only the pooler's LayerNorm and the classifier train),
                False to fine-tune the backbone too.
            vae: the VAE of a latent denoiser (overrides one found in the folder).
            **config_overrides: any ``SDTConfig`` key, e.g. ``num_labels`` or ``id2label``
                (default: the pipeline's ``id2label`` if saved, else the denoiser's ``num_classes``).
        """
        transformer, found_vae, found_id2label = load_denoiser(denoiser)
        vae = vae if vae is not None else found_vae
        config = probe_config(transformer, vae, found_id2label, timestep, layer, pool, freeze, config_overrides)
        model = cls(config)
        model.sdt.encoder.load_denoiser_weights(transformer, vae)
        return model.to(transformer.x_embedder.proj.weight.device)


#################################################################################
#                           Initialisation helpers                              #
#################################################################################

def _init_decay(attn: SpatialDecayAttention) -> None:
    """RMT gammas (a non-persistent buffer) and, unless a checkpoint gave them, the CAG's start values."""
    gammas = rmt_gammas(attn.num_heads, attn.decay.initial_value, attn.decay.heads_range)
    if attn.gammas.is_meta:  # left on meta by a checkpoint load
        attn.gammas = torch.empty_like(gammas)
    init.copy_(attn.gammas, gammas.to(attn.gammas.device))
    gate = attn.gate
    # transformers marks what a checkpoint loaded; the gate's own reset would overwrite it.
    if gate is not None and not any(getattr(p, "_is_hf_initialized", False) for p in gate.parameters()):
        gate.reset_parameters()


#################################################################################
#                               Checkpoint keys                                 #
#################################################################################

# Before the architectures became encoder modules, the backbone held the encoder's modules itself: saved keys read
# ``sdt.stages.0...`` where the model now has ``sdt.encoder.stages.0...``. Saving keeps those keys (transformers
# reverses the renaming on ``save_pretrained``), so checkpoints of either version load in the other.
_ENCODER_MODULES_BEFORE_SPLIT = ("stem", "stages", "patch_embed", "blocks", "norm", "conditioning", "vae")
_SAVED_ENCODER_KEY = rf"^({'|'.join(_ENCODER_MODULES_BEFORE_SPLIT)})(?!\w)"
_ENCODER_KEY = r"encoder.\1"


def encoder_key_renaming() -> WeightRenaming:
    """transformers' renaming of saved backbone keys to the encoder's, ``stages.0...`` -> ``encoder.stages.0...``,
    for ``SDTModel`` alone or as ``sdt`` in a classifier, and back when saving (``save_original_format``)."""
    renaming = WeightRenaming(_SAVED_ENCODER_KEY, _ENCODER_KEY)
    # Scoped as transformers scopes a sub-model's renamings, so that an SDTModel also reads a classifier's
    # checkpoint (``sdt.stages...``): the base model prefix is taken off before matching.
    renaming.scope_prefix, renaming.base_model_prefix = "", SDTPreTrainedModel.base_model_prefix
    return renaming


def rename_keys_saved_before_the_encoder_split(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """``SDTModel``'s ``load_state_dict`` pre-hook: the same renaming for state dicts that do not go through
    ``from_pretrained``, such as the model in a training checkpoint saved by accelerate before the split."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        renamed = prefix + re.sub(_SAVED_ENCODER_KEY, _ENCODER_KEY, key.removeprefix(prefix), count=1)
        if renamed != key:
            state_dict[renamed] = state_dict.pop(key)


#################################################################################
#                                 Registration                                  #
#################################################################################

def register_auto_classes() -> None:
    """Register model type ``"sdt"`` with transformers' auto classes and the renaming of checkpoint keys saved
    before the encoder split (done on ``import sdt_gen``)."""
    AutoConfig.register("sdt", SDTConfig, exist_ok=True)
    AutoModel.register(SDTConfig, SDTModel, exist_ok=True)
    AutoModelForImageClassification.register(SDTConfig, SDTForImageClassification, exist_ok=True)
    register_checkpoint_conversion_mapping(SDTModel.__name__, [encoder_key_renaming()], overwrite=True)


register_auto_classes()

__all__ = [
    "SDTForImageClassification",
    "SDTModel",
    "SDTPreTrainedModel",
    "register_auto_classes",
]
