"""Cost of spatial decay: attention forward+backward, decay `cag` and `fixed` against `none`.

Times one SpatialDecayAttention layer (fused qkv, gate, attention, output projection) for the
S/2 and XL/2 widths, by default at 256px (N=256 tokens) and 512px (N=1024), and the memory it keeps
for backward (peak CUDA memory on a GPU). Everything is measured in one run and reported as ratios
to decay mode `none`, so the numbers compare across machines.

    python benchmarks/bench_attention.py                    # CPU defaults
    python benchmarks/bench_attention.py --backend flex --tokens 256 1024 4096   # on CUDA: FlexAttention
    OMP_NUM_THREADS=1 python benchmarks/bench_attention.py --iters 3 --out docs/measurements   # the docs' table
    OMP_NUM_THREADS=1 python benchmarks/bench_attention.py --clock process   # steadier on a busy, shared CPU
"""

import argparse
import math
import time
from collections.abc import Callable

import torch

from sdt_gen.layers import DecayConfig, SpatialDecayAttention
from sdt_gen.provenance import RunRecord
from sdt_gen.tables import Column, Table

SHAPES = {"S/2": (384, 6), "XL/2": (1152, 16)}


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


def measure(layer, x, grid, iters: int, clock: Callable[[], float] = time.perf_counter):
    def step():
        return layer(x, grid)

    for _ in range(2):  # warm-up (and compilation on CUDA)
        step().square().mean().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = clock()
    for _ in range(iters):
        mem, out = saved_bytes(step)
        out.square().mean().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
        mem = torch.cuda.max_memory_allocated()
    return (clock() - start) / iters, mem


def attention_rows(device, backend: str, dtype, tokens=(256, 1024), tokens_per_batch: int = 2048, iters: int = 5,
                   clock: Callable[[], float] = time.perf_counter):
    """Time and memory of one layer per width, token count and decay mode, with ratios to ``none``.

    Args:
        clock: seconds as ``time.perf_counter`` (elapsed) or ``time.process_time`` (this process's CPU time: at one
            thread, what other programs on the cores do not inflate).
    """
    rows = []
    for shape, (dim, heads) in SHAPES.items():
        for count in tokens:
            side = math.isqrt(count)
            if side * side != count:
                raise ValueError(f"--tokens {count} is not a square grid; expected e.g. 256, 1024, 4096")
            batch = max(1, tokens_per_batch // count * 384 // dim)
            x = torch.randn(batch, count, dim, device=device, dtype=dtype, requires_grad=True)
            results = {}
            for mode in ("none", "fixed", "cag"):
                layer = SpatialDecayAttention(dim, heads, DecayConfig(mode=mode), backend=backend)
                results[mode] = measure(layer.to(device, dtype), x, (side, side), iters, clock)
            base_time, base_mem = results["none"]
            rows += [
                dict(shape=shape, tokens=count, batch=batch, mode=mode, time_ratio=seconds / base_time,
                     memory_ratio=mem / base_mem, ms=seconds * 1e3, mib=mem / 2**20)
                for mode, (seconds, mem) in results.items()
            ]
    return rows


def main(args):
    record = RunRecord.start()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, backend {args.backend}, dtype {args.dtype}, threads {torch.get_num_threads()}")
    clock = time.process_time if args.clock == "process" else time.perf_counter
    rows = attention_rows(device, args.backend, getattr(torch, args.dtype), args.tokens, args.tokens_per_batch,
                          args.iters, clock)
    # On the CPU the memory is what autograd keeps for backward; on CUDA the peak of the whole step.
    memory = "saved-for-backward" if device.type == "cpu" else "peak memory"
    columns = [Column("shape", "shape"), Column("tokens", "tokens"), Column("batch", "batch"), Column("mode", "mode"),
               Column("time / none", "time_ratio", "{:.2f}x"), Column(f"{memory} / none", "memory_ratio", "{:.2f}x"),
               Column("ms", "ms", "{:.1f}"), Column("MiB", "mib", "{:.0f}")]
    notes = (f"One layer's forward + backward on {device.type}, backend {args.backend}, {args.dtype}, mean of "
             f"{args.iters} iterations after 2 warm-up, {args.clock} time; ratios to decay none of the same shape.")
    Table("attention-layer", columns, rows, record.finish(), notes).publish(args.out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device to run on")
    parser.add_argument("--backend", default="auto", choices=["sdpa", "flex", "auto"], help="attention backend")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="activation dtype")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024], help="token counts (square grids)")
    parser.add_argument("--tokens-per-batch", type=int, default=2048, help="batch size * tokens at S/2 width")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per setting")
    parser.add_argument("--clock", default="wall", choices=["wall", "process"],
                        help="wall: elapsed time; process: this process's CPU time (CPU only; with one thread it "
                        "ignores other programs competing for the cores)")
    parser.add_argument("--out", help="folder to write the table as attention-layer.json with its provenance")
    main(parser.parse_args())
