"""A study from its command line to its folder: train and score every run (resumable, split over workers), then
publish ``results.json``, ``summary.md`` and the pictures, with the provenance of every invocation.

A study script (``experiments/decay_study.py``) adds its default sets to ``study_parser`` and calls ``run_study``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import load_file

from ..cli import non_negative_float, non_negative_int, positive_float, positive_int
from ..diffusion import OBJECTIVES, TIME_SAMPLINGS, objective_rules
from ..pipelines import SCHEDULERS, check_guidance_interval
from ..provenance import RunRecord
from .equal_time import read_costs
from .evaluation import (
    DECAY_MAP_TIMESTEPS,
    SAMPLES_KEPT,
    evaluate,
    final_artifacts,
    heldout_data,
    map_queries,
    prepare_evaluator,
    real_data_reference,
    reference_features,
)
from .plots import plot_curves, plot_decay_maps, plot_gates, plot_samples
from .protocol import GATE_TIMESTEPS, QUICK, STUDY, TIME_SAMPLING, build_protocol, check_protocol, eval_steps
from .protocol import parse_arm, read_json, write_json
from .report import analyse, write_report
from .runs import collect, run_name, train_to


@dataclass(frozen=True)
class Trainers:
    """The training scripts a study runs, by their command lines: ``train_dit.py`` and ``train_classifier.py``."""

    denoiser: Path
    classifier: Path


#################################################################################
#                                 Command line                                  #
#################################################################################

def worker_share(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/2), got {text!r}")
    return int(index), int(count)


def study_parser(description: str) -> argparse.ArgumentParser:
    """Every flag of a study; a study script adds its default sets (``--tokens`` ...) and fills ``--arms``,
    ``--model`` and ``--out`` when not given."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 40 steps, 40 samples, smaller reference sets: the whole code path in minutes")
    p.add_argument("--out", help="study folder")
    p.add_argument("--arms", nargs="+", help="decay mode and positions of each arm: none, fixed, cag, rope, rope+cag, "
                   "sincos+rope+cag, ...")
    p.add_argument("--seeds", nargs="+", type=non_negative_int, help=f"training seeds, one paired run per arm each (default: {' '.join(map(str, STUDY['seeds']))})")
    p.add_argument("--model", help="denoiser preset of every run")
    p.add_argument("--steps", type=positive_int, help=f"training steps of every run (default: {STUDY['steps']})")
    p.add_argument("--evals", type=positive_int, help=f"evaluation points, equally spaced up to --steps (default: {STUDY['evals']})")
    p.add_argument("--global-batch-size", type=positive_int, help=f"images per step (default: {STUDY['global_batch_size']})")
    p.add_argument("--lr", type=positive_float, help=f"AdamW learning rate (default: {STUDY['lr']})")
    p.add_argument("--num-samples", type=positive_int, help=f"class-balanced samples per evaluation (default: {STUDY['num_samples']})")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help=f"training objective of every run: SiT's flow matching or DiT's ddpm (default: {STUDY['objective']})")
    p.add_argument("--time-sampling", choices=TIME_SAMPLINGS,
                   help="how training draws times (default: flow: logit_normal, ddpm: uniform)")
    p.add_argument("--scheduler", choices=list(SCHEDULERS),
                   help="sampler of the evaluations (default: flow: euler, ddpm: dpm)")
    p.add_argument("--sample-steps", type=positive_int, help=f"sampling steps (default: {STUDY['sample_steps']})")
    p.add_argument("--guidance-scale", type=non_negative_float, help=f"classifier-free guidance scale (default: {STUDY['guidance_scale']})")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="guide only at noise levels in [LO, HI] (0: clean, 1: noise), as sample.py (default: every step)")
    p.add_argument("--flow-shift", type=float, help="flow runs: the sampler's time shift, as sample.py (default: none)")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per sampling / evaluator call")
    p.add_argument("--heldout-images", type=positive_int, help="held-out images of the denoising loss (default: all 500)")
    p.add_argument("--reference-images", type=positive_int, help="train images of the FD / precision / recall reference (default: all)")
    p.add_argument("--evaluator-epochs", type=positive_int, help=f"epochs of the evaluator classifier (default: {STUDY['evaluator_epochs']})")
    p.add_argument("--bootstrap-replicates", type=positive_int,
                   help=f"bootstrap draws of each evaluation's FD interval (default: {STUDY['bootstrap_replicates']})")
    p.add_argument("--compile", action="store_true", help="train every run under torch.compile (recorded in the "
                   "protocol's training flags; a study keeps the setting it began with)")
    p.add_argument("--threads", type=positive_int, help=f"torch threads of every run, part of the protocol (default: {STUDY['threads']})")
    p.add_argument("--cost-ratios", nargs="+", metavar="ARM=S",
                   help="the arms' CPU seconds per training step measured apart from the study (e.g. "
                   "benchmarks/bench_training.py --arms): ARM=VALUE pairs or a JSON file of arm -> value; the "
                   "summary then reads the arms at equal compute by these costs beside the recorded clocks")
    p.add_argument("--compare-with", help="results.json of another study whose cag - none differences the summary "
                   "sets beside this one's")
    p.add_argument("--worker", type=worker_share, default=(0, 1), metavar="I/N",
                   help="train and score every N-th run, from the I-th: start N such processes side by side (one per "
                   "core, I = 0 .. N-1; the others wait for worker 0's evaluator); the last to finish writes the results")
    p.add_argument("--carry-to", metavar="DIR",
                   help="copy the small files another machine needs to finish the study (finished runs' records, "
                   "no checkpoints) into DIR and exit; there, copy DIR to --out and run the same command")
    p.add_argument("--classifier", help="a transformers classifier folder to evaluate with instead of training one")
    p.add_argument("--latents-path", help="train on pre-extracted latents instead of MNIST (GPU studies)")
    p.add_argument("--vae", help="the VAE of --latents-path, to decode samples")
    p.add_argument("--ref", help="reference images (folder or .npz) for FD / FID (default on MNIST: its train split)")
    p.add_argument("--inception-weights", help="torch-fidelity Inception weights: adds FID and IS to every evaluation")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    return p


def apply_defaults(args: argparse.Namespace, defaults: dict) -> None:
    """Fill every setting not given: the study script's ``defaults``, the library's, ``--quick``'s and the
    objective's."""
    for key, value in {**defaults, **STUDY, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.scheduler = args.scheduler or objective_rules(args.objective).default_sampler
    args.time_sampling = args.time_sampling or TIME_SAMPLING[args.objective]


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a study that cannot run, before anything is trained: the message names the flag."""
    for arm in args.arms:
        try:
            parse_arm(arm)
        except ValueError as error:
            raise SystemExit(f"error: --arms: {error}") from None
    if len(set(args.arms)) != len(args.arms):
        raise SystemExit(f"error: --arms {' '.join(args.arms)} names an arm twice")
    if args.steps < args.evals:
        raise SystemExit(f"error: --steps {args.steps} is fewer than --evals {args.evals} evaluation points")
    for flag, check in (("--guidance-interval", lambda: check_guidance_interval(args.guidance_interval)),
                        ("--cost-ratios", lambda: args.cost_ratios and read_costs(args.cost_ratios))):
        try:
            check()
        except ValueError as error:
            raise SystemExit(f"error: {flag}: {error}") from None


#################################################################################
#                              Training and scoring                             #
#################################################################################

def run_share(args: argparse.Namespace, out: Path, evaluator, ref_features: dict, heldout: tuple, processes,
              trainer: Path) -> list[str]:
    """Train and evaluate this worker's runs (``--worker``), skipping finished points; the unfinished runs of all."""
    worker, workers = args.worker
    every_run = [(seed, arm) for seed in args.seeds for arm in args.arms]
    for seed, arm in every_run[worker::workers]:
        for step in eval_steps(args):
            folder = out / "evals" / run_name(arm, seed) / f"step-{step:07d}"
            if (folder / "metrics.json").is_file():
                continue
            run_dir = train_to(args, out, arm, seed, step, trainer)
            evaluate(args, out, arm, seed, step, run_dir, evaluator, ref_features, heldout, processes)
            processes.wait_for_everyone()
    final = eval_steps(args)[-1]
    return [run_name(arm, seed) for seed, arm in every_run
            if not (out / "evals" / run_name(arm, seed) / f"step-{final:07d}" / "metrics.json").is_file()]


def carry(args: argparse.Namespace, out: Path, dest: Path) -> list[str]:
    """Copy what another machine needs to finish the study into ``dest``: the protocol, the evaluator's record, and
    of every finished run its timing, metrics and ``final_artifacts`` (computed here if missing). Checkpoints,
    pipelines, sample folders and unfinished runs stay behind: an unfinished run is trained afresh there, and the
    evaluator is retrained and must reproduce its recorded hash (``prepare_evaluator``). Returns the runs carried."""
    steps = eval_steps(args)
    heldout = heldout_data(args)
    carried = []
    for seed in args.seeds:
        for arm in args.arms:
            name = run_name(arm, seed)
            if not (out / "evals" / name / f"step-{steps[-1]:07d}" / "metrics.json").is_file():
                continue
            final_artifacts(out, name, heldout, steps)
            shutil.copytree(out / "evals" / name, dest / "evals" / name, dirs_exist_ok=True,
                            ignore=lambda folder, names: [n for n in names if n.startswith("samples") and
                                                          Path(folder).name.startswith("step-")])
            (dest / "runs" / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "runs" / name / "timing.json", dest / "runs" / name / "timing.json")
            carried.append(name)
    records = ["protocol.json", "evaluator/evaluator.json"]  # no evaluator record with --classifier
    records += [str(p.relative_to(out)) for p in sorted((out / "provenance").glob("*.json"))]
    for record in records:
        if (out / record).is_file():
            (dest / record).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / record, dest / record)
    return carried


#################################################################################
#                                   Publishing                                  #
#################################################################################

def plot_first_seed(args: argparse.Namespace, out: Path, finals: dict, steps: list[int]) -> None:
    """The samples and decay maps of the first seed's runs at the last point, one panel per arm."""
    seed = args.seeds[0]
    first_seed = {arm: finals[run_name(arm, seed)] for arm in args.arms}
    plot_samples(out, {arm: folder / "samples" for arm, folder in first_seed.items()}, min(SAMPLES_KEPT, args.num_samples),
                 f"seed {seed}, step {steps[-1]}")
    maps = {arm: load_file(folder / "decay_maps.safetensors") for arm, folder in first_seed.items()
            if (folder / "decay_maps.safetensors").is_file()}
    if maps:
        grid_size = tuple(next(iter(maps.values()))[f"map_t{DECAY_MAP_TIMESTEPS[0]}_q0"].shape[-2:])
        plot_decay_maps(out, maps, {arm: parse_arm(arm)["decay_mode"] for arm in maps}, DECAY_MAP_TIMESTEPS,
                        map_queries(grid_size))


def record_invocation(out: Path, record: RunRecord) -> dict:
    """Keep this invocation's provenance in ``out/provenance/`` (one file each: workers write side by side)."""
    finished = record.finish()
    write_json(out / "provenance" / f"{finished['started'].replace(':', '')}-{os.getpid()}.json", finished)
    return finished


def publish(args: argparse.Namespace, out: Path, protocol: dict, evaluator_record: dict, heldout: tuple,
            ref_features: dict, record: RunRecord) -> dict:
    """``results.json``, ``summary.md`` and the pictures, from every finished run."""
    runs = collect(args, out)
    steps = eval_steps(args)
    finals = {name: final_artifacts(out, name, heldout, steps) for name in runs}
    curves = {name: strength for name, folder in finals.items()
              if (strength := read_json(folder / "gates.json")["strength"]) is not None}
    seconds = {
        "evaluator_training": evaluator_record.get("seconds", 0.0),
        "training": sum(r["training_seconds"] for r in runs.values()),
        "evaluation": sum(e["seconds"] for r in runs.values() for e in r["evals"].values()),
    }
    results = {
        "protocol": protocol, "heldout_data": heldout[2], "evaluator": evaluator_record, "seconds": seconds,
        "arms": args.arms, "seeds": args.seeds, "eval_steps": steps, "runs": runs,
        "gates_vs_timestep": {"timesteps": list(GATE_TIMESTEPS), "strength": curves},
        "real_data": real_data_reference(args, ref_features),
    }
    results.update(analyse(results, read_costs(args.cost_ratios) if args.cost_ratios else None))
    published = record_invocation(out, record)
    invocations = [read_json(p) for p in sorted((out / "provenance").glob("*.json"))]
    results["provenance"] = {"study": published, "invocations": invocations}
    other = read_json(Path(args.compare_with)) if args.compare_with else None
    write_report(out, results, other_study=other)
    plot_curves(out, runs, args.arms, steps)
    plot_first_seed(args, out, finals, steps)
    plot_gates(out, curves, runs, GATE_TIMESTEPS)
    return results


def run_study(args: argparse.Namespace, trainers: Trainers, record: RunRecord) -> dict | None:
    """Train, score and publish the study ``args`` describes (defaults applied); its results, or None from a worker
    that leaves the publishing to another, and from ``--carry-to``.

    Args:
        args: the study's settings (``study_parser``, defaults applied).
        trainers: the training scripts of the checkout.
        record: this invocation's provenance, started first thing.
    """
    check_arguments(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    processes = PartialState(cpu=args.cpu)
    protocol = build_protocol(args)
    if processes.is_main_process:
        check_protocol(out, protocol)
    processes.wait_for_everyone()

    evaluator, evaluator_record = prepare_evaluator(args, out, processes, trainers.classifier)
    if args.carry_to:
        carried = carry(args, out, Path(args.carry_to))
        print(f"carried {len(carried)} finished runs to {args.carry_to}: {', '.join(carried)}")
        return None
    ref_features = reference_features(args, out, evaluator) if processes.is_main_process else {}
    heldout = heldout_data(args)
    unfinished = run_share(args, out, evaluator, ref_features, heldout, processes, trainers.denoiser)
    if not processes.is_main_process:
        return None
    if unfinished:
        worker, workers = args.worker
        record_invocation(out, record)
        print(f"worker {worker}/{workers}: done; {len(unfinished)} runs of other workers are unfinished "
              f"({', '.join(unfinished)}): the last worker to finish writes the results")
        return None
    results = publish(args, out, protocol, evaluator_record, heldout, ref_features, record)
    print((out / "summary.md").read_text())
    return results
