"""SDTPipeline: class-conditional sampling with an SDT denoiser through any diffusers scheduler.

Used like diffusers' ``DiTPipeline``, without its known faults: the null class comes from the
transformer's config (not a hard-coded 1000), ``id2label`` is saved in ``model_index.json`` and
restored, a learned-variance ``DDPMScheduler`` gets the variance it asks for, and guidance covers
every latent channel unless DiT's original 3-of-4-channel protocol is asked for explicitly.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMParallelScheduler, DDPMScheduler, UnCLIPScheduler
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from sdt_gen.diffusion import objective_of
from sdt_gen.files import atomic_folder
from sdt_gen.hub import local_folder
from sdt_gen.models.transformer_sdt import SDTTransformer2DModel

from .class_names import ClassLabels, ClassNames
from .folders import StalePipelineWarning, check_pipeline_folder, stale_export_note
from .schedulers import FLOW_SCHEDULERS, SCHEDULERS, dit_scheduler, samples_velocity

logger = logging.get_logger(__name__)

# Schedulers whose ``step`` splits a ``2C``-channel model output into noise and learned variance.
_VARIANCE_SCHEDULERS = (DDPMScheduler, DDPMParallelScheduler, UnCLIPScheduler)
_LEARNED_VARIANCE = ("learned", "learned_range")
_OUTPUT_TYPES = ("pil", "np", "pt")

PIPELINE_MODULE = "pipeline_sdt"
PIPELINE_LOADER = (
    '"""Loads SDTPipeline from the installed sdt-gen package (pip install sdt-gen)."""\n\n'
    "from sdt_gen.pipelines.pipeline_sdt import SDTPipeline  # noqa: F401\n"
)
"""The file a saved pipeline folder carries for ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``."""

#################################################################################
#                                Sampling inputs                                #
#################################################################################

def check_guidance_interval(interval) -> tuple[float, float]:
    """``(lo, hi)`` with ``0 <= lo <= hi <= 1`` (noise levels, see ``SDTPipeline.__call__``), or a ValueError."""
    try:
        lo, hi = (float(value) for value in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two numbers (lo, hi), got {interval!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1 (0: clean data, 1: pure noise), got {interval!r}")
    return lo, hi


#################################################################################
#                                   Pipeline                                    #
#################################################################################

class SDTPipeline(DiffusionPipeline):
    """Class-conditional image generation with an ``SDTTransformer2DModel``.

    Args:
        transformer: the denoiser; its ``num_classes`` is also the null class used by guidance.
        scheduler: any diffusers scheduler (``dit_scheduler()`` is DiT's 250-step DDPM sampler).
        vae: an ``AutoencoderKL`` decoding latents to images, or ``None`` for a pixel-space model whose
            samples are already images in ``[-1, 1]``.
        id2label: class names by id (``{207: "golden retriever", ...}``); several names of one class are
            separated by commas as in ImageNet's class list. Saved in ``model_index.json``.
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        transformer: SDTTransformer2DModel,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        id2label: dict | None = None,  # {int or str id: name}; a plain dict so diffusers' type check accepts JSON
    ):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        self._class_names = ClassNames(id2label, transformer.config.num_classes)
        self.register_to_config(id2label=self._class_names.to_json())  # saved in model_index.json

    # ------------------------------------------------------------------ labels

    @property
    def id2label(self) -> dict[int, str]:
        """Class names by integer id (empty when the pipeline has none)."""
        return self._class_names.id2label

    @property
    def labels(self) -> dict[str, int]:
        """Lower-case class name (each comma-separated synonym) to id, as ``DiTPipeline.labels``."""
        return self._class_names.labels

    def label_name(self, class_id: int) -> str:
        """The first name of class ``class_id``, or the id as text when there is no ``id2label``."""
        return self._class_names.name(class_id)

    def get_label_ids(self, labels: ClassLabels) -> list[int]:
        """Map class ids and names to validated ids, one per image (see ``ClassNames.ids``)."""
        return self._class_names.ids(labels)

    # ------------------------------------------------------------------ schedulers

    dit_scheduler = staticmethod(dit_scheduler)

    def _passes_variance(self, scheduler: SchedulerMixin) -> bool:
        """Whether the model's variance channels go to ``scheduler.step`` (learned-variance DDPM)."""
        return (
            self.transformer.config.learn_sigma
            and isinstance(scheduler, _VARIANCE_SCHEDULERS)
            and scheduler.config.get("variance_type") in _LEARNED_VARIANCE
        )

    def _check_scheduler(self, scheduler: SchedulerMixin) -> None:
        """Refuse a scheduler of the other kind than the transformer's objective, naming the right ones."""
        rules = objective_of(self.transformer.config)
        if samples_velocity(rules) == isinstance(scheduler, FLOW_SCHEDULERS):
            return
        kind = "flow-matching " if isinstance(scheduler, FLOW_SCHEDULERS) else ""
        right = "; ".join(f"{SCHEDULERS[name].__name__}, sample.py --scheduler {name}" for name in rules.samplers)
        raise ValueError(
            f"this transformer was trained with the {rules.title} objective (it predicts {rules.prediction}), so the "
            f"{kind}{type(scheduler).__name__} cannot sample it: use one of its samplers ({right})"
        )

    def _sampling_scheduler(self) -> SchedulerMixin:
        """``self.scheduler``, or a copy that does not expect learned variance when it cannot get it.

        ``DPMSolverMultistepScheduler.from_config(ddpm_config)`` keeps ``variance_type="learned_range"``
        and then slices the output to 3 channels, which breaks 4-channel latents; a DDPM scheduler with
        learned variance crashes on a model without it. Both get a copy with the default variance
        type, while ``self.scheduler`` (and the config it saves) stays as the user set it.
        """
        scheduler = self.scheduler
        variance_type = scheduler.config.get("variance_type")
        params = inspect.signature(type(scheduler).__init__).parameters
        if variance_type in _LEARNED_VARIANCE and "variance_type" in params and not self._passes_variance(scheduler):
            cached = getattr(self, "_sampling_copy", None)
            if cached is not None and cached[0] is scheduler:  # said once per scheduler, not once per batch
                return cached[1]
            default = params["variance_type"].default
            name = type(scheduler).__name__
            logger.info(f"sampling with {name}(variance_type={default!r}): learned variance cannot be used here")
            self._sampling_copy = (scheduler, type(scheduler).from_config(scheduler.config, variance_type=default))
            return self._sampling_copy[1]
        return scheduler

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "SDTPipeline":
        """Load a pipeline from a local folder or a Hub repo id (downloaded into the Hugging Face cache, or read
        from it with ``HF_HUB_OFFLINE=1``); the folder is checked first, so a missing part is named clearly."""
        pretrained_model_name_or_path = local_folder(pretrained_model_name_or_path, kwargs.pop("revision", None))
        check_pipeline_folder(pretrained_model_name_or_path, required=("transformer", "scheduler"))
        stale = stale_export_note(pretrained_model_name_or_path)
        if stale:
            warnings.warn(stale, StalePipelineWarning, stacklevel=2)
        code = Path(pretrained_model_name_or_path) / f"{PIPELINE_MODULE}.py"
        if code.is_file():
            # The class is known here, so the folder's loader file is not needed: it is run (as diffusers
            # insists) only when it is exactly the file ``save_pretrained`` writes.
            if code.read_text() != PIPELINE_LOADER:
                raise ValueError(
                    f"{code} is not the loader file SDTPipeline writes; inspect it, then load with "
                    "DiffusionPipeline.from_pretrained(path, trust_remote_code=True) if you trust it"
                )
            kwargs.setdefault("trust_remote_code", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' ``save_pretrained``, plus diffusers' custom-pipeline convention for a class outside diffusers.

        ``model_index.json`` names the pipeline as ``["pipeline_sdt", "SDTPipeline"]`` and the folder
        gets ``pipeline_sdt.py``, a two-line loader of the installed class, so
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` returns an ``SDTPipeline``.
        """
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text())
        index["_class_name"] = [PIPELINE_MODULE, type(self).__name__]
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (folder / f"{PIPELINE_MODULE}.py").write_text(PIPELINE_LOADER)

    @classmethod
    def from_dit_pipeline(cls, path: str | os.PathLike, **overrides) -> "SDTPipeline":
        """Convert a diffusers ``DiTPipeline`` saved on disk (e.g. ``facebook/DiT-XL-2-256``) to an SDT pipeline.

        The transformer is converted with ``SDTTransformer2DModel.from_dit(**overrides)``; the VAE, the
        scheduler and the class names (``id2label`` in its ``model_index.json``) are kept. With
        ``decay_mode="none"`` or ``decay_init="zero"`` the result samples the DiT pipeline's images.

        Args:
            path: the DiT pipeline folder or Hub repo id (the Hugging Face cache when offline).
            **overrides: SDT config keys, e.g. ``decay_mode="cag", decay_init="zero"``.
        """
        import diffusers

        path = local_folder(path)
        index = check_pipeline_folder(path, required=("transformer", "vae", "scheduler"))
        # The components one by one: DiTPipeline.from_pretrained warns that the Hub's id2label (JSON, so string
        # keys) is not dict[int, str], on every load of facebook/DiT-XL-2-256.
        dit = diffusers.DiTTransformer2DModel.from_pretrained(path, subfolder="transformer")
        transformer = SDTTransformer2DModel.from_dit(dit, **overrides).eval()
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        scheduler = getattr(diffusers, index["scheduler"][1]).from_pretrained(path, subfolder="scheduler")
        id2label = {int(k): name for k, name in (index.get("id2label") or {}).items()}
        return cls(transformer=transformer, scheduler=scheduler, vae=vae, id2label=id2label or None)

    @classmethod
    def from_dit_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        vae: str | os.PathLike | AutoencoderKL | None = None,
        weights: str = "ema",
        id2label: Mapping | None = None,
        pixel_space: bool = False,
        **overrides,
    ) -> "SDTPipeline":
        """An SDT pipeline from one of DiT's original checkpoints (``DiT-XL-2-256x256.pt``, a ``train.py`` checkpoint).

        The transformer computes the checkpoint's function (``SDTTransformer2DModel.from_dit``), the
        scheduler is DiT's (``dit_scheduler()``), and a 1000-class model gets ImageNet's class names.

        Args:
            checkpoint: the DiT checkpoint file.
            vae: an ``AutoencoderKL`` folder, Hub repo id or model (DiT: ``stabilityai/sd-vae-ft-ema``).
            weights: ``"ema"`` or ``"model"`` for a ``train.py`` checkpoint.
            id2label: class names; default ImageNet's for 1000 classes.
            pixel_space: the DiT was trained on pixels, so no ``vae``: required to convert without one (DiT's
                checkpoints are latent-space models, and a VAE-less pipeline would save latents as images).
            **overrides: SDT config keys, e.g. ``decay_mode="cag", decay_init="zero"``.
        """
        from sdt_gen.data import imagenet_id2label, load_vae

        if vae is None and not pixel_space:
            raise ValueError(
                f"{os.fspath(checkpoint)}: a DiT denoises VAE latents; pass its VAE (--vae / vae=, DiT's is "
                "stabilityai/sd-vae-ft-ema), or --pixel-space (pixel_space=True) for a DiT trained on pixels"
            )
        transformer = SDTTransformer2DModel.from_dit(checkpoint, weights=weights, **overrides).eval()
        if isinstance(vae, (str, os.PathLike)):
            vae = load_vae(vae)
        if id2label is None and transformer.config.num_classes == 1000:
            id2label = imagenet_id2label()
        return cls(transformer=transformer, scheduler=dit_scheduler(transformer.config.learn_sigma), vae=vae,
                   id2label=dict(id2label) if id2label else None)

    # ------------------------------------------------------------------ saving

    def save_pretrained_atomically(self, path: str | os.PathLike) -> None:
        """``save_pretrained`` into a temporary sibling folder, then swap it in: ``path`` is never half-written.

        Args:
            path: the pipeline folder; an existing one is replaced only once the new one is complete.
        """
        with atomic_folder(path) as tmp:
            self.save_pretrained(tmp)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels,
        guidance_scale: float = 4.0,
        guided_channels: int | None = None,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        num_inference_steps: int = 250,
        batch_size: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate one image per entry of ``class_labels``.

        Args:
            class_labels: one class per image: an id or a name, a list of ids and/or names (case-insensitive;
                any comma-separated synonym of ``id2label``), or a tensor or array of ids; nested lists and
                tensors of several dimensions are flattened row-major, as ``DiTPipeline`` reads them. Ids are
                ``0..num_classes-1``; for unconditional images use ``guidance_scale=0``.
            guidance_scale: classifier-free guidance weight ``s``: ``eps = eps_null + s (eps_y - eps_null)``
                (on the velocity for flow models).
                ``1`` runs the conditional model only and ``0`` the unconditional (null-class) model only,
                each with one forward per step.
            guided_channels: guide only the first ``k`` channels (DiT's original code guided 3 of 4 latent
                channels; ``3`` reproduces its FID protocol). Default: all channels.
            guidance_interval: ``(lo, hi)``: guide only the steps whose noise level lies in ``[lo, hi]``
                (Kynkäänniemi et al. 2024); the other steps run the conditional model alone, one forward each.
                The noise level is the step's timestep over the scheduler's ``num_train_timesteps``, the same
                fraction for both kinds of model: 0 is clean data, 1 pure noise. A DDPM timestep ``t`` of 0..999
                is ``t / 1000``; a flow model's time ``sigma`` (the noise weight of ``(1 - sigma) x + sigma
                noise``, diffusers' timestep ``1000 sigma``) is ``sigma`` itself. ``(0, 1)``: every step.
            generator: one ``torch.Generator``, or one per image; with one per image the images do not
                depend on ``batch_size``.
            latents: ``(N, C, H, W)`` initial noise instead of drawing it from ``generator``.
            num_inference_steps: denoising steps (DiT: 250 with DDPM; DPM-Solver: ~25).
            batch_size: most images denoised at once (memory bound); default all of them.
            output_type: ``"pil"`` (list of ``PIL.Image``), ``"np"`` (``(N, H, W, 3)`` floats in ``[0, 1]``)
                or ``"pt"`` (``(N, 3, H, W)`` tensor in ``[0, 1]``).
            return_dict: return an ``ImagePipelineOutput`` instead of a tuple.

        Examples:

        ```py
        >>> import torch
        >>> from diffusers import DPMSolverMultistepScheduler
        >>> from sdt_gen import SDTPipeline

        >>> pipe = SDTPipeline.from_pretrained("results/003-SDT-XL-2/pipeline").to("cuda")
        >>> images = pipe(class_labels=[207, "otter"], guidance_scale=4.0, num_inference_steps=250,
        ...               generator=torch.Generator("cuda").manual_seed(0)).images
        >>> pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        >>> images = pipe(class_labels=["golden retriever"], num_inference_steps=25).images
        ```

        Returns:
            ``ImagePipelineOutput`` with ``images``, or the tuple ``(images,)``.
        """
        # 1. Check inputs
        class_ids = self.get_label_ids(class_labels)
        num_images = len(class_ids)
        batch_size = num_images if batch_size is None else batch_size
        channels = self.transformer.config.in_channels
        guided_channels = channels if guided_channels is None else guided_channels
        self.check_inputs(num_images, guidance_scale, guided_channels, guidance_interval, generator, latents,
                          num_inference_steps, batch_size, output_type)

        # 2. Initial noise for every image at once, so it does not depend on batch_size
        device = self._execution_device
        latents = self.prepare_latents(num_images, generator, latents, device)
        labels = torch.tensor(class_ids, device=device)
        self._check_scheduler(self.scheduler)
        scheduler = self._sampling_scheduler()
        scheduler.set_timesteps(num_inference_steps, device=device)
        starts = range(0, num_images, batch_size)

        # 3. Denoise and decode batch by batch
        chunks = []
        with self.progress_bar(total=len(starts) * len(scheduler.timesteps)) as progress:
            for start in starts:
                part = slice(start, start + batch_size)
                part_generator = generator[part] if isinstance(generator, list) else generator
                x = self._denoise(
                    scheduler, latents[part], labels[part], guidance_scale, guided_channels, guidance_interval,
                    num_inference_steps, part_generator, progress,
                )
                chunks.append(self._postprocess(self._decode(x), output_type))

        # 4. Output
        if output_type == "pil":
            images = [image for chunk in chunks for image in chunk]
        elif output_type == "np":
            images = np.concatenate(chunks)
        else:
            images = torch.cat(chunks)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def check_inputs(
        self,
        num_images: int,
        guidance_scale: float,
        guided_channels: int,
        guidance_interval: tuple[float, float],
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        num_inference_steps: int,
        batch_size: int,
        output_type: str,
    ) -> None:
        """Raise a ValueError naming the first argument of ``__call__`` that cannot be used (diffusers' hook)."""
        if num_images == 0:
            raise ValueError("class_labels is empty: give at least one class")
        if not isinstance(num_inference_steps, Integral) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        check_guidance_interval(guidance_interval)
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(_OUTPUT_TYPES)}, got {output_type!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        channels = self.transformer.config.in_channels
        if not 1 <= guided_channels <= channels:
            raise ValueError(f"guided_channels must be in 1..{channels}, got {guided_channels}")
        if isinstance(generator, list) and len(generator) != num_images:
            raise ValueError(f"got {len(generator)} generators for {num_images} images: give one per image")
        shape = (num_images, channels, *self.transformer.sample_hw)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")

    def prepare_latents(
        self,
        num_images: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        """The initial noise ``(N, C, H, W)`` of every image, drawn at once (or ``latents``), in the model's dtype."""
        dtype = self.transformer.dtype
        if latents is None:
            shape = (num_images, self.transformer.config.in_channels, *self.transformer.sample_hw)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return latents.to(device=device, dtype=dtype)

    def _denoise(
        self,
        scheduler: SchedulerMixin,
        x: torch.Tensor,
        labels: torch.Tensor,
        guidance_scale: float,
        guided_channels: int,
        guidance_interval: tuple[float, float],
        num_inference_steps: int,
        generator,
        progress,
    ) -> torch.Tensor:
        """The scheduler loop for one batch: ``(B, C, H, W)`` noise to ``(B, C, H, W)`` samples."""
        channels = self.transformer.config.in_channels
        null = torch.full_like(labels, self.transformer.config.num_classes)
        guided = guidance_scale not in (0, 1)  # 1: conditional model only, 0: unconditional model only
        pair = torch.cat([labels, null])  # (2B,): conditional and unconditional halves
        if guidance_scale == 0:
            labels = null
        lo, hi = guidance_interval
        step_kwargs = {}
        if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs["generator"] = generator
        passes_variance = self._passes_variance(scheduler)

        scheduler.set_timesteps(num_inference_steps, device=x.device)  # also resets multistep state
        x = x * getattr(scheduler, "init_noise_sigma", 1.0)  # flow-matching schedulers start at unit noise
        for t in scheduler.timesteps:
            # (B, C, H, W); flow-matching schedulers feed the model x as it is
            model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            guide = guided and lo <= float(t) / scheduler.config.num_train_timesteps <= hi
            if guide:
                model_input = torch.cat([model_input, model_input])  # (2B, C, H, W)
            timestep = torch.as_tensor(t, device=x.device).expand(model_input.shape[0])
            out = self.transformer(model_input, timestep, pair if guide else labels).sample  # (2B or B, C|2C, H, W)

            if guide:
                cond, uncond = out.chunk(2)
                k = guided_channels
                eps = uncond[:, :k] + guidance_scale * (cond[:, :k] - uncond[:, :k])
                out = torch.cat([eps, cond[:, k:]], dim=1)  # rest of eps and the variance: conditional
            if out.shape[1] != channels and not passes_variance:
                out = out[:, :channels]  # the scheduler has no use for the learned variance
            x = scheduler.step(out, t, x, **step_kwargs).prev_sample
            progress.update()
        return x

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents to images in ``[-1, 1]`` with the VAE; pixel-space samples are images already."""
        if self.vae is None:
            return x
        from sdt_gen.data.vae import decode_latents

        return decode_latents(self.vae, x)

    def _postprocess(self, images: torch.Tensor, output_type: str):
        images = (images / 2 + 0.5).clamp(0, 1)  # (B, 3, H, W)
        if output_type == "pt":
            return images
        images = images.cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, 3)
        return self.numpy_to_pil(images) if output_type == "pil" else images
