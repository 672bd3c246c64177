"""Guidance in a limited interval of noise levels against guidance at every step, on the digits.

Kynkäänniemi et al. (2024) found classifier-free guidance harmful at high noise (it collapses the
samples' variety) and useless at low noise; SiT, LightningDiT and EDM2 report their FIDs with guidance
only inside an interval. This scores ``SDTPipeline(..., guidance_interval=(lo, hi))`` (noise levels: 0
clean, 1 pure noise) for a DDPM and a flow model at a few guidance scales, in the evaluator classifier's
features (FD to all bundled digits, conditional accuracy), the same labels and seeds in every row. With
the models of ``benchmarks/objective_comparison.py``:

    python benchmarks/guidance_interval.py --ddpm results/objectives/000-SDT-Ti-2-digits/pipeline \\
        --flow results/objectives/001-SDT-Ti-2-digits-flow/pipeline --classifier classifiers/000-SDT-H-XT-digits/model

and on a model of the decay study (32x32 MNIST, scored against MNIST's train split in the study's evaluator):

    python benchmarks/guidance_interval.py --data mnist --flow studies/mnist-decay-256/runs/cag-s1/000-SDT-Ti-2-mnist32-flow/pipeline \\
        --classifier studies/mnist-decay-256/evaluator/000-SDT-H-XT-mnist32/model --steps 10 --guidance-scales 1.5 3
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from objective_comparison import digits_reference, scored_samples  # noqa: E402

from sdt_gen import SDTPipeline  # noqa: E402
from sdt_gen.data import MNISTDataset  # noqa: E402
from sdt_gen.metrics import ArrayImageDataset, TransformersImageClassifier, sample_labels  # noqa: E402
from sdt_gen.metrics.sampling import to_uint8  # noqa: E402
from sdt_gen.diffusion import objective_of  # noqa: E402
from sdt_gen.pipelines import check_guidance_interval, scheduler_by_name  # noqa: E402

def interval(text: str) -> tuple[float, float]:
    try:
        return check_guidance_interval(text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def reference_of(data: str, image_size: int) -> ArrayImageDataset:
    if data == "digits":
        return digits_reference(image_size)
    images = MNISTDataset("train", image_size=image_size).images
    return ArrayImageDataset(to_uint8((images[:, 0].numpy() + 1) / 2), source="MNIST train split")


def interval_rows(args) -> list[dict]:
    evaluator = TransformersImageClassifier(args.classifier, "cpu")
    reference = reference_of(args.data, args.image_size)
    rows = []
    for objective, path in (("ddpm", args.ddpm), ("flow", args.flow)):
        if path is None:
            continue
        pipe = SDTPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        sampler = objective_of(pipe.transformer.config).default_sampler
        pipe.scheduler = scheduler_by_name(sampler, pipe.scheduler.config)
        labels = sample_labels(args.num_samples, pipe.transformer.config.num_classes, "balanced", seed=0)
        settings = [(1.0, (0.0, 1.0))] + [(scale, span) for scale in args.guidance_scales for span in args.intervals]
        for scale, span in settings:
            start = time.process_time()
            scores = scored_samples(pipe, evaluator, reference, labels, guidance_scale=scale, guidance_interval=span,
                                    num_inference_steps=args.steps)
            rows.append(dict(objective=objective, sampler=sampler, guidance_scale=scale,
                             interval=list(span), cpu_seconds=time.process_time() - start, **scores))
            print(f"| {objective} | {scale:g} | [{span[0]:g}, {span[1]:g}] | {scores['fd']:.1f} | "
                  f"{scores['accuracy']:.3f} | {rows[-1]['cpu_seconds']:.0f} |", flush=True)
    return rows


def main(args):
    print(f"{args.num_samples} class-balanced samples per row, {args.steps} steps (ddpm: DPM-Solver++, flow: Euler), "
          f"same seeds in every row, {torch.get_num_threads()} threads")
    print("| objective | guidance | interval | classifier FD | cond. acc. | CPU s |")
    print("|---|---|---|---|---|---|")
    rows = interval_rows(args)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "threads": torch.get_num_threads(),
                                              "rows": rows}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm", help="pipeline folder of a DDPM-trained model")
    parser.add_argument("--flow", help="pipeline folder of a flow-trained model")
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits",
                        help="the real images of the FD: the bundled digits, or MNIST's train split")
    parser.add_argument("--classifier", required=True, help="transformers classifier folder (the evaluator)")
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[2.0, 4.0], help="guidance scales")
    parser.add_argument("--intervals", type=interval, nargs="+", default=[(0.0, 1.0), (0.0, 0.7), (0.1, 0.7), (0.3, 1.0)],
                        help="noise-level intervals LO,HI (0: clean, 1: pure noise)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--num-samples", type=int, default=300, help="class-balanced samples per row")
    parser.add_argument("--image-size", type=int, help="side of the images the models made (digits 16, mnist 32)")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.ddpm is None and args.flow is None:
        parser.error("give --ddpm, --flow or both")
    args.image_size = args.image_size or {"digits": 16, "mnist": 32}[args.data]
    main(args)
