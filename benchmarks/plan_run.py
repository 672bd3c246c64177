"""The cost of a denoiser training run before paying for it: FLOPs, memory per GPU, GPU-hours.

    python benchmarks/plan_run.py --model SDT-XL/2 --decay-mode cag --image-size 256
    python benchmarks/plan_run.py --model SDT-B/2 --batch 256 --steps 400000 --gpus 8 --mfu 0.4 --gpu h100
    python benchmarks/plan_run.py --model SDT-XL/2 SDT-B/2 --decay-mode none cag --out docs/measurements

One table compares every ``--model`` x ``--decay-mode`` (``plan-run``); with one of each, a second table gives that
plan's items one by one (``plan-run-details``).

Everything is counted on the meta device (no weights, no compute, a few seconds for XL): FLOPs with
``torch.utils.flop_counter.FlopCounterMode`` over one image's forward and one training step (forward and
backward, the training attention path), attention forced onto SDPA's math path so its matmuls count.
Like DiT's Table 4, only matmuls count (the decay's elementwise bias, softmax, norms and activations do
not); GMACs are multiply-adds (DiT's "Gflops"), GFLOPs twice that. Memory: parameters, gradients and
AdamW state in float32 (mixed precision keeps float32 master weights), the EMA in float32, and the
activations saved for backward measured with ``saved_tensors_hooks`` on a bf16 model (plain attention as
the fused GPU kernels save it), with and without
gradient checkpointing (then one block's activations are alive again during its recomputation). Under
DDP every GPU holds all of it; under FSDP (``configs/accelerate/fsdp.yaml``) parameters, gradients,
optimizer state and EMA are sharded over the GPUs, activations are not. GPU-hours: the counted
training FLOPs of ``--steps`` steps of ``--batch`` images at ``--mfu`` of the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sdt_gen import SDT_PRESETS, SDTTransformer2DModel
from sdt_gen.layers import DECAY_MODES
from sdt_gen.provenance import RunRecord
from sdt_gen.tables import Column, Table

# Dense bf16 peak TFLOP/s (vendor data sheets, without sparsity).
GPU_PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "l40s": 362.0}
# DiT (Peebles & Xie 2023), Table 4: forward "Gflops" (multiply-adds) of one 256px image.
DIT_TABLE4_GMACS = {"SDT-S/2": 6.06, "SDT-B/2": 23.01, "SDT-L/2": 80.71, "SDT-XL/2": 118.64,
                    "SDT-B/4": 5.56, "SDT-XL/4": 29.05, "SDT-XL/8": 7.39}
VAE_DOWNSAMPLING, LATENT_CHANNELS = 8, 4  # SD-VAE: 256 px -> 32x32x4 latents
BYTES_FP32, BYTES_BF16 = 4, 2


def meta_model(preset: str, decay_mode: str, image_size: int, dtype=torch.float32) -> SDTTransformer2DModel:
    with torch.device("meta"):
        model = SDTTransformer2DModel.from_preset(
            preset, decay_mode=decay_mode, sample_size=image_size // VAE_DOWNSAMPLING, in_channels=LATENT_CHANNELS,
            attention_backend="sdpa",
        )
    return torch.nn.Module.to(model, dtype)  # all of it: diffusers' ``to`` warns about modules kept in float32


def meta_inputs(model: SDTTransformer2DModel, batch: int, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    with torch.device("meta"):
        return (torch.empty(batch, model.config.in_channels, *model.sample_hw, dtype=dtype),
                torch.zeros(batch, dtype=torch.long), torch.zeros(batch, dtype=torch.long))


def count_flops(preset: str, decay_mode: str, image_size: int) -> dict[str, int]:
    """Matmul FLOPs of one image: ``forward`` (inference), ``train_step`` (forward and backward)."""
    model = meta_model(preset, decay_mode, image_size)
    flops = {}
    for name, grad in (("forward", False), ("train_step", True)):
        counter = FlopCounterMode(display=False)
        with torch.set_grad_enabled(grad), sdpa_kernel(SDPBackend.MATH), counter:
            out = model(*meta_inputs(model, 1)).sample
            if grad:
                out.sum().backward()
        flops[name] = counter.get_total_flops()
    return flops


def saved_activation_bytes(preset: str, decay_mode: str, image_size: int, checkpointing: bool) -> int:
    """Bytes saved for backward by one bf16 image's forward (each storage once).

    The meta device runs SDPA's math path, which saves the ``(H, N, N)`` probabilities of plain attention; the
    fused GPU kernels (flash, memory-efficient) save an ``(H, N)`` float32 log-sum-exp instead, which is what is
    counted for them. The decayed training path (``blockwise_decay_attention``) saves nothing of size ``N x N``.
    """
    model = meta_model(preset, decay_mode, image_size, torch.bfloat16).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    tokens = model.grid_size[0] * model.grid_size[1]
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.requires_grad and tensor.grad_fn is None:  # a parameter: counted with the weights
            return tensor
        fused = tensor.dim() >= 2 and tensor.shape[-2:] == (tokens, tokens)
        nbytes = tensor[..., 0].numel() * BYTES_FP32 if fused else tensor.untyped_storage().nbytes()
        storages[id(tensor.untyped_storage())] = nbytes
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), sdpa_kernel(SDPBackend.MATH):
        model(*meta_inputs(model, 1, torch.bfloat16))
    return sum(storages.values())


def plan(model_name: str, decay_mode: str, args: argparse.Namespace) -> dict:
    """Every number of the tables for one model and decay mode, under the run of ``args`` (see ``build_parser``)."""
    model = meta_model(model_name, decay_mode, args.image_size)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model_name, decay_mode, args.image_size)
    plain = count_flops(model_name, "none", args.image_size)
    full = saved_activation_bytes(model_name, decay_mode, args.image_size, checkpointing=False)
    checkpointed = saved_activation_bytes(model_name, decay_mode, args.image_size, checkpointing=True)
    # Recomputing a block makes its own activations alive again: the largest block's share, as an average.
    checkpointed += full // model.config.depth
    per_gpu_batch = args.batch / args.gpus
    state = {"parameters": BYTES_FP32, "gradients": BYTES_FP32, "AdamW": 2 * BYTES_FP32, "EMA": BYTES_FP32}
    state_bytes = {name: size * params for name, size in state.items()}
    activations = {"full": full * per_gpu_batch, "checkpointed": checkpointed * per_gpu_batch}
    # DDP keeps all the state on every GPU, FSDP a 1/gpus shard of it; activations are per GPU under both.
    memory = {strategy: {kind: sum(state_bytes.values()) / shards + held for kind, held in activations.items()}
              for strategy, shards in (("DDP", 1), ("FSDP", args.gpus))}
    total_flops = flops["train_step"] * args.batch * args.steps
    seconds = total_flops / (args.gpus * GPU_PEAK_TFLOPS[args.gpu] * 1e12 * args.mfu)
    return {
        "params": params, "flops": flops, "decay_share": 1 - plain["forward"] / flops["forward"],
        "state_bytes": state_bytes, "activation_bytes": activations, "memory_per_gpu": memory,
        "per_gpu_batch": per_gpu_batch, "total_flops": total_flops,
        "hours": seconds / 3600, "gpu_hours": seconds * args.gpus / 3600,
    }


def run_setting(args: argparse.Namespace) -> str:
    """The run every row plans: image size, batch over GPUs, utilisation, steps."""
    side = args.image_size // VAE_DOWNSAMPLING
    return (f"{args.image_size} px ({side}x{side}x{LATENT_CHANNELS} latents), batch {args.batch} on {args.gpus} "
            f"{args.gpu.upper()} ({args.mfu:.0%} MFU of {GPU_PEAK_TFLOPS[args.gpu]:g} TFLOP/s bf16), "
            f"{args.steps:,} steps")


def dit_gmacs(model_name: str, image_size: int) -> float | None:
    """DiT's published forward GMACs of this shape, where Table 4 has it (256 px only)."""
    return DIT_TABLE4_GMACS.get(model_name) if image_size == 256 else None


def comparison_table(plans: dict[tuple[str, str], dict], args: argparse.Namespace, record: RunRecord) -> Table:
    """One row per model and decay mode: size, FLOPs, memory per GPU, GPU-hours."""
    gib = 2**30
    rows = []
    for (model_name, decay_mode), numbers in plans.items():
        memory = numbers["memory_per_gpu"]
        row = dict(
            model=f"DiT-{model_name.removeprefix('SDT-')} ({model_name} `none`)" if decay_mode == "none"
            else f"{model_name} `{decay_mode}`",
            preset=model_name, decay_mode=decay_mode, params_m=numbers["params"] / 1e6,
            forward_gmacs=numbers["flops"]["forward"] / 2e9, train_step_gmacs=numbers["flops"]["train_step"] / 2e9,
            decay_share=numbers["decay_share"], gpu_hours=numbers["gpu_hours"],
            **{f"{strategy}_{kind}_gib": memory[strategy][kind] / gib for strategy in memory
               for kind in ("full", "checkpointed")},
        )
        # DiT's figure beside its own architecture only: the decayed rows differ from it by design.
        dit = dit_gmacs(model_name, args.image_size) if decay_mode == "none" else None
        row["forward"] = f"{row['forward_gmacs']:.2f}" + (f" (DiT: {dit})" if dit else "")
        for strategy in memory:
            row[strategy] = f"{row[f'{strategy}_full_gib']:.1f} ({row[f'{strategy}_checkpointed_gib']:.1f})"
        rows.append(row)
    columns = [Column("model", "model"), Column("params", "params_m", "{:.1f} M"),
               Column("forward GMACs", "forward"), Column("train step GMACs", "train_step_gmacs", "{:.2f}"),
               Column("decay share", "decay_share", "{:.2%}"), Column("GiB/GPU DDP (ckpt)", "DDP"),
               Column("GiB/GPU FSDP (ckpt)", "FSDP"), Column("GPU-hours", "gpu_hours", "{:,.0f}")]
    return Table("plan-run", columns, rows, record.finish(),
                 f"{run_setting(args)}. GMACs: multiply-adds of one image, matmuls only (DiT's Table 4); memory: fp32 "
                 "parameters, gradients, AdamW and EMA, bf16 activations; ckpt: with gradient checkpointing.")


def details_table(model_name: str, decay_mode: str, numbers: dict, args: argparse.Namespace,
                  record: RunRecord) -> Table:
    """The items of one plan, one row each."""
    gib = 2**30
    flops, state, activations = numbers["flops"], numbers["state_bytes"], numbers["activation_bytes"]
    dit = dit_gmacs(model_name, args.image_size)
    state_total = sum(state.values())
    rows = [
        ("parameters", f"{numbers['params'] / 1e6:.1f} M"),
        ("forward, one image", f"{flops['forward'] / 2e9:.2f} GMACs = {flops['forward'] / 1e9:.2f} GFLOPs"
         + (f" (DiT's Table 4: {dit} GMACs)" if dit else "")),
        ("training step, one image (forward + backward)",
         f"{flops['train_step'] / 2e9:.2f} GMACs = {flops['train_step'] / 1e9:.2f} GFLOPs"),
        ("decay's share of the forward FLOPs", f"{numbers['decay_share']:.2%}"),
        (f"{', '.join(state)} (fp32)",
         " + ".join(f"{v / gib:.2f}" for v in state.values()) + f" = {state_total / gib:.2f} GiB"),
        (f"activations, {numbers['per_gpu_batch']:g} images per GPU (bf16)",
         f"{activations['full'] / gib:.1f} GiB; with gradient checkpointing "
         f"{activations['checkpointed'] / gib:.1f} GiB"),
        *((f"memory per GPU, {strategy}",
           f"{held['full'] / gib:.1f} GiB; with checkpointing {held['checkpointed'] / gib:.1f} GiB")
          for strategy, held in numbers["memory_per_gpu"].items()),
        (f"training FLOPs, {args.steps:,} steps", f"{numbers['total_flops']:.3g}"),
        ("time", f"{numbers['hours']:.1f} h on {args.gpus} GPUs = {numbers['gpu_hours']:,.0f} GPU-hours"),
    ]
    return Table("plan-run-details", [Column("quantity", "quantity"), Column("value", "value")],
                 [dict(quantity=quantity, value=value) for quantity, value in rows], record.finish(),
                 f"{model_name}, decay {decay_mode}, {run_setting(args)}.")


def main(args: argparse.Namespace) -> None:
    record = RunRecord.start()
    plans = {(model_name, decay_mode): plan(model_name, decay_mode, args)
             for model_name in args.model for decay_mode in args.decay_mode}
    comparison_table(plans, args, record).publish(args.out)
    if len(plans) == 1:
        [((model_name, decay_mode), numbers)] = plans.items()
        details_table(model_name, decay_mode, numbers, args, record).publish(args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["SDT-XL/2"], choices=list(SDT_PRESETS), help="denoiser preset(s)")
    p.add_argument("--decay-mode", nargs="+", default=["cag"], choices=DECAY_MODES, help="decay mode(s)")
    p.add_argument("--image-size", type=int, default=256, help="pixels (SD-VAE latents are 8x smaller)")
    p.add_argument("--batch", type=int, default=256, help="global batch (DiT: 256)")
    p.add_argument("--steps", type=int, default=400_000, help="training steps (DiT-XL/2's first table: 400K)")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu", default="h100", choices=list(GPU_PEAK_TFLOPS), help="for its dense bf16 peak")
    p.add_argument("--mfu", type=float, default=0.4, help="model-FLOPs utilisation reached")
    p.add_argument("--out", help="folder to write the tables as plan-run.json (and plan-run-details.json) with their "
                   "provenance")
    return p


if __name__ == "__main__":
    main(build_parser().parse_args())
