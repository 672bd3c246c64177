"""Guidance in a limited interval of noise levels against guidance at every step, on the digits.

Kynkäänniemi et al. (2024) found classifier-free guidance harmful at high noise (it collapses the
samples' variety) and useless at low noise; SiT, LightningDiT and EDM2 report their FIDs with guidance
only inside an interval. This scores ``SDTPipeline(..., guidance_interval=(lo, hi))`` (noise levels: 0
clean, 1 pure noise) for a DDPM and a flow model at a few guidance scales, in the evaluator classifier's
features (FD to all bundled digits, conditional accuracy), the same labels and seeds in every row. With
the models of ``experiments/objective_comparison.py``:

    python experiments/guidance_interval.py --ddpm results/objectives/000-SDT-Ti-2-digits/pipeline \\
        --flow results/objectives/001-SDT-Ti-2-digits-flow/pipeline --classifier classifiers/000-SDT-H-XT-digits/model

and on a model of the decay study (32x32 MNIST, scored against MNIST's train split in the study's evaluator):

    python experiments/guidance_interval.py --data mnist --flow studies/mnist-decay-256/runs/cag-s1/000-SDT-Ti-2-mnist32-flow/pipeline \\
        --classifier studies/mnist-decay-256/evaluator/000-SDT-H-XT-mnist32/model --steps 10 --guidance-scales 1.5 3
"""

import argparse
import time

import torch

from sdt_gen import SDTPipeline
from sdt_gen.diffusion import objective_of
from sdt_gen.metrics import TransformersImageClassifier, sample_labels
from sdt_gen.pipelines import check_guidance_interval, scheduler_by_name
from sdt_gen.provenance import RunRecord
from sdt_gen.tables import Column
from sdt_gen.studies.comparisons import REAL_DATA, comparison_parser, real_reference, run_comparison, scored_samples


def interval(text: str) -> tuple[float, float]:
    """``"LO,HI"`` -> ``(LO, HI)``, a valid guidance interval, for argparse."""
    try:
        return check_guidance_interval(text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def interval_rows(args: argparse.Namespace) -> list[dict]:
    """One row per model, guidance scale and interval (and unguided): FD, conditional accuracy and CPU seconds."""
    evaluator = TransformersImageClassifier(args.classifier, "cpu")
    reference = real_reference(args.data, args.image_size)
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


def main(args: argparse.Namespace, record: RunRecord) -> None:
    reference = "all bundled digits" if args.data == "digits" else "MNIST's train split"
    notes = (f"{args.num_samples} class-balanced samples per row, {args.steps} steps (ddpm: DPM-Solver++, flow: "
             f"Euler), the same labels and seeds in every row, {torch.get_num_threads()} thread(s); classifier FD to "
             f"{reference}.")
    columns = [Column("objective", "objective"), Column("guidance", "guidance_scale", "{:g}"),
               Column("interval", "interval", "[{0[0]:g}, {0[1]:g}]"), Column("classifier FD", "fd", "{:.1f}"),
               Column("cond. acc.", "accuracy", "{:.3f}"), Column("CPU s", "cpu_seconds", "{:.0f}")]
    run_comparison(args, record, f"guidance-interval-{args.data}", columns, notes, interval_rows)


if __name__ == "__main__":
    started = RunRecord.start()
    parser = comparison_parser(__doc__, num_samples=300, models_required=False)
    parser.add_argument("--data", choices=REAL_DATA, default="digits",
                        help="the real images of the FD: the bundled digits, or MNIST's train split")
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[2.0, 4.0], help="guidance scales")
    parser.add_argument("--intervals", type=interval, nargs="+", default=[(0.0, 1.0), (0.0, 0.7), (0.1, 0.7), (0.3, 1.0)],
                        help="noise-level intervals LO,HI (0: clean, 1: pure noise)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--image-size", type=int, help="side of the images the models made (digits 16, mnist 32)")
    args = parser.parse_args()
    if args.ddpm is None and args.flow is None:
        parser.error("give --ddpm, --flow or both")
    args.image_size = args.image_size or {"digits": 16, "mnist": 32}[args.data]
    main(args, started)
