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
   SiT's flow loss, batch 32), eager, timed in turns in CPU time as the compile table;
5. with ``--compile-regions``: what ``train_dit.py --compile`` costs, the whole model under ``torch.compile``
   against its repeated blocks compiled one by one (``compile_repeated_blocks``, regional compilation), for
   SDT-Ti/2 and SDT-B/2 at 256 tokens (cag): compile time (CPU seconds of the first step beyond a compiled
   step; Inductor's caches off and its compile workers in-process, so every variant compiles from scratch in
   this process's clock) and the step time after, timed in turns.

    python benchmarks/bench_training.py                     # CPU defaults (latent part at 128 px)
    python benchmarks/bench_training.py --image-size 256 --latent-batch 32
    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --compile --only
    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --arms none cag rope rope+cag --only
    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --compile-regions --only
"""

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL

from sdt_gen import SDTTransformer2DModel
from sdt_gen.data import encode_images
from sdt_gen.diffusion import DiffusionLoss, make_objective, uniform_timesteps
from sdt_gen.provenance import RunRecord
from sdt_gen.studies.protocol import parse_arm
from sdt_gen.tables import Column, Table

DECAY_MODES = ("none", "fixed", "cag")


def time_steps(model, batch_fn, steps: int, warmup: int = 2, autocast_dtype: torch.dtype | None = None) -> float:
    """Seconds per optimizer step of ``model`` (ours or diffusers' DiT) on batches from ``batch_fn``: wall time on a
    GPU, this process's CPU time on the CPU (other jobs on the machine do not slow that clock down as much)."""
    clock = time.perf_counter if next(model.parameters()).device.type == "cuda" else time.process_time
    # diffusers' DiT has no learn_sigma: it learns the variance when it outputs twice its input channels.
    learn_sigma = model.config.get("learn_sigma", model.config.get("out_channels") == 2 * model.config["in_channels"])
    loss_fn = DiffusionLoss(learn_sigma=learn_sigma)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device = next(model.parameters()).device
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
        x, y = batch_fn()
        t = uniform_timesteps(x.shape[0], loss_fn.num_timesteps, x.device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = loss_fn(model, x, t, model_kwargs=dict(class_labels=y))["loss"].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (clock() - start) / steps


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


def study_arms_cost(args, record: RunRecord) -> Table:
    """CPU seconds per training step of each decay-study arm at 256 tokens, as ratios to the first arm."""
    steps = {}
    for arm in args.arms:
        steps[arm] = flow_training_step(mnist_model("SDT-Ti/2", **parse_arm(arm)), args.mnist_batch, 32)
        for _ in range(2):
            steps[arm]()
    median = median_cpu_seconds(steps, args.repeats, args.steps)
    rows = [dict(tokens=256, model="SDT-Ti/2", arm=arm, steps_per_second=1 / median[arm], seconds=median[arm],
                 ratio=median[arm] / median[args.arms[0]]) for arm in args.arms]
    columns = [Column("tokens", "tokens"), Column("model", "model"), Column("arm", "arm"),
               Column("steps/s (CPU)", "steps_per_second", "{:.2f}"), Column("s/step (CPU)", "seconds", "{:.3f}"),
               Column(f"time / {args.arms[0]}", "ratio", "{:.2f}x")]
    return Table("arms-cost", columns, rows, record.finish(),
                 f"CPU time per step, median of {args.repeats} rounds of {args.steps} steps, arms timed in turns.")


def compiled_decay_cost(args, record: RunRecord) -> Table:
    """CPU seconds per step of every decay mode, eager and compiled, as ratios to ``none`` of the same kind."""
    rows = []
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
        rows += [dict(tokens=tokens, model=preset, decay=mode, eager=median[mode, False] / median["none", False],
                      compiled=median[mode, True] / median["none", True],
                      compiled_over_eager=median[mode, True] / median[mode, False]) for mode in DECAY_MODES]
    columns = [Column("tokens", "tokens"), Column("model", "model"), Column("decay", "decay"),
               Column("eager / eager none", "eager", "{:.2f}x"),
               Column("compiled / compiled none", "compiled", "{:.2f}x"),
               Column("compiled / eager", "compiled_over_eager", "{:.2f}x")]
    return Table("compile", columns, rows, record.finish(),
                 f"CPU time per step, median of {args.repeats} rounds of {args.steps} steps, variants timed in turns.")


def compile_regions_cost(args, record: RunRecord) -> Table:
    """CPU seconds to compile and per step after it, whole model against its repeated blocks."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1  # compile workers in other processes would escape this process's clock
    # Each variant compiles from scratch, not from the graphs of the one before. (force_disable_caches would do it
    # too, but it also recompiles the whole model at every call in torch 2.14.)
    inductor_config.fx_graph_cache = functorch_config.enable_autograd_cache = False
    rows = []
    for preset in ("SDT-Ti/2", "SDT-B/2"):
        steps, compile_seconds = {}, {}
        for variant in ("eager", "whole model", "repeated blocks"):
            torch._dynamo.reset()
            model = mnist_model(preset, decay_mode="cag")
            if variant == "whole model":
                model = torch.compile(model)
            elif variant == "repeated blocks":
                model.compile_repeated_blocks()
            step = flow_training_step(model, args.mnist_batch, 32)
            start = time.process_time()
            step()  # compiles forward and backward
            first = time.process_time() - start
            start = time.process_time()
            step()
            compile_seconds[variant] = first - (time.process_time() - start)
            steps[variant] = step
        median = median_cpu_seconds(steps, args.repeats, args.steps)
        rows += [dict(tokens=256, model=preset, compiled=variant, compile_seconds=compile_seconds[variant],
                      seconds=median[variant], step_ratio=median[variant] / median["eager"],
                      compile_ratio=None if variant == "eager" else
                      compile_seconds[variant] / compile_seconds["whole model"]) for variant in steps]
    columns = [Column("tokens", "tokens"), Column("model", "model"), Column("compiled", "compiled"),
               Column("compile (CPU s)", "compile_seconds", "{:.1f}"), Column("s/step (CPU)", "seconds", "{:.3f}"),
               Column("step / eager", "step_ratio", "{:.2f}x"),
               Column("compile / whole model", "compile_ratio", "{:.2f}x")]
    return Table("compile-regions", columns, rows, record.finish(),
                 f"Decay cag, batch {args.mnist_batch}, SiT's loss and AdamW; compile time is the first step's CPU "
                 f"time beyond a compiled step; steps: median of {args.repeats} rounds of {args.steps}, in turns.")


def default_shapes_cost(args, record: RunRecord) -> Table:
    """Steps/s of the bundled data shapes by decay mode, and latents on the fly against pre-extracted."""
    rows = []
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
        rows += [dict(setting=f"{data} {preset}, decay {mode}", batch=batch, seconds=seconds,
                      ratio=seconds / results["none"]) for mode, seconds in results.items()]

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
    rows += [dict(setting=f"SDT-S/2 {args.image_size}px, VAE on the fly", batch=args.latent_batch, seconds=on_the_fly,
                  ratio=1.0),
             dict(setting=f"SDT-S/2 {args.image_size}px, pre-extracted latents", batch=args.latent_batch,
                  seconds=extracted, ratio=extracted / on_the_fly)]
    for row in rows:
        row.update(steps_per_second=1 / row["seconds"], images_per_second=row["batch"] / row["seconds"])
    columns = [Column("setting", "setting"), Column("batch", "batch"), Column("steps/s", "steps_per_second", "{:.2f}"),
               Column("images/s", "images_per_second", "{:.1f}"), Column("time / baseline", "ratio", "{:.2f}x")]
    return Table("training-steps", columns, rows, record.finish(),
                 f"CPU time (wall time on a GPU) of {args.steps} steps after 2 warm-up steps; the baseline is decay none of the same "
                 "shape, and the VAE on the fly for the latent rows.")


def main(args):
    torch.manual_seed(0)
    print(f"threads {torch.get_num_threads()}")
    tables = {"compile": compiled_decay_cost, "compile_regions": compile_regions_cost, "arms": study_arms_cost}
    for flag, measure in tables.items():
        if getattr(args, flag):
            measure(args, RunRecord.start()).publish(args.out)
    if not args.only:
        default_shapes_cost(args, RunRecord.start()).publish(args.out)


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
    parser.add_argument("--compile-regions", action="store_true",
                        help="also compile time and step time, whole model against repeated blocks")
    parser.add_argument("--only", action="store_true", help="only the tables of --compile, --compile-regions and --arms")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the compile and arms tables (median)")
    parser.add_argument("--out", help="folder to write each table as <name>.json with its provenance (the docs' "
                        "tables: docs/measurements)")
    args = parser.parse_args()
    if args.only and not (args.compile or args.compile_regions or args.arms):
        parser.error("--only needs --compile, --compile-regions or --arms")
    for name in args.arms or ():
        try:
            parse_arm(name)
        except ValueError as error:
            parser.error(str(error))
    main(args)
