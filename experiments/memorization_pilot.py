"""Pilot of the memorization study: how often does a plain DiT (decay ``none``) copy its training images, by
training-set size and steps? Picks the sizes of the study, where the decay could move the share of copies.

Each setting trains SDT-Ti/4 on a class-balanced MNIST subset (``train_dit.py --dataset mnist --train-size N``,
flow matching with logit-normal times, batch 32, learning rate 2e-3, one seed), then draws class-balanced samples
with 10 Euler steps at each guidance scale and counts the copies (``eval_fid.py --metrics memorization``: the ratio
test in pixel space against the subset, and the 500 held-out digits as the scale of a real image's distance):

    python experiments/memorization_pilot.py --out docs/measurements
    python experiments/memorization_pilot.py --settings 40:2400 100:2400 --num-samples 100 --work pilot-quick

Every run and evaluation is cached under ``--work``: a rerun trains and samples only what is missing. ``--out``
writes the table as ``memorization-pilot.json`` with the provenance of the invocation.
"""

import argparse
import json
from pathlib import Path

from sdt_gen.cli import positive_int, run_main
from sdt_gen.provenance import RunRecord
from sdt_gen.studies.runs import numbered_folders, resume_flags, run_script
from sdt_gen.tables import Column, Table

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["--dataset", "mnist", "--decay-mode", "none", "--objective", "flow", "--time-sampling", "logit_normal",
          "--global-batch-size", "32", "--lr", "2e-3"]


def setting(text: str) -> tuple[int, int]:
    """``"SIZE:STEPS"`` -> ``(SIZE, STEPS)``, for argparse."""
    try:
        size, steps = map(int, text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SIZE:STEPS, e.g. 100:2400") from None
    return size, steps


def trained(work: Path, size: int, steps: int) -> Path:
    """The run folder of ``size`` images trained for ``steps``, trained (or finished) first."""
    results = work / f"n{size}-s{steps}"
    run_script(ROOT / "train_dit.py", [*RECIPE, "--train-size", str(size), "--max-steps", str(steps),
                                       "--ckpt-every", "1200", "--sample-every", str(steps), "--results-dir",
                                       str(results), *resume_flags(results)])
    return numbered_folders(results)[0]


def scored(run_dir: Path, guidance: float, args: argparse.Namespace) -> dict:
    """The memorization scores of ``run_dir``'s samples at ``guidance`` (cached in ``run_dir/eval-g<guidance>``)."""
    out = run_dir / f"eval-g{guidance:g}"
    if not (out / "results.json").is_file():
        run_script(ROOT / "eval_fid.py", list(map(str, [
            "--model", run_dir / "pipeline", "--num-samples", args.num_samples, "--steps", 10, "--scheduler", "euler",
            "--guidance-scale", guidance, "--labels", "balanced", "--metrics", "memorization", "--train-ref", run_dir,
            "--heldout-ref", "mnist", "--out", out, "--device", "cpu"])))
    return json.loads((out / "results.json").read_text())["metrics"]


def main(args: argparse.Namespace, record: RunRecord) -> Table:
    rows = []
    for size, steps in args.settings:
        run_dir = trained(Path(args.work), size, steps)
        row = dict(train_size=size, steps=steps, epochs=steps * 32 / size)
        for guidance in args.guidance_scales:
            scores = scored(run_dir, guidance, args)
            row[f"memorized_g{guidance:g}"] = scores["memorized_fraction"]
            row[f"nearest_g{guidance:g}"] = scores["nearest_train_median"]
        row["heldout_memorized"] = scores["heldout_memorized_fraction"]
        row["heldout_nearest"] = scores["heldout_nearest_train_median"]
        rows.append(row)
    columns = [Column("training images", "train_size"), Column("steps", "steps"), Column("epochs", "epochs", "{:.0f}")]
    for guidance in args.guidance_scales:
        columns += [Column(f"memorized, guidance {guidance:g}", f"memorized_g{guidance:g}", "{:.1%}"),
                    Column(f"median nearest-train distance (g {guidance:g})", f"nearest_g{guidance:g}", "{:.2f}")]
    columns += [Column("held-out digits memorized", "heldout_memorized", "{:.1%}"),
                Column("their median nearest-train distance", "heldout_nearest", "{:.2f}")]
    notes = (f"SDT-Ti/4, decay none, flow (logit-normal times), batch 32, lr 2e-3, seed 0; {args.num_samples} "
             "class-balanced samples, 10 Euler steps; a copy: nearest / second-nearest training image < 1/3 (pixels on "
             "[0, 1]); distances to the subset; held-out: MNIST's 500 held-out digits against the same subset.")
    table = Table("memorization-pilot", columns, rows, notes=notes)
    table.provenance = record.finish()
    table.publish(args.out)
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", type=setting, nargs="+", default=[(40, 2400), (100, 2400), (100, 7200), (1000, 2400)],
                   metavar="SIZE:STEPS", help="training-set sizes and their step budgets")
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 3.0], help="guidance of the samples")
    p.add_argument("--num-samples", type=positive_int, default=500, help="class-balanced samples per setting and scale")
    p.add_argument("--work", default="studies/memorization-pilot", help="folder of the runs and their evaluations")
    p.add_argument("--out", help="also write the table with its provenance to this folder as memorization-pilot.json")
    return p


if __name__ == "__main__":
    started = RunRecord.start()
    run_main(lambda args: main(args, started), build_parser())
