"""DDPM against flow matching: the same model and training steps, scored in a classifier's features.

Each pipeline samples the same class-balanced labels with the same seeds through its own kind of
sampler (DPM-Solver++ and DDIM for the DDPM model, Euler and Heun for the flow model) at several step
counts; the Fréchet distance to the real images and the conditional accuracy are read in the
evaluator classifier's features (``sdt_gen.metrics.classifier_metrics``). On the bundled digits:

    python train_dit.py --results-dir results/objectives                       # DDPM, the default recipe
    python train_dit.py --objective flow --results-dir results/objectives      # flow, same model and steps
    python train_classifier.py --results-dir classifiers                       # the evaluator
    python benchmarks/objective_comparison.py --ddpm results/objectives/000-SDT-Ti-2-digits/pipeline \\
        --flow results/objectives/001-SDT-Ti-2-digits-flow/pipeline --classifier classifiers/000-SDT-H-XT-digits/model
"""

import argparse

import torch

from sdt_gen import SDTPipeline
from sdt_gen.data import DigitsDataset
from sdt_gen.diffusion import objective_rules
from sdt_gen.metrics import ArrayImageDataset, TransformersImageClassifier, classifier_metrics, sample_labels
from sdt_gen.metrics.sampling import to_uint8
from sdt_gen.pipelines import scheduler_by_name


def digits_reference(image_size: int) -> ArrayImageDataset:
    """All 1,797 bundled digits at ``image_size``, as uint8 images: the FD reference."""
    reference = DigitsDataset("all", image_size=image_size).images
    return ArrayImageDataset(to_uint8((reference[:, 0].numpy() + 1) / 2), source="the bundled digits")


def scored_samples(pipe, evaluator, reference, labels: list[int], **sampling) -> dict[str, float]:
    """FD to ``reference`` and conditional accuracy in the evaluator's features of ``pipe``'s samples of
    ``labels``, image ``i`` drawn from seed ``i``; ``sampling``: the pipeline's other arguments."""
    generators = [torch.Generator().manual_seed(i) for i in range(len(labels))]
    images = pipe(labels, generator=generators, output_type="np", **sampling).images  # (N, H, W, 1)
    scores = classifier_metrics(evaluator, ArrayImageDataset(to_uint8(images)), labels, reference=reference,
                                batch_size=250)
    return {"fd": scores["classifier_frechet_distance"], "accuracy": scores["classifier_accuracy"]}


def comparison_rows(args) -> list[dict]:
    evaluator = TransformersImageClassifier(args.classifier, "cpu")
    reference = digits_reference(args.image_size)
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


def main(args):
    print(f"{args.num_samples} class-balanced samples per row, guidance {args.guidance_scale}, same seeds in every row")
    print("| objective | sampler | steps | classifier FD | cond. acc. |")
    print("|---|---|---|---|---|")
    comparison_rows(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm", required=True, help="pipeline folder of the DDPM-trained model")
    parser.add_argument("--flow", required=True, help="pipeline folder of the flow-trained model")
    parser.add_argument("--classifier", required=True, help="transformers classifier folder (the evaluator)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50], help="sampling steps")
    parser.add_argument("--num-samples", type=int, default=500, help="class-balanced samples per row")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="classifier-free guidance")
    parser.add_argument("--image-size", type=int, default=16, help="side of the digits the models were trained on")
    main(parser.parse_args())
