"""Convert one of DiT's original checkpoints into an ``SDTPipeline`` folder.

    python -m sdt_gen.convert DiT-XL-2-256x256.pt --vae /models/sd-vae-ft-ema --out pipelines/dit-xl-2-256
    python -m sdt_gen.convert results/000-DiT-XL-2/checkpoints/0400000.pt --weights model \\
        --vae /models/sd-vae-ft-ema --decay-mode cag --out pipelines/sdt-from-dit

The folder holds the converted transformer (DiT's function exactly, or SDT starting from it with
``--decay-mode cag``, whose decay starts at zero), DiT's 250-step sampler, the VAE and, for 1000
classes, ImageNet's class names; ``SDTPipeline.from_pretrained(out)`` loads it.
"""

from __future__ import annotations

import argparse

from sdt_gen.pipelines import SDTPipeline
from sdt_gen.cli import positive_int, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sdt_gen.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="DiT checkpoint: DiT-XL-2-256x256.pt, a DiT train.py checkpoint, or .safetensors")
    parser.add_argument("--out", required=True, help="pipeline folder to write (replaced only once complete)")
    parser.add_argument("--vae", help="the DiT's AutoencoderKL: a folder or Hub repo id (DiT: stabilityai/sd-vae-ft-ema)")
    parser.add_argument("--pixel-space", action="store_true",
                        help="the DiT was trained on pixels: convert without a VAE (otherwise --vae is required)")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="weights of a train.py checkpoint")
    parser.add_argument("--decay-mode", choices=["none", "fixed", "cag"], default="none",
                        help="attention of the converted model (none: DiT's function; cag starts at zero decay)")
    parser.add_argument("--num-heads", type=positive_int, help="attention heads; needed only for widths DiT has no preset of")
    return parser


def main(args: argparse.Namespace) -> SDTPipeline:
    overrides = {"num_heads": args.num_heads} if args.num_heads else {}
    pipe = SDTPipeline.from_dit_checkpoint(
        args.checkpoint, vae=args.vae, weights=args.weights, decay_mode=args.decay_mode, pixel_space=args.pixel_space,
        **overrides
    )
    pipe.save_pretrained_atomically(args.out)
    config = pipe.transformer.config
    print(
        f"wrote {args.out}: {type(pipe.transformer).__name__} depth {config.depth}, width {config.hidden_size}, "
        f"patch {config.patch_size}, {config.num_classes} classes, decay {config.decay_mode}"
    )
    return pipe


if __name__ == "__main__":
    run_main(main, build_parser())
