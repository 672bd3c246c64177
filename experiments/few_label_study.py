"""With few labels, does spatial decay help a classifier? SDT-H-XT on class-balanced MNIST subsets, decay ``none``
(a plain hierarchical ViT), ``fixed`` (RMT) and ``cag`` (SDT), several seeds, paired.

The protocol, fixed before any run and recorded in ``results.json``:

* every arm, size and seed trains with ``train_classifier.py --dataset mnist --train-size N --subset-seed 0``: the
  same images for every arm and seed of a size; seed ``s`` gives every arm the same data order and initial weights
  of the parameters they share, so the runs of a seed are paired;
* the same number of optimizer steps at every size (``--steps``, batch 32: epochs = steps / batches per epoch,
  rounded up), the bundled recipe otherwise (AdamW, lr 1e-3, cosine, EMA);
* each final model (EMA weights) scored on MNIST's 500 held-out digits: top-1;
* primary (Holm over the two): top-1 ``cag - fixed`` (SDT against RMT, the paper's claim) and ``cag - none`` at the
  smallest size; secondary (Holm over all of them): every other pair at every size. Paired Student-t over seeds.

    python experiments/few_label_study.py --out docs/few_label_study
    python experiments/few_label_study.py --train-sizes 40 4500 --seeds 0 1 --steps 20 --out studies/few-label-quick

Runs and their scores are cached under ``--out``: a rerun trains and scores only what is missing, and refuses
another protocol.
"""

import argparse
import math
from pathlib import Path

import torch

from sdt_gen.cli import positive_int, run_main
from sdt_gen.data import MNISTDataset
from sdt_gen.metrics import TransformersImageClassifier, holm, mean_std, paired_difference
from sdt_gen.metrics.datasets import bundled_images
from sdt_gen.provenance import RunRecord
from sdt_gen.studies.protocol import check_protocol, read_json, write_json
from sdt_gen.studies.runs import numbered_folders, resume_flags, run_script
from sdt_gen.tables import Column, Table

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("none", "fixed", "cag")
BATCH = 32
PRIMARY = [("cag", "fixed"), ("cag", "none")]  # at the smallest size


def protocol_of(args: argparse.Namespace) -> dict:
    """What every run shares and a rerun must repeat."""
    return {"model": "SDT-H-XT", "data": "mnist", "arms": list(ARMS), "train_sizes": sorted(args.train_sizes),
            "seeds": args.seeds, "steps": args.steps, "batch_size": BATCH, "subset_seed": 0,
            "score": "top-1 of the EMA weights on MNIST's 500 held-out digits",
            "primary": [f"{a} - {b} at {min(args.train_sizes)} images" for a, b in PRIMARY]}


def trained(out: Path, arm: str, size: int, seed: int, steps: int) -> Path:
    """The saved model of one run, trained (or finished) first."""
    results = out / "runs" / f"n{size}" / f"{arm}-s{seed}"
    epochs = math.ceil(steps / (size // BATCH))
    run_script(ROOT / "train_classifier.py", list(map(str, [
        "--dataset", "mnist", "--train-size", size, "--decay-mode", arm, "--seed", seed, "--batch-size", BATCH,
        "--epochs", epochs, "--ckpt-every-epochs", max(1, epochs // 4), "--results-dir", results,
        *resume_flags(results)])))
    return numbered_folders(results)[0] / "model"


def top1(model: Path, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the held-out digits (uint8 ``(N, 3, H, W)``) the saved classifier labels right."""
    _, logits = TransformersImageClassifier(model)(images)
    return (logits.argmax(dim=1) == labels).double().mean().item()


def analyse(scores: dict, args: argparse.Namespace) -> dict:
    """Per arm and size: mean and std of top-1; paired differences, primary and secondary families Holm-adjusted."""
    sizes, smallest = sorted(args.train_sizes), min(args.train_sizes)
    summary = {f"{arm} n{size}": mean_std([scores[f"{arm}-n{size}-s{s}"] for s in args.seeds])
               for size in sizes for arm in ARMS}
    differences = []
    for size in sizes:
        for arm, against in (("cag", "fixed"), ("cag", "none"), ("fixed", "none")):
            pair = paired_difference([scores[f"{arm}-n{size}-s{s}"] for s in args.seeds],
                                     [scores[f"{against}-n{size}-s{s}"] for s in args.seeds])
            primary = size == smallest and (arm, against) in PRIMARY
            differences.append(dict(pair, size=size, comparison=f"{arm} - {against}", primary=primary))
    for family in (True, False):
        members = [d for d in differences if d["primary"] == family]
        for member, adjusted in zip(members, holm([d["p"] for d in members])):
            member["p_holm"] = adjusted
    return {"top1": summary, "differences": differences}


def tables(analysis: dict, record: dict, args: argparse.Namespace) -> list[Table]:
    rows = [dict(size=int(key.split(" n")[1]), arm=key.split(" ")[0], **value) for key, value in analysis["top1"].items()]
    top1_table = Table("few-label-top1", [
        Column("training images", "size"), Column("arm", "arm"), Column("top-1 (mean)", "mean", "{:.4f}"),
        Column("std over seeds", "std", "{:.4f}"), Column("seeds", "n")], rows, record,
        f"SDT-H-XT on class-balanced MNIST subsets, {args.steps} steps of {BATCH}, top-1 on the 500 held-out digits.")
    diff_table = Table("few-label-differences", [
        Column("training images", "size"), Column("comparison", "comparison"), Column("primary", "primary"),
        Column("mean difference", "mean", "{:+.4f}"), Column("95% low", "low", "{:+.4f}"),
        Column("95% high", "high", "{:+.4f}"), Column("p (Holm)", "p_holm", "{:.3f}")], analysis["differences"], record,
        "Paired over seeds (Student-t); Holm within the primary family and within the secondary one.")
    return [top1_table, diff_table]


def main(args: argparse.Namespace, record: RunRecord) -> dict:
    out = Path(args.out)
    protocol = protocol_of(args)
    check_protocol(out, protocol)
    heldout = bundled_images("mnist", "val", 32)
    images = torch.stack([heldout[i] for i in range(len(heldout))])  # (500, 3, 32, 32) uint8
    labels = torch.tensor(MNISTDataset("val").targets)
    scores = read_json(out / "scores.json") or {}
    for size in sorted(args.train_sizes):
        for seed in args.seeds:
            for arm in ARMS:
                key = f"{arm}-n{size}-s{seed}"
                if key not in scores:
                    scores[key] = top1(trained(out, arm, size, seed, args.steps), images, labels)
                    write_json(out / "scores.json", scores)
    analysis = analyse(scores, args)
    finished = record.finish()
    results = {"protocol": protocol, "scores": scores, **analysis, "provenance": finished}
    write_json(out / "results.json", results)
    for table in tables(analysis, finished, args):
        table.publish(out)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-sizes", type=positive_int, nargs="+", default=[40, 100, 1000, 4500],
                   help="class-balanced subset sizes (4500: the whole train split)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds (pairs)")
    p.add_argument("--steps", type=positive_int, default=600, help="optimizer steps of every run, at every size")
    p.add_argument("--out", default="studies/few-label", help="study folder (runs, scores, results, tables)")
    return p


if __name__ == "__main__":
    started = RunRecord.start()
    run_main(lambda args: main(args, started), build_parser())
