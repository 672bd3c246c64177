"""Sample class-conditional images from a saved SDT (or any SDTPipeline) model folder.

    python sample.py --model DIR --classes 207 360 "otter" --per-class 4 --guidance-scale 4 --steps 250 \\
        --scheduler ddpm --seed 0 --out grid.png
    python sample.py --model DIR --classes all --per-class 1 --out-dir samples/   # one PNG per image
    python eval_fid.py --samples-dir samples/ --metrics --classifier CLASSIFIER   # score them

Classes are ids or names (any comma-separated synonym of the model's id2label, case-insensitive).
A grid has one row per class with the class name beside it. Image ``i`` is drawn from its own
generator seeded ``image_seed(seed, i)`` (as in eval_fid.py), so results do not depend on ``--batch-size``.
--out-dir samples as eval_fid.py does (sdt_gen.metrics.sample_to_folder): the folder's sampling.json
records the settings, a rerun with the same ones draws only the missing images, and a run with
other settings into a folder that holds images is refused, naming the first setting that differs.
"""

import argparse
import sys
import time

import numpy as np
import torch

from sdt_gen import SDTPipeline
from sdt_gen.metrics import SamplingStopped, draw_samples, existing_samples, sample_to_folder
from sdt_gen.pipelines import SCHEDULERS, chosen_scheduler, image_seed
from sdt_gen.training import PREEMPTED_EXIT_CODE, PreemptionHandler
from sdt_gen.cli import add_sampling_arguments, non_negative_int, positive_int, run_main, warn_if_cpu_busy


def sample_into_folder(pipe: SDTPipeline, labels: list[int], args, preemption: PreemptionHandler) -> int:
    """Draws the images missing in --out-dir (a folder of other settings is refused); returns how many were there."""
    kept = sum(index < len(labels) for index in existing_samples(args.out_dir))
    try:
        sample_to_folder(pipe, args.out_dir, len(labels), labels=labels, seed=args.seed,
                         guidance_scale=args.guidance_scale, guided_channels=args.guided_channels,
                         guidance_interval=args.guidance_interval, num_inference_steps=args.steps,
                         batch_size=args.batch_size, stop_requested=lambda: preemption.received is not None)
    except SamplingStopped as stopped:
        print(f"{stopped} (exit status {PREEMPTED_EXIT_CODE})", file=sys.stderr)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    return kept


def draw_grid_images(pipe: SDTPipeline, labels: list[int], args, preemption: PreemptionHandler) -> np.ndarray:
    """Every image of the grid as uint8 (N, C, H, W), batch by batch; a stop request exits with nothing kept."""
    batches = []
    for first in range(0, len(labels), args.batch_size):
        batch = range(first, min(first + args.batch_size, len(labels)))
        batches.append(draw_samples(pipe, [labels[i] for i in batch], [image_seed(args.seed, i) for i in batch],
                                    args.guidance_scale, args.guided_channels, args.guidance_interval, args.steps))
        if preemption.received is not None and batch.stop < len(labels):
            print("stopped by a signal: a grid is written once every image is drawn, so nothing is kept; run the "
                  f"command again (exit status {PREEMPTED_EXIT_CODE})", file=sys.stderr)
            raise SystemExit(PREEMPTED_EXIT_CODE)
    return np.concatenate(batches).transpose(0, 3, 1, 2)  # (N, C, H, W)


def main(args):
    device = torch.device(args.device)
    # Loaded in --dtype: a cast after loading makes diffusers warn about modules kept in float32, even when none are.
    pipe = SDTPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device)
    pipe.transformer.set_attention_backend(args.attention_backend)
    warn_if_cpu_busy(device)  # after the checks of the model folder, which refuse in one line
    pipe.scheduler = chosen_scheduler(pipe.scheduler, args.scheduler, args.flow_shift)
    num_classes = pipe.transformer.config.num_classes
    classes = list(range(num_classes)) if args.classes == ["all"] else pipe.get_label_ids(args.classes)
    labels = [c for c in classes for _ in range(args.per_class)]

    # SIGTERM / SIGINT stop at a batch boundary; a folder keeps every image written so far.
    kept, start = 0, time.perf_counter()
    with PreemptionHandler() as preemption:
        if args.out_dir is not None:
            kept = sample_into_folder(pipe, labels, args, preemption)
        else:
            images = draw_grid_images(pipe, labels, args, preemption)
    seconds, drawn = time.perf_counter() - start, len(labels) - kept

    if args.out_dir is not None:
        where = f"{len(labels)} PNGs in {args.out_dir}" + (f" ({kept} from an earlier run)" if kept else "")
    else:
        from sdt_gen.visualize import make_grid_png

        make_grid_png(images, nrow=args.per_class, path=args.out, row_labels=[pipe.label_name(c) for c in classes])
        where = f"a {len(classes)}x{args.per_class} grid to {args.out}"
    print(
        f"wrote {where}; sampling {drawn} images ({args.steps} {type(pipe.scheduler).__name__} steps, "
        f"guidance {args.guidance_scale}) took {seconds:.1f}s ({drawn / seconds:.2f} images/s) on {device}, "
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
    output.add_argument("--out-dir", default=None, help="folder for one PNG per image instead of a grid; a rerun with "
                        "the same settings draws the missing ones, other settings are refused")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


if __name__ == "__main__":
    run_main(main, build_parser())
