"""DDPM against flow matching: the same model and training steps, scored in a classifier's features.

Each pipeline samples the same class-balanced labels with the same seeds through its own kind of
sampler (DPM-Solver++ and DDIM for the DDPM model, Euler and Heun for the flow model) at several step
counts; the Fréchet distance to the real images and the conditional accuracy are read in the
evaluator classifier's features (``sdt_gen.metrics.classifier_metrics``). On the bundled digits:

    python train_dit.py --results-dir results/objectives                       # DDPM, the default recipe
    python train_dit.py --objective flow --results-dir results/objectives      # flow, same model and steps
    python train_classifier.py --results-dir classifiers                       # the evaluator
    python experiments/objective_comparison.py --ddpm results/objectives/000-SDT-Ti-2-digits/pipeline \\
        --flow results/objectives/001-SDT-Ti-2-digits-flow/pipeline --classifier classifiers/000-SDT-H-XT-digits/model \\
        --out docs/measurements

``--out`` writes the table as ``objective-comparison.json`` with the provenance of the run (command, commit,
versions, threads, CPU, times); ``python -m sdt_gen.tables docs/measurements.md`` shows it in the docs.
"""

import argparse

from sdt_gen import SDTPipeline
from sdt_gen.diffusion import objective_rules
from sdt_gen.metrics import TransformersImageClassifier, sample_labels
from sdt_gen.pipelines import scheduler_by_name
from sdt_gen.provenance import RunRecord
from sdt_gen.tables import Column
from sdt_gen.studies.comparisons import comparison_parser, real_reference, run_comparison, scored_samples


def comparison_rows(args: argparse.Namespace) -> list[dict]:
    """One row per objective, sampler and step count: FD and conditional accuracy of the same labels and seeds."""
    evaluator = TransformersImageClassifier(args.classifier, "cpu")
    reference = real_reference("digits", args.image_size)
    rows = []
    for objective, path in (("ddpm", args.ddpm), ("flow", args.flow)):
        pipe = SDTPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        labels = sample_labels(args.num_samples, pipe.transformer.config.num_classes, "balanced", seed=0)
        for sampler in objective_rules(objective).few_step_samplers:
            pipe.scheduler = scheduler_by_name(sampler, pipe.scheduler.config)
            for steps in args.steps:
                scores = scored_samples(pipe, evaluator, reference, labels, guidance_scale=args.guidance_scale,
                                        num_inference_steps=steps)
                rows.append(dict(objective=objective, sampler=sampler, steps=steps, **scores))
                print(f"| {objective} | {sampler} | {steps} | {rows[-1]['fd']:.1f} | {rows[-1]['accuracy']:.3f} |",
                      flush=True)
    return rows


def main(args: argparse.Namespace, record: RunRecord) -> None:
    notes = (f"{args.num_samples} class-balanced samples per row, guidance {args.guidance_scale:g}, the same labels "
             "and seeds in every row; classifier FD to all bundled digits.")
    columns = [Column("objective", "objective"), Column("sampler", "sampler"), Column("steps", "steps"),
               Column("classifier FD", "fd", "{:.1f}"), Column("cond. acc.", "accuracy", "{:.3f}")]
    run_comparison(args, record, "objective-comparison", columns, notes, comparison_rows)


if __name__ == "__main__":
    started = RunRecord.start()
    parser = comparison_parser(__doc__, num_samples=500, models_required=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50], help="sampling steps")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="classifier-free guidance")
    parser.add_argument("--image-size", type=int, default=16, help="side of the digits the models were trained on")
    main(parser.parse_args(), started)
