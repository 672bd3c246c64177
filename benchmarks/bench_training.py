"""Training throughput: the bundled data shapes by decay mode, and latents on the fly vs pre-extracted.

Times full optimizer steps (DiT's hybrid loss, AdamW) in one run:
1. the bundled default (SDT-Ti/2 on 16 px digits, batch 64), the decay study's shape (SDT-Ti/4 on
   32 px MNIST, batch 32) and SDT-Ti/2 on 32 px (256 tokens, batch 32), with decay `cag`, `fixed` and `none`;
2. an SDT-S/2 latent model fed by an SD-VAE-shaped encoder on the fly (random weights: the same
   cost as sd-vae-ft-ema) against the same model reading pre-extracted latents (fast-DiT);
3. with ``--compile``: the decay's cost eager and under ``torch.compile`` (SiT's flow loss, AdamW), 32 px
   MNIST-shaped batches at 64 tokens (SDT-Ti/4) and 256 tokens (SDT-Ti/2), every variant timed in turns
   (``--repeats`` rounds, median), in CPU time, so the ratios hold on a machine shared with other jobs;
4. with ``--arms``: the 256-token decay study's arms (decay mode and position embedding, SDT-Ti/2 on 32 px,
   SiT's flow loss, batch 32), eager, timed in turns in CPU time as the compile table.

    python benchmarks/bench_training.py                     # CPU defaults (latent part at 128 px)
    python benchmarks/bench_training.py --image-size 256 --latent-batch 32
    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --compile --only
    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --arms none cag rope rope+cag --only
"""

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL

from sdt_gen import SDTTransformer2DModel
from sdt_gen.data import encode_images
from sdt_gen.diffusion import DiffusionLoss, make_objective, uniform_timesteps

from decay_study import parse_arm

DECAY_MODES = ("none", "fixed", "cag")


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


def flow_training_step(model, batch: int, size: int):
    """One AdamW step of ``model`` under SiT's loss on a fixed random batch, as a function of nothing."""
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(batch, 1, size, size, generator=g), torch.randn(batch, 1, size, size, generator=g)
    t, y = torch.rand(batch, generator=g) * 1000, torch.randint(0, 10, (batch,), generator=g)
    loss_fn = make_objective("flow", learn_sigma=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss_fn(model, x, t, {"class_labels": y}, noise)["loss"].mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def mnist_model(preset: str, **settings) -> SDTTransformer2DModel:
    """The decay study's denoiser shape (32 px, one channel, 10 classes, flow) with ``settings`` on top."""
    torch.manual_seed(0)
    return SDTTransformer2DModel.from_preset(
        preset, sample_size=32, in_channels=1, num_classes=10, objective="flow", learn_sigma=False,
        attention_backend="sdpa", **settings,
    )


def median_cpu_seconds(steps: dict, repeats: int, steps_per_round: int) -> dict:
    """Median CPU seconds per call of each step function, timed in turns so a busy spell hits every one alike."""
    seconds = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.process_time()
            for _ in range(steps_per_round):
                step()
            seconds[key].append((time.process_time() - start) / steps_per_round)
    return {key: statistics.median(values) for key, values in seconds.items()}


def study_arms_cost(args) -> None:
    """CPU seconds per training step of each decay-study arm at 256 tokens, as ratios to the first arm."""
    print(f"| tokens | model | arm | steps/s (CPU) | s/step (CPU) | time / {args.arms[0]} |")
    print("|---|---|---|---|---|---|")
    steps = {}
    for arm in args.arms:
        steps[arm] = flow_training_step(mnist_model("SDT-Ti/2", **parse_arm(arm)), args.mnist_batch, 32)
        for _ in range(2):
            steps[arm]()
    median = median_cpu_seconds(steps, args.repeats, args.steps)
    for arm in args.arms:
        print(f"| 256 | SDT-Ti/2 | {arm} | {1 / median[arm]:.2f} | {median[arm]:.3f} | "
              f"{median[arm] / median[args.arms[0]]:.2f}x |", flush=True)


def compiled_decay_cost(args) -> None:
    """CPU seconds per step of every decay mode, eager and compiled, as ratios to ``none`` of the same kind."""
    print("| tokens | model | decay | eager / eager none | compiled / compiled none | compiled / eager |")
    print("|---|---|---|---|---|---|")
    for tokens, preset in ((64, "SDT-Ti/4"), (256, "SDT-Ti/2")):
        steps = {}
        for mode in DECAY_MODES:
            for compiled in (False, True):
                model = mnist_model(preset, decay_mode=mode)
                step = flow_training_step(torch.compile(model) if compiled else model, args.mnist_batch, 32)
                for _ in range(2):  # compile and warm up
                    step()
                steps[mode, compiled] = step
        median = median_cpu_seconds(steps, args.repeats, args.steps)
        for mode in DECAY_MODES:
            print(f"| {tokens} | {preset} | {mode} | {median[mode, False] / median['none', False]:.2f}x | "
                  f"{median[mode, True] / median['none', True]:.2f}x | {median[mode, True] / median[mode, False]:.2f}x |",
                  flush=True)


def main(args):
    torch.manual_seed(0)
    print(f"threads {torch.get_num_threads()}")
    if args.compile:
        compiled_decay_cost(args)
    if args.arms:
        study_arms_cost(args)
    if args.only:
        return
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
    parser.add_argument("--compile", action="store_true", help="also the decay's cost eager vs torch.compile")
    parser.add_argument("--arms", nargs="+", metavar="ARM",
                        help="also the 256-token decay study's arms (none, cag, rope, rope+cag, ...), against the first")
    parser.add_argument("--only", action="store_true", help="only the tables of --compile and --arms")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the compile and arms tables (median)")
    args = parser.parse_args()
    if args.only and not (args.compile or args.arms):
        parser.error("--only needs --compile or --arms")
    for name in args.arms or ():
        try:
            parse_arm(name)
        except ValueError as error:
            parser.error(str(error))
    main(args)
