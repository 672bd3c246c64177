"""What the sampler comparisons share (``experiments/objective_comparison.py``, ``experiments/guidance_interval.py``):
the real images of the FD, a pipeline's samples scored in an evaluator's features, and the published record.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from ..metrics import ArrayImageDataset, TransformersImageClassifier, classifier_metrics
from ..metrics.datasets import bundled_images
from ..metrics.sampling import to_uint8
from ..pipelines import SDTPipeline
from ..provenance import RunRecord
from ..tables import Column, Table

REAL_DATA = ("digits", "mnist")


def real_reference(data: str, image_size: int) -> ArrayImageDataset:
    """The FD reference as uint8 images at ``image_size``: all 1,797 bundled digits, or MNIST's train split."""
    return bundled_images(data, "all" if data == "digits" else "train", image_size)


def scored_samples(pipe: SDTPipeline, evaluator: TransformersImageClassifier, reference: ArrayImageDataset,
                   labels: list[int], **sampling) -> dict[str, float]:
    """FD to ``reference`` and conditional accuracy in the evaluator's features of ``pipe``'s samples of
    ``labels``, image ``i`` drawn from seed ``i``; ``sampling``: the pipeline's other arguments."""
    generators = [torch.Generator().manual_seed(i) for i in range(len(labels))]
    images = pipe(labels, generator=generators, output_type="np", **sampling).images  # (N, H, W, 1)
    scores = classifier_metrics(evaluator, ArrayImageDataset(to_uint8(images)), labels, reference=reference,
                                batch_size=250)
    return {"fd": scores["classifier_frechet_distance"], "accuracy": scores["classifier_accuracy"]}


def comparison_parser(description: str, num_samples: int, models_required: bool) -> argparse.ArgumentParser:
    """The flags every comparison shares: the DDPM and flow pipelines, the evaluator, the sample count and ``--out``.

    Args:
        description: the script's docstring.
        num_samples: the default of ``--num-samples``.
        models_required: whether both ``--ddpm`` and ``--flow`` must be given.
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ddpm", required=models_required, help="pipeline folder of a DDPM-trained model")
    p.add_argument("--flow", required=models_required, help="pipeline folder of a flow-trained model")
    p.add_argument("--classifier", required=True, help="transformers classifier folder (the evaluator)")
    p.add_argument("--num-samples", type=int, default=num_samples, help="class-balanced samples per row")
    p.add_argument("--out", help="also write the table with its provenance to this folder as <name>.json (the docs' "
                                 "tables render from docs/measurements)")
    return p


def run_comparison(args: argparse.Namespace, record: RunRecord, name: str, columns: list[Column], notes: str,
                   rows_of: Callable[[argparse.Namespace], list[dict]]) -> Table:
    """Measure a comparison's rows (``rows_of`` prints each as it comes) and publish them as the table ``name``.

    Args:
        args: the comparison's flags (``comparison_parser``).
        record: the invocation's provenance, started first thing.
        name: the table's name (its JSON file and the docs' marker).
        columns: what the table shows of each row.
        notes: the line under the table (samples, sampler, seeds, threads).
        rows_of: measures and prints the rows.
    """
    table = Table(name, columns, rows_of(args), notes=notes)
    table.provenance = record.finish()
    table.publish(args.out)
    return table
