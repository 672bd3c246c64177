"""Training throughput: the bundled data shapes by decay mode, and latents on the fly vs pre-extracted.

Times full optimizer steps (DiT's hybrid loss, AdamW) in one run:
1. the bundled default (SDT-Ti/2 on 16 px digits, batch 64), the decay study's shape (SDT-Ti/4 on
   32 px MNIST, batch 32) and SDT-Ti/2 on 32 px (256 tokens, batch 32), with decay `cag`, `fixed` and `none`;
2. an SDT-S/2 latent model fed by an SD-VAE-shaped encoder on the fly (random weights: the same
   cost as sd-vae-ft-ema) against the same model reading pre-extracted latents (fast-DiT).

    python benchmarks/bench_training.py                     # CPU defaults (latent part at 128 px)
    python benchmarks/bench_training.py --image-size 256 --latent-batch 32
"""

import argparse
import time

import torch
from diffusers import AutoencoderKL

from sdt_gen import SDTTransformer2DModel
from sdt_gen.data import encode_images
from sdt_gen.diffusion import DiffusionLoss, uniform_timesteps


def time_steps(model, batch_fn, steps: int, warmup: int = 2, autocast_dtype: torch.dtype | None = None) -> float:
    """Seconds per optimizer step of ``model`` (ours or diffusers' DiT) on batches from ``batch_fn``."""
    # diffusers' DiT has no learn_sigma: it learns the variance when it outputs twice its input channels.
    learn_sigma = model.config.get("learn_sigma", model.config.get("out_channels") == 2 * model.config["in_channels"])
    loss_fn = DiffusionLoss(learn_sigma=learn_sigma)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device = next(model.parameters()).device
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = batch_fn()
        t = uniform_timesteps(x.shape[0], loss_fn.num_timesteps, x.device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = loss_fn(model, x, t, model_kwargs=dict(class_labels=y))["loss"].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(args):
    torch.manual_seed(0)
    print(f"threads {torch.get_num_threads()}")
    print("| setting | batch | steps/s | images/s | time / baseline |")
    print("|---|---|---|---|---|")

    def report(name, batch, seconds, baseline):
        print(f"| {name} | {batch} | {1 / seconds:.2f} | {batch / seconds:.1f} | {seconds / baseline:.2f}x |")

    for data, preset, size, batch in (
        ("digits", "SDT-Ti/2", 16, args.digits_batch), ("MNIST 32px", "SDT-Ti/4", 32, args.mnist_batch),
        ("32px, 256 tokens", "SDT-Ti/2", 32, args.mnist_batch),
    ):
        images = torch.rand(batch, 1, size, size) * 2 - 1
        labels = torch.randint(0, 10, (batch,))
        results = {}
        for mode in ("none", "fixed", "cag"):
            model = SDTTransformer2DModel.from_preset(
                preset, sample_size=size, in_channels=1, num_classes=10, decay_mode=mode
            )
            results[mode] = time_steps(model, lambda: (images, labels), args.steps)
        for mode, seconds in results.items():
            report(f"{data} {preset}, decay {mode}", batch, seconds, results["none"])

    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval().requires_grad_(False)
    side = args.image_size // 8
    model = SDTTransformer2DModel.from_preset("SDT-S/2", sample_size=side, num_classes=1000)
    images = torch.rand(args.latent_batch, 3, args.image_size, args.image_size) * 2 - 1
    latents = encode_images(vae, images)
    labels = torch.randint(0, 1000, (args.latent_batch,))
    on_the_fly = time_steps(model, lambda: (encode_images(vae, images), labels), args.steps)
    extracted = time_steps(model, lambda: (latents, labels), args.steps)
    report(f"SDT-S/2 {args.image_size}px, VAE on the fly", args.latent_batch, on_the_fly, on_the_fly)
    report(f"SDT-S/2 {args.image_size}px, pre-extracted latents", args.latent_batch, extracted, on_the_fly)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--digits-batch", type=int, default=64, help="batch of the digits runs (the default's)")
    parser.add_argument("--mnist-batch", type=int, default=32, help="batch of the MNIST runs (the decay study's)")
    parser.add_argument("--image-size", type=int, default=128, help="pixel size of the latent runs")
    parser.add_argument("--latent-batch", type=int, default=4, help="batch of the latent runs")
    main(parser.parse_args())
