"""SDTConfig: the transformers configuration of the SDT classifiers (hierarchical SDT-H and isotropic).

Model type ``"sdt"``. Presets (``SDTConfig.from_preset``, names in ``SDT_CLASSIFIER_PRESETS``):

- ``SDT-H-T``, ``SDT-H-S``, ``SDT-H-B``: RMT's four-stage shapes with SDT attention (docs/method.md,
  section 6), about 14M, 27M and 54M parameters with 1000 labels.
- ``SDT-ViT-Ti/16``, ``SDT-ViT-S/16``, ``SDT-ViT-B/16``: isotropic (DeiT Ti/S/B shapes, patch 16)
  built from the same attention as the denoiser, pre-norm blocks without conditioning.

A classifier probing a trained denoiser (``SDTForImageClassification.from_denoiser``) is an
isotropic config whose ``denoiser_config`` holds the denoiser's own config.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import PretrainedConfig

from ..data.vae import vae_downsampling
from ..layers import (
    DECAY_LAYOUTS,
    POSITION_EMBEDDINGS,
    DecayConfig,
    check_choice,
)

ARCHITECTURES = ("hierarchical", "isotropic")
POOL_TYPES = ("mean",)
HIERARCHICAL_STRIDE = 32  # stem 4 x three 2x patch mergings
ISOTROPIC_HIDDEN_SIZE = 384  # the isotropic width when none is given (SDT-ViT-S)
_STAGE_KEYS = ("dims", "depths", "heads", "mlp_ratios", "heads_ranges", "decay_layouts", "layer_scale_init_values")
_DERIVED_KEYS = ("hidden_size", "num_attention_heads", "num_hidden_layers")  # SDT-H's standard names

logger = logging.getLogger(__name__)


class DerivedKeyError(ValueError, NotImplementedError):
    """A standard name that SDT-H derives from its stages (``hidden_size``, ``num_attention_heads``,
    ``num_hidden_layers``) given a value of its own.

    Also a ``NotImplementedError``: transformers' sign that a config cannot set one of its standard names.
    """


def _hw(size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


class SDTConfig(PretrainedConfig):
    r"""Configuration of ``SDTModel`` / ``SDTForImageClassification``.

    Args:
        architecture: ``"hierarchical"`` (SDT-H: conv stem, four stages, conv patch merging, CPE, LePE)
            or ``"isotropic"`` (ViT-style: patch embedding, fixed 2D sin-cos positions, one stage).
        image_size: input side, or ``(height, width)``. Hierarchical: a multiple of 32 (the overall
            stride), at least 32. Isotropic: a multiple of ``patch_size``.
        num_channels: image channels. A 1-channel model also accepts 3-channel input and averages it,
            so grey images converted to RGB (as ``pipeline("image-classification")`` does) work exactly.
        dims, depths, heads, mlp_ratios: per-stage width, block count, attention heads and MLP ratio (SDT-H).
        heads_ranges: per-stage RMT ``b`` of the per-head gammas (RMT: 4, 4, 6, 6).
        decay_layouts: per-stage ``"decomposed"`` or ``"full"`` (paper: decomposed, decomposed, full, full).
        layer_scale_init_values: per-stage layer-scale init; 0 disables layer scale in that stage.
        mlp_dwconv: RMT's 3x3 depthwise conv inside the MLP (residual, after the activation).
        cpe_kernel_size: depthwise conv positional encoding added before each SDT-H block (0: off).
        lepe_kernel_size: LePE, a depthwise conv on ``v`` added to the attention output (0: off).
        head_hidden_size: RMT's pre-head projection (Linear -> BatchNorm -> SiLU) before pooling;
            0 uses a LayerNorm instead.
        patch_size, hidden_size, depth, num_heads, mlp_ratio: isotropic shape.
        decay_layout, heads_range: isotropic decay layout and RMT ``b``.
        layer_scale_init_value: isotropic layer-scale init; 0 disables layer scale.
        position_embedding, rope_base: isotropic positions, as the denoiser's: ``"sincos"`` (a fixed 2D table
            added to the patch tokens), ``"rope"`` (2D rotary positions inside every attention layer) or
            ``"sincos+rope"``; the rotary frequency base. SDT-H has its convolutional positions and only ``"sincos"``
            (its default, which it ignores).
        decay_mode: ``"none"`` (ViT), ``"fixed"`` (RMT) or ``"cag"`` (SDT). Note: with ``"none"`` the
            attention core ignores the layout, so SDT-H's ``decomposed`` stages attend globally
            (about twice SDT-H-T's FLOPs at 224px), not axially.
        decay_init: ``"rmt"`` (CAG starts as RMT's decay) or ``"zero"`` (starts as plain attention).
        initial_value: RMT ``a`` of the per-head gammas.
        qkv_bias: bias on the q/k/v projection.
        drop_path_rate: stochastic depth, rising linearly over blocks from 0 to this value.
        layer_norm_eps: LayerNorm epsilon.
        pool: token pooling before the head (``"mean"``).
        initializer_range: std of the truncated-normal init of linear layers.
        denoiser_config: the ``SDTTransformer2DModel`` config a denoiser probe was built from, else None.
        denoiser_timestep: the diffusion step the probe's conditioning is fixed to.
        denoiser_layer: index of the denoiser block whose output is the feature (0-based).
        denoiser_label: the class label of the fixed conditioning (the null class).
        freeze_backbone: train only the pooler/head (linear probe); the rest stays frozen and in eval mode.
        vae_config, vae_scaling_factor: an ``AutoencoderKL`` config and latent scale when the probed
            denoiser works on latents (the image is encoded to ``mean * scaling_factor``).
        image_mean, image_std: normalisation of the image processor (``image_processor_for``);
            None picks ``[0.5]`` / ``[0.5]`` (images in [-1, 1]) for denoiser probes and 1-channel
            models, ImageNet's mean and std otherwise.
        preset: name of the preset the config came from (a record only).
        num_labels, id2label, label2id: transformers' label keys; a ``num_labels`` that disagrees with
            ``id2label`` is an error, except when loading: ``from_pretrained(path, num_labels=N)`` replaces
            the saved label set by ``N`` new labels (pass ``id2label`` to name them), as for any transformers
            classifier.
        problem_type: transformers' loss selector of ``SDTForImageClassification``: ``"regression"``,
            ``"single_label_classification"`` or ``"multi_label_classification"``; None: the first loss
            infers it from ``num_labels`` and the labels' dtype and stores it here (as transformers does).

    transformers' standard names, read (and, for the isotropic architecture, set) through the keys above:

    - ``hidden_size``: the width of ``last_hidden_state``. Isotropic: the token width (384 when not given).
      SDT-H: the last stage's width ``dims[-1]``, derived; a different value, passed in or set, raises
      ``DerivedKeyError`` naming both (pass ``architecture="isotropic"`` for an isotropic model of that width).
    - ``num_hidden_layers``: the number of entries of ``hidden_states`` after the embedding's. Isotropic:
      ``depth`` (blocks). SDT-H: the number of stages ``len(depths)`` (Swin's meaning); setting it raises
      ``DerivedKeyError``.
    - ``num_attention_heads``: isotropic: ``num_heads``. SDT-H: the heads of the last stage ``heads[-1]``,
      so that ``hidden_size // num_attention_heads`` is that stage's head width; setting it raises
      ``DerivedKeyError``.

    What is refused is a value a user gives: to the constructor, as a keyword of ``from_pretrained``, or set. A
    saved SDT-H ``config.json`` whose derived name disagrees with its stages was written by an earlier version
    (before the configs were strict every SDT-H folder saved the isotropic default ``hidden_size: 384``): loading
    it (``from_pretrained``, ``from_dict``) drops that key, derives it from the stages and logs one info line.
    """

    model_type = "sdt"

    architecture: str = "hierarchical"
    image_size: int | list[int] = 224
    num_channels: int = 3
    # hierarchical (SDT-H)
    dims: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    depths: list[int] | tuple[int, ...] = (2, 2, 8, 2)
    heads: list[int] | tuple[int, ...] = (4, 4, 8, 16)
    mlp_ratios: list[float] | tuple[float, ...] = (3.0, 3.0, 3.0, 3.0)
    heads_ranges: list[float] | tuple[float, ...] = (4.0, 4.0, 6.0, 6.0)
    decay_layouts: list[str] | tuple[str, ...] = ("decomposed", "decomposed", "full", "full")
    layer_scale_init_values: list[float] | tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    mlp_dwconv: bool = True
    cpe_kernel_size: int = 3
    lepe_kernel_size: int = 5
    head_hidden_size: int = 1024
    # isotropic
    patch_size: int = 16
    hidden_size: int | None = None
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    decay_layout: str = "full"
    heads_range: float = 6.0
    layer_scale_init_value: float = 0.0
    position_embedding: str = "sincos"
    rope_base: float = 10000.0
    # shared
    decay_mode: str = "cag"
    decay_init: str = "rmt"
    initial_value: float = 2.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    pool: str = "mean"
    initializer_range: float = 0.02
    # denoiser probe
    denoiser_config: dict[str, Any] | None = None
    denoiser_timestep: float | int | None = None
    denoiser_layer: int | None = None
    denoiser_label: int | None = None
    freeze_backbone: bool = False
    vae_config: dict[str, Any] | None = None
    vae_scaling_factor: float | None = None
    # image processor
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    preset: str | None = None

    def __post_init__(self, **kwargs):
        # Saved by earlier versions; the attention now runs with transformers' attn_implementation, chosen at load.
        kwargs.pop("attention_backend", None)
        if "num_labels" in kwargs and kwargs["num_labels"] is None:
            del kwargs["num_labels"]
        num_labels = kwargs.get("num_labels")
        if num_labels is not None and self.id2label is not None and len(self.id2label) != num_labels:
            raise ValueError(
                f"num_labels={num_labels} does not match id2label, which names {len(self.id2label)} labels; "
                "pass only one of them, or an id2label (and label2id) for the new labels"
            )
        if self.id2label is not None and self.label2id is not None and len(self.label2id) != len(self.id2label):
            raise ValueError(
                f"label2id has {len(self.label2id)} entries but id2label has {len(self.id2label)}; they must name "
                "the same labels"
            )
        super().__post_init__(**kwargs)
        if self.id2label is not None and self.label2id is None:
            self.label2id = {label: index for index, label in self.id2label.items()}
        check_choice("architecture", self.architecture, ARCHITECTURES)
        if self.architecture == "hierarchical":
            width = self.stage_values("dims")[-1]  # what generic code reads as the token width
            self._check_derived("hidden_size", self.hidden_size, width, "the last stage's width dims[-1]")
            self.hidden_size = width
        elif self.hidden_size is None:
            self.hidden_size = ISOTROPIC_HIDDEN_SIZE
        self.validate_sdt()

    def __setattr__(self, key: str, value) -> None:
        if key == "hidden_size" and getattr(self, "architecture", None) == "hierarchical" and "dims" in self.__dict__:
            self._check_derived(key, value, self.stage_values("dims")[-1], "the last stage's width dims[-1]")
        super().__setattr__(key, value)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "SDTConfig":
        """transformers' ``from_dict``; new labels passed to a load replace the saved label set, and a saved SDT-H
        ``hidden_size``, ``num_attention_heads`` or ``num_hidden_layers`` is derived again from the stages.

        ``from_pretrained(path, num_labels=N)`` (a new head on a pretrained backbone) gets ``N`` labels
        named ``LABEL_i`` when ``N`` differs from the saved count; an ``id2label`` or ``label2id`` passed in
        replaces the saved one whole (the other is derived from it), rather than being set next to a
        saved map that names other labels.
        """
        new_labels = {key: kwargs.pop(key) for key in ("id2label", "label2id") if key in kwargs}
        saved = config_dict.get("id2label")
        num_labels = kwargs.get("num_labels")
        if new_labels or (num_labels is not None and saved is not None and len(saved) != num_labels):
            config_dict = {k: v for k, v in config_dict.items() if k not in ("id2label", "label2id")}
            config_dict.update(new_labels)
        derived_saved = {}
        if config_dict.get("architecture", cls.architecture) == "hierarchical":
            # Derived from the stages: a saved value is recomputed, never refused (earlier versions wrote 384).
            # Keywords given to the load are not in config_dict; they are set afterwards and still checked.
            derived_saved = {key: config_dict[key] for key in _DERIVED_KEYS if key in config_dict}
            config_dict = {k: v for k, v in config_dict.items() if k not in _DERIVED_KEYS}
        loaded = super().from_dict(config_dict, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded  # (config, unused kwargs) when asked for
        for key, value in derived_saved.items():
            if value is not None and value != getattr(config, key):
                logger.info(
                    f"the saved {key}={value!r} disagrees with the stages of this SDT-H config (written by an earlier "
                    f"version); using the derived {key}={getattr(config, key)!r}"
                )
        return loaded

    # ------------------------------------------------------------------ standard names

    @property
    def num_hidden_layers(self) -> int:
        """Isotropic: ``depth``; SDT-H: the number of stages (see the class docstring)."""
        return self.depth if self.architecture == "isotropic" else self.num_stages

    @num_hidden_layers.setter
    def num_hidden_layers(self, value: int) -> None:
        self._set_isotropic("num_hidden_layers", "depth", value, self.num_stages, "the number of stages len(depths)")

    @property
    def num_attention_heads(self) -> int:
        """Isotropic: ``num_heads``; SDT-H: the heads of the last stage (see the class docstring)."""
        return self.num_heads if self.architecture == "isotropic" else self.stage_values("heads")[-1]

    @num_attention_heads.setter
    def num_attention_heads(self, value: int) -> None:
        self._set_isotropic("num_attention_heads", "num_heads", value, self.stage_values("heads")[-1],
                            "the last stage's heads heads[-1]")

    def _set_isotropic(self, name: str, key: str, value: int, derived: int, meaning: str) -> None:
        if self.architecture == "isotropic":
            setattr(self, key, value)
        else:
            self._check_derived(name, value, derived, meaning)

    @staticmethod
    def _check_derived(name: str, value: int | None, derived: int, meaning: str) -> None:
        """Refuse an SDT-H standard name given a value other than the one derived from the stages."""
        if value is not None and value != derived:
            raise DerivedKeyError(
                f"{name}={value!r} contradicts the hierarchical architecture, whose {name} is {meaning} = {derived}; "
                f"pass architecture='isotropic' for an isotropic model, or change the stages"
            )

    # ------------------------------------------------------------------ checks

    @property
    def image_hw(self) -> tuple[int, int]:
        """``image_size`` as ``(height, width)``."""
        return _hw(self.image_size)

    @property
    def is_denoiser_probe(self) -> bool:
        return self.denoiser_config is not None

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def stage_values(self, key: str) -> list:
        """A per-stage key as a list of ``num_stages`` values (a scalar is repeated)."""
        value = getattr(self, key)
        if isinstance(value, (int, float, str)):
            return [value] * self.num_stages
        return list(value)

    def validate_sdt(self) -> None:
        """Raise a ValueError naming the first inconsistent key."""
        DecayConfig.from_config(self)  # refuses an unknown decay_mode, decay_layout or decay_init
        check_choice("pool", self.pool, POOL_TYPES)
        check_choice("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
        if self.architecture == "hierarchical" and self.position_embedding != "sincos":
            raise ValueError(
                f"position_embedding={self.position_embedding!r} applies to the isotropic architecture; SDT-H has "
                "convolutional positions (cpe_kernel_size, lepe_kernel_size)"
            )
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be positive, got {self.num_channels}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        height, width = self.image_hw
        if self.architecture == "hierarchical":
            for key in _STAGE_KEYS:
                if len(self.stage_values(key)) != self.num_stages:
                    raise ValueError(
                        f"{key} has {len(self.stage_values(key))} entries but depths has {self.num_stages} stages"
                    )
            for layout in self.stage_values("decay_layouts"):
                check_choice("decay_layouts", layout, DECAY_LAYOUTS)
            for dim, heads in zip(self.dims, self.heads):
                if dim % heads:
                    raise ValueError(f"stage width {dim} is not divisible by its {heads} heads")
            check_image_size((height, width), HIERARCHICAL_STRIDE, "the SDT-H stem and patch merging (stride 32)")
        else:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            if "sincos" in self.position_embedding and self.hidden_size % 4:
                raise ValueError(f"hidden_size must be divisible by 4 for 2D sin-cos positions, got {self.hidden_size}")
            if "rope" in self.position_embedding and (self.hidden_size // self.num_heads) % 4:
                raise ValueError(
                    f"2D rotary positions need a head width divisible by 4, got {self.hidden_size // self.num_heads}"
                )
            check_image_size((height, width), self.patch_size * self.vae_downsample, "the patch embedding")

    @property
    def decay(self) -> DecayConfig:
        """The decay settings as one object (per-stage layouts and heads ranges of SDT-H replace its
        ``layout`` and ``heads_range`` stage by stage)."""
        return DecayConfig.from_config(self)

    @property
    def vae_downsample(self) -> int:
        """Pixels per latent cell of the probe's VAE (1 without a VAE)."""
        if not self.vae_config:
            return 1
        return vae_downsampling(self.vae_config)

    # ------------------------------------------------------------------ presets

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "SDTConfig":
        """The config of preset ``name`` (see ``SDT_CLASSIFIER_PRESETS``), any key overridden by ``kwargs``.

        Without ``num_labels`` or ``id2label`` the classifier has ImageNet's 1000 labels.
        """
        if name not in SDT_CLASSIFIER_PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(SDT_CLASSIFIER_PRESETS)}")
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["num_labels"] = 1000
        return cls(**{**SDT_CLASSIFIER_PRESETS[name], "preset": name, **kwargs})


def check_image_size(size: tuple[int, int], stride: int, what: str, minimum: int | None = None) -> None:
    """Raise a ValueError unless both sides of ``size`` are positive multiples of ``stride``."""
    height, width = size
    minimum = stride if minimum is None else minimum
    if height < minimum or width < minimum or height % stride or width % stride:
        raise ValueError(
            f"image size {height}x{width} cannot go through {what}: both sides must be multiples of {stride} "
            f"and at least {minimum}"
        )


#################################################################################
#                                   Presets                                     #
#################################################################################

_HIERARCHICAL = dict(
    architecture="hierarchical",
    image_size=224,
    decay_layouts=["decomposed", "decomposed", "full", "full"],
    heads_ranges=[4.0, 4.0, 6.0, 6.0],
)
_ISOTROPIC = dict(architecture="isotropic", image_size=224, patch_size=16, mlp_ratio=4.0, decay_layout="full",
                  heads_range=6.0)

SDT_CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    # RMT-T / S / B shapes (drop path and layer scale as in RMT's recipes).
    "SDT-H-T": dict(_HIERARCHICAL, dims=[64, 128, 256, 512], depths=[2, 2, 8, 2], heads=[4, 4, 8, 16],
                    mlp_ratios=[3.0, 3.0, 3.0, 3.0], drop_path_rate=0.1),
    "SDT-H-S": dict(_HIERARCHICAL, dims=[64, 128, 256, 512], depths=[3, 4, 18, 4], heads=[4, 4, 8, 16],
                    mlp_ratios=[4.0, 4.0, 3.0, 3.0], drop_path_rate=0.15),
    "SDT-H-B": dict(_HIERARCHICAL, dims=[80, 160, 320, 512], depths=[4, 8, 25, 8], heads=[5, 5, 10, 16],
                    mlp_ratios=[4.0, 4.0, 3.0, 3.0], drop_path_rate=0.4,
                    layer_scale_init_values=[0.0, 0.0, 1e-6, 1e-6]),
    # Not in RMT: a CPU-sized SDT-H for demos (the bundled digits) and tests.
    "SDT-H-XT": dict(_HIERARCHICAL, dims=[32, 64, 128, 256], depths=[1, 1, 2, 1], heads=[2, 2, 4, 8],
                     mlp_ratios=[3.0, 3.0, 3.0, 3.0], drop_path_rate=0.0),
    # DeiT Ti / S / B shapes with SDT attention.
    "SDT-ViT-Ti/16": dict(_ISOTROPIC, hidden_size=192, depth=12, num_heads=3, drop_path_rate=0.1),
    "SDT-ViT-S/16": dict(_ISOTROPIC, hidden_size=384, depth=12, num_heads=6, drop_path_rate=0.1),
    "SDT-ViT-B/16": dict(_ISOTROPIC, hidden_size=768, depth=12, num_heads=12, drop_path_rate=0.1),
}

__all__ = ["ARCHITECTURES", "POOL_TYPES", "SDTConfig", "SDT_CLASSIFIER_PRESETS", "check_image_size"]
