"""Sampling throughput: SDTPipeline (decay `none`, `fixed`, `cag`) against diffusers' DiTPipeline.

One random diffusers DiT of the chosen preset's shape is converted with `from_dit` into SDT models
(`none` shares its weights exactly), and every pipeline samples the same batch with the same scheduler,
steps, guidance and (tiny, equal-cost) VAE. Runs are interleaved, so machine load drifts equally on
all pipelines; the table gives images/s and time ratios to DiTPipeline (median and best run), all
measured in one run. Target: decay `none` within 5% of DiTPipeline.

    python benchmarks/bench_sampling.py                                   # CPU default: S/2, 16x16 latents
    python benchmarks/bench_sampling.py --threads 1 --clock process       # steadier on a busy, shared CPU
    python benchmarks/bench_sampling.py --preset SDT-XL/2 --latent-size 32 --batch 32 --steps 50   # on a GPU
    python benchmarks/bench_sampling.py --threads 1 --clock process --repeats 5 --out docs/measurements
"""

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

from sdt_gen import SDT_PRESETS, SDTPipeline, SDTTransformer2DModel
from sdt_gen.diffusion import dit_schedule
from sdt_gen.pipelines import dit_scheduler
from sdt_gen.provenance import RunRecord
from sdt_gen.tables import Column, Table


def tiny_vae() -> AutoencoderKL:
    """A small random VAE (latent -> 2x pixels): the decode costs the same for every pipeline."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )


def make_scheduler(name: str):
    """DiT's schedule as a ``ddpm`` (the pipeline's sampler) or ``ddim`` sampler."""
    # DiTPipeline cannot run a learned-variance DDPM, so both sides use a fixed-variance sampler.
    if name == "ddpm":
        return dit_scheduler(learn_sigma=False)
    return DDIMScheduler(**dit_schedule())


def run_once(pipe, labels, args, device) -> float:
    generator = torch.Generator().manual_seed(0)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    pipe(labels, guidance_scale=args.guidance_scale, num_inference_steps=args.steps, generator=generator,
         output_type="pt")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def setting(args: argparse.Namespace) -> str:
    """What every pipeline of the table ran: shape, batch, sampler, guidance, runs and clock."""
    tokens = (args.latent_size // SDT_PRESETS[args.preset]["patch_size"]) ** 2
    return (f"{args.preset} shape, {tokens} tokens, batch {args.batch}, {args.steps} {args.scheduler} steps, "
            f"guidance {args.guidance_scale}, {args.repeats} interleaved runs, {args.clock} time")


def sampling_rows(args) -> list[dict]:
    """Time every pipeline on the same batch; one row per pipeline, ratios to DiTPipeline."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = SDT_PRESETS[args.preset]
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        num_attention_heads=preset["num_heads"], attention_head_dim=preset["hidden_size"] // preset["num_heads"],
        in_channels=4, out_channels=8, num_layers=preset["depth"], sample_size=args.latent_size,
        patch_size=preset["patch_size"], num_embeds_ada_norm=1000,  # DiTPipeline's null class is 1000
    ).eval()
    with torch.no_grad():  # one shared timestep/label embedder, as in every converted DiT checkpoint
        state = dit.state_dict()
        for key, value in state.items():
            if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    vae = tiny_vae().eval()
    pipes = {"DiTPipeline": DiTPipeline(transformer=dit, vae=vae, scheduler=make_scheduler(args.scheduler))}
    for mode in ("none", "fixed", "cag"):
        overrides = dict(decay_mode=mode, attention_backend=args.backend)
        if mode == "cag":
            overrides["decay_init"] = "rmt"  # a non-trivial gate; the cost does not depend on the init
        sdt = SDTTransformer2DModel.from_dit(dit, **overrides).eval()
        pipes[f"SDT {mode}"] = SDTPipeline(transformer=sdt, scheduler=make_scheduler(args.scheduler), vae=vae)
    for pipe in pipes.values():
        pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)

    labels = [i % 1000 for i in range(args.batch)]
    print(f"device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}, {setting(args)}")
    times = {name: [] for name in pipes}
    for name, pipe in pipes.items():  # warm-up (and kernel selection / compilation on CUDA)
        run_once(pipe, labels, args, device)
    for _ in range(args.repeats):
        for name, pipe in pipes.items():
            times[name].append(run_once(pipe, labels, args, device))

    base, base_best = statistics.median(times["DiTPipeline"]), min(times["DiTPipeline"])
    return [
        dict(pipeline=name, images_per_s=args.batch / statistics.median(runs),
             time_ratio=statistics.median(runs) / base, best_time_ratio=min(runs) / base_best,
             seconds=statistics.median(runs))
        for name, runs in times.items()
    ]


def main(args):
    record = RunRecord.start()
    rows = sampling_rows(args)
    columns = [Column("pipeline", "pipeline"), Column("images/s (median)", "images_per_s", "{:.2f}"),
               Column("time / DiTPipeline (median)", "time_ratio", "{:.3f}x"),
               Column("time / DiTPipeline (best run)", "best_time_ratio", "{:.3f}x"),
               Column("s per batch", "seconds", "{:.3f}")]
    Table("sampling", columns, rows, record.finish(),
          f"On {args.device}, {args.dtype}: {setting(args)}; the same random DiT converted to SDT, the same "
          "scheduler and VAE.").publish(args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="SDT-S/2", choices=sorted(SDT_PRESETS), help="transformer shape")
    parser.add_argument("--latent-size", type=int, default=16, help="latent side (32 = 256px images)")
    parser.add_argument("--batch", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--steps", type=int, default=5, help="denoising steps")
    parser.add_argument("--scheduler", default="ddim", choices=["ddim", "ddpm"], help="sampler used by all pipelines")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="> 1 doubles the batch in both pipelines")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per pipeline")
    parser.add_argument("--backend", default="auto", choices=["sdpa", "flex", "auto"], help="SDT attention backend")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--clock", default="wall", choices=["wall", "process"],
                        help="wall: elapsed time; process: this process's CPU time (CPU only; with --threads 1 it "
                        "ignores other programs competing for the cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device to run on")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights dtype")
    parser.add_argument("--out", help="folder to write the table as sampling.json with its provenance")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
