"""Sample class-conditional images from a saved SDT (or any SDTPipeline) model folder.

    python sample.py --model DIR --classes 207 360 "otter" --per-class 4 --guidance-scale 4 --steps 250 \\
        --scheduler ddpm --seed 0 --out grid.png
    python sample.py --model DIR --classes all --per-class 1 --out-dir samples/   # one PNG per image
    python eval_fid.py --samples-dir samples/ --metrics --classifier CLASSIFIER   # score them

Classes are ids or names (any comma-separated synonym of the model's id2label, case-insensitive).
A grid has one row per class with the class name beside it. Image ``i`` is drawn from its own
generator seeded ``image_seed(seed, i)`` (as in eval_fid.py), so results do not depend on ``--batch-size``.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from sdt_gen import SDTPipeline
from sdt_gen.files import atomic_file
from sdt_gen.metrics import sample_file_name
from sdt_gen.pipelines import SCHEDULERS, chosen_scheduler, image_seed
from sdt_gen.training import PREEMPTED_EXIT_CODE, PreemptionHandler
from sdt_gen.cli import add_sampling_arguments, non_negative_int, positive_int, run_main


def main(args):
    device = torch.device(args.device)
    # Cast after loading: diffusers renamed from_pretrained's torch_dtype to dtype (0.42 warns on every load).
    pipe = SDTPipeline.from_pretrained(args.model).to(device, getattr(torch, args.dtype))
    pipe.transformer.set_attention_backend(args.attention_backend)
    pipe.scheduler = chosen_scheduler(pipe.scheduler, args.scheduler, args.flow_shift)
    num_classes = pipe.transformer.config.num_classes
    classes = list(range(num_classes)) if args.classes == ["all"] else pipe.get_label_ids(args.classes)
    labels = [c for c in classes for _ in range(args.per_class)]
    out_dir = Path(args.out_dir) if args.out_dir is not None else None
    paths = [out_dir / sample_file_name(i, label, pipe.label_name(label)) for i, label in enumerate(labels)] if out_dir else []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    # Batch by batch, so SIGTERM / SIGINT stop at a batch boundary with every image written so far kept.
    images, start = [], time.perf_counter()
    with PreemptionHandler() as preemption:
        for first in range(0, len(labels), args.batch_size):
            batch = range(first, min(first + args.batch_size, len(labels)))
            if paths and all(paths[i].is_file() for i in batch):  # drawn by an earlier, stopped run
                images += [Image.open(paths[i]).copy() for i in batch]
                continue
            drawn = pipe(
                [labels[i] for i in batch],
                guidance_scale=args.guidance_scale,
                guided_channels=args.guided_channels,
                guidance_interval=args.guidance_interval,
                generator=[torch.Generator().manual_seed(image_seed(args.seed, i)) for i in batch],
                num_inference_steps=args.steps,
                batch_size=len(batch),
            ).images
            for i, image in zip(batch, drawn):
                if paths:
                    with atomic_file(paths[i]) as partial:
                        image.save(partial, format="PNG")
            images += drawn
            if preemption.received is not None and batch.stop < len(labels):
                if paths:
                    kept = f"{batch.stop} of {len(labels)} images are in {out_dir}; run the same command again to continue"
                else:
                    kept = "a grid is written once every image is drawn, so nothing is kept; run the command again"
                print(f"stopped by a signal: {kept} (exit status {PREEMPTED_EXIT_CODE})", file=sys.stderr)
                raise SystemExit(PREEMPTED_EXIT_CODE)
    seconds = time.perf_counter() - start

    if out_dir is not None:
        where = f"{len(images)} PNGs in {out_dir}"
    else:
        from sdt_gen.visualize import make_grid_png

        make_grid_png(images, nrow=args.per_class, path=args.out, row_labels=[pipe.label_name(c) for c in classes])
        where = f"a {len(classes)}x{args.per_class} grid to {args.out}"
    print(
        f"wrote {where}; sampling {len(images)} images ({args.steps} {type(pipe.scheduler).__name__} steps, "
        f"guidance {args.guidance_scale}) took {seconds:.1f}s ({len(images) / seconds:.2f} images/s) on {device}, "
        f"attention {pipe.transformer.attention_backend_summary()}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved pipeline folder (SDTPipeline.save_pretrained)")
    parser.add_argument("--classes", nargs="+", required=True, help='class ids or names, or "all"')
    parser.add_argument("--per-class", type=positive_int, default=1, help="images per class (grid columns)")
    add_sampling_arguments(parser, guidance_scale=4.0, scheduler_names=SCHEDULERS, scheduler_default="the saved scheduler")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="base seed; image i uses seed * 1_000_003 + i, as eval_fid.py")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--out", default="grid.png", help="grid PNG, one row per class")
    output.add_argument("--out-dir", default=None, help="folder for one PNG per image instead of a grid")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


if __name__ == "__main__":
    run_main(main, build_parser())
