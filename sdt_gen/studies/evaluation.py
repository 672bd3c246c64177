"""How a study scores its runs: the held-out data, the evaluator classifier, samples and what a run leaves behind.

One protocol for all runs: the objective's held-out MSE at fixed timesteps with fixed noise; class-balanced samples
(a fixed seed per image, one sampler, step count and guidance for all) scored in the features of an evaluator none
of the compared variants is (Fréchet distance with a bootstrap over the samples, conditional accuracy, k-NN
precision and recall); with Inception weights, FID and IS.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..data import LatentDataset, MNISTDataset
from ..diffusion import fixed_noise_mse, make_objective
from ..files import atomic_file, file_sha256
from ..metrics import (
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
from ..metrics.sampling import to_uint8
from ..models import SDTTransformer2DModel
from ..pipelines import SDTPipeline, chosen_scheduler, exported_step
from .protocol import GATE_TIMESTEPS, GUIDANCE_SWEEP, HELDOUT_TIMESTEPS, NEIGHBOURHOOD, SAMPLE_SEED, eval_steps
from .protocol import read_json, write_json
from .runs import final_pipeline, numbered_folders, run_name, run_script

EVALUATOR_POLL_SECONDS = 15
DECAY_MAP_TIMESTEPS = (50, 500, 950)
SAMPLES_KEPT = 40


#################################################################################
#                                     Data                                      #
#################################################################################

def subset(count: int, limit: int | None) -> torch.Tensor:
    """``limit`` of ``count`` item indices, the same in every run: a seeded permutation's start (all if None)."""
    if limit is None or limit >= count:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(0))[:limit].sort().values


def heldout_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str]:
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


def reference_images(args: argparse.Namespace):
    """The real images samples are compared with: ``--ref``, or (a ``subset`` of) MNIST's train split."""
    return args.ref or ArrayImageDataset(mnist_uint8("train", args.reference_images)[0], source="MNIST train split")


#################################################################################
#                                  Evaluator                                    #
#################################################################################

def train_evaluator(args: argparse.Namespace, out: Path, classifier_trainer: Path) -> Path:
    """Train the evaluator (SDT-H-XT, decay none, seed 0) on MNIST's train split into ``out/evaluator`` with
    ``classifier_trainer`` (``train_classifier.py``); its model folder."""
    argv = [
        "--dataset", "mnist", "--decay-mode", "none", "--epochs", str(args.evaluator_epochs), "--seed", "0",
        "--results-dir", str(out / "evaluator"), *(["--cpu"] if args.cpu else []),
    ]
    run_script(classifier_trainer, argv)
    return numbered_folders(out / "evaluator")[-1] / "model"  # the one just trained


def prepare_evaluator(args: argparse.Namespace, out: Path, processes, classifier_trainer: Path
                      ) -> tuple[TransformersImageClassifier | None, dict]:
    """The evaluator classifier (trained once and cached, or ``--classifier``) and its record.

    The record keeps the weights' sha256. A study folder carried without the evaluator's weights (they are the one
    large file the analysis needs) retrains it, at the protocol's thread count, and refuses to go on unless the
    weights come out identical.

    Args:
        args: the study's settings.
        out: the study folder.
        processes: accelerate's ``PartialState``.
        classifier_trainer: the path of ``train_classifier.py``.
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
        model = train_evaluator(args, out, classifier_trainer)
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


def reference_features(args: argparse.Namespace, out: Path, evaluator) -> dict[str, torch.Tensor]:
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


def real_data_reference(args: argparse.Namespace, ref_features: dict) -> dict | None:
    """FD of MNIST's held-out digits against the train split, with its bootstrap: what real images of that count
    score in the evaluator's features, the scale on which the arms' differences are read (None without both)."""
    if not {"train", "heldout"} <= ref_features.keys():
        return None
    scores = frechet_bootstrap(ref_features["heldout"], ref_features["train"], args.bootstrap_replicates)
    return {"images": len(ref_features["heldout"]), "fd": scores}


#################################################################################
#                                   Scoring                                     #
#################################################################################

def score_samples(args: argparse.Namespace, pipe: SDTPipeline, folder: Path, guidance_scale: float, evaluator,
                  ref_features: dict, processes) -> dict | None:
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


def evaluate(args: argparse.Namespace, out: Path, arm: str, seed: int, step: int, run_dir: Path, evaluator,
             ref_features: dict, heldout: tuple, processes) -> dict | None:
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
#                           What a finished run leaves                          #
#################################################################################

def noisy_input(model: SDTTransformer2DModel, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What ``model`` sees at timestep ``t``: ``x_t`` of its objective (DDPM's or the flow's path)."""
    return make_objective(model.config.objective, learn_sigma=False).noised(x0, t, noise)[0]


def strength_vs_timestep(model: SDTTransformer2DModel, x0: torch.Tensor, labels: torch.Tensor) -> list:
    """Per timestep, layer and head: ``exp(2 * mean rate)``, the decay per unit of grid distance (1: none)."""
    curves = []
    for t in GATE_TIMESTEPS:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        t_batch = torch.full((len(x0),), t, dtype=torch.long)
        xt = noisy_input(model, x0, t_batch, noise)
        rates = model.decay_rates(xt, t_batch, labels)  # (depth, B, H, N)
        curves.append(torch.exp(2 * rates.mean(dim=(1, 3))).tolist())  # (depth, H)
    return curves  # (T, depth, H)


def map_queries(grid_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The query tokens of the decay-map picture: a corner, the centre and a point low on the left."""
    h, w = grid_size
    return [(1, 1), (h // 2, w // 2), (h - 2, w // 3)]


def final_artifacts(out: Path, name: str, heldout: tuple, steps: list[int]) -> Path:
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
