"""Cost of spatial decay: attention forward+backward, decay `cag` and `fixed` against `none`.

Times one SpatialDecayAttention layer (fused qkv, gate, attention, output projection) for the
S/2 and XL/2 widths at 256px (N=256 tokens) and 512px (N=1024), and the memory it keeps for
backward (peak CUDA memory on a GPU). Everything is measured in one run and reported as ratios
to decay mode `none`, so the numbers compare across machines.

    python benchmarks/bench_attention.py                    # CPU defaults
    python benchmarks/bench_attention.py --backend flex     # on CUDA: the fused FlexAttention path
"""

import argparse
import time

import torch

from sdt_gen.layers import SpatialDecayAttention

SHAPES = {"S/2": (384, 6), "XL/2": (1152, 16)}
GRIDS = {256: (16, 16), 1024: (32, 32)}


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward while running ``fn``."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def measure(layer, x, grid, iters: int):
    def step():
        return layer(x, grid)

    for _ in range(2):  # warm-up (and compilation on CUDA)
        step().square().mean().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        mem, out = saved_bytes(step)
        out.square().mean().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
        mem = torch.cuda.max_memory_allocated()
    return (time.perf_counter() - start) / iters, mem


def main(args):
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, backend {args.backend}, dtype {args.dtype}, threads {torch.get_num_threads()}")
    print("| shape | tokens | batch | mode | time / none | memory / none | ms | MiB |")
    print("|---|---|---|---|---|---|---|---|")
    dtype = getattr(torch, args.dtype)
    for shape, (dim, heads) in SHAPES.items():
        for tokens, grid in GRIDS.items():
            batch = max(1, args.tokens_per_batch // tokens * 384 // dim)
            x = torch.randn(batch, tokens, dim, device=device, dtype=dtype, requires_grad=True)
            results = {}
            for mode in ("none", "fixed", "cag"):
                layer = SpatialDecayAttention(dim, heads, decay_mode=mode, attention_backend=args.backend)
                results[mode] = measure(layer.to(device, dtype), x, grid, args.iters)
            base_time, base_mem = results["none"]
            for mode, (seconds, mem) in results.items():
                print(
                    f"| {shape} | {tokens} | {batch} | {mode} | {seconds / base_time:.2f}x | {mem / base_mem:.2f}x "
                    f"| {seconds * 1e3:.1f} | {mem / 2**20:.0f} |"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device to run on")
    parser.add_argument("--backend", default="auto", choices=["sdpa", "flex", "auto"], help="attention backend")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="activation dtype")
    parser.add_argument("--tokens-per-batch", type=int, default=2048, help="batch size * tokens at S/2 width")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per setting")
    main(parser.parse_args())
