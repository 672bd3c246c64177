"""Parameters and FLOPs of the SDT classifier presets, and CPU forward throughput per decay mode.

    python benchmarks/report_classifier_flops.py                       # every preset at 224px; SDT-H-T throughput
    python benchmarks/report_classifier_flops.py --presets SDT-H-T SDT-H-S --batch-size 8 --iters 10
    python benchmarks/report_classifier_flops.py --out docs/measurements   # the docs' tables, as JSON

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` for one 224px image on the meta
device (no weights, no compute), with attention forced onto SDPA's math path so that its matmuls are
counted. Only matmuls and convolutions count; the elementwise work of the decay bias, norms and
activations does not. ``GMACs`` is FLOPs / 2, the number papers (RMT, SDT) call "FLOPs".

Throughput is the forward pass of ``SDTForImageClassification`` (eval, ``torch.inference_mode``)
on this machine's CPU, with the decay modes interleaved round by round so that background load
affects each mode alike; the ratio is against decay ``none`` (plain attention). With decay ``none``
the attention core ignores ``decay_layout``, so SDT-H's decomposed stages 1-2 attend globally over
all 56x56 / 28x28 tokens: that baseline does more work than the axial ``fixed`` / ``cag`` stages.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sdt_gen import SDT_CLASSIFIER_PRESETS, SDTConfig, SDTForImageClassification
from sdt_gen.provenance import RunRecord
from sdt_gen.tables import Column, Table

DECAY_MODES = ("none", "fixed", "cag")


def count(preset: str, image_size: int, **overrides) -> tuple[int, int]:
    """``(parameters, forward FLOPs for one image)`` of a preset, on the meta device."""
    config = SDTConfig.from_preset(preset, image_size=image_size, **overrides)
    with torch.device("meta"):
        model = SDTForImageClassification(config).eval()
        pixels = torch.empty(1, config.num_channels, image_size, image_size)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(pixels)
    return params, counter.get_total_flops()


def throughput(preset: str, image_size: int, batch_size: int, iters: int, warmup: int) -> dict[str, float]:
    """Forward images/s on CPU of ``preset`` for every decay mode, measured interleaved."""
    torch.manual_seed(0)
    models = {
        mode: SDTForImageClassification(
            SDTConfig.from_preset(preset, image_size=image_size, decay_mode=mode)
        ).eval()
        for mode in DECAY_MODES
    }
    pixels = torch.randn(batch_size, 3, image_size, image_size)
    seconds = {mode: [] for mode in DECAY_MODES}
    with torch.inference_mode():
        for step in range(warmup + iters):
            for mode, model in models.items():
                start = time.perf_counter()
                model(pixels)
                if step >= warmup:
                    seconds[mode].append(time.perf_counter() - start)
    # The median over rounds: robust to a round slowed by other processes.
    return {mode: batch_size / sorted(t)[len(t) // 2] for mode, t in seconds.items()}


def size_row(params: int, flops: int) -> dict[str, float]:
    """The table values of a count: the raw numbers, and millions of parameters, GFLOPs and GMACs."""
    return dict(params=params, flops=flops, params_m=params / 1e6, gflops=flops / 1e9, gmacs=flops / 2e9)


def main(args: argparse.Namespace) -> None:
    record = RunRecord.start()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.image_size}px\n")
    rows = [dict(preset=preset, **size_row(*count(preset, args.image_size))) for preset in args.presets]
    columns = [Column("preset", "preset"), Column("params (M)", "params_m", "{:.2f}"),
               Column("GFLOPs", "gflops", "{:.2f}"), Column("GMACs", "gmacs", "{:.2f}")]
    Table("classifiers", columns, rows, record.finish(),
          f"Forward of one {args.image_size}px image, counted on the meta device: matmuls and convolutions only; "
          "GMACs = GFLOPs / 2 (what RMT and SDT call FLOPs).").publish(args.out)

    if not args.throughput_preset:
        return
    record = RunRecord.start()
    preset = args.throughput_preset
    rates = throughput(preset, args.image_size, args.batch_size, args.iters, args.warmup)
    rows = [dict(decay=mode, **size_row(*count(preset, args.image_size, decay_mode=mode)), images_per_s=rates[mode],
                 ratio=rates[mode] / rates["none"]) for mode in DECAY_MODES]
    columns = [Column("decay", "decay"), Column("params (M)", "params_m", "{:.3f}"), Column("GMACs", "gmacs", "{:.3f}"),
               Column("images/s", "images_per_s", "{:.2f}"), Column("ratio to none", "ratio", "{:.3f}")]
    Table("classifier-throughput", columns, rows, record.finish(),
          f"{preset}, forward on CPU at {args.image_size}px, batch {args.batch_size}, median of {args.iters} rounds "
          f"after {args.warmup} warm-up, the decay modes interleaved.").publish(args.out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = list(SDT_CLASSIFIER_PRESETS)
    parser.add_argument("--presets", nargs="+", default=names, choices=names)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--throughput-preset", default="SDT-H-T", help="preset timed per decay mode ('' to skip)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", help="folder to write the tables as classifiers.json and classifier-throughput.json "
                        "with their provenance")
    main(parser.parse_args())
