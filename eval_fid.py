"""Score a class-conditional SDT pipeline with FID, IS, KID and precision/recall (torch-fidelity).

    accelerate launch eval_fid.py --model results/003-SDT-XL-2/pipeline --num-samples 50000 --guidance-scale 1.5 \\
        --steps 250 --ref /data/VIRTUAL_imagenet256_labeled.npz --metrics fid isc kid prc --out evals/sdt-xl2
    python eval_fid.py --model DIR --ref /data/imagenet/val --num-samples 10000 --labels balanced
    python eval_fid.py --samples-dir my_images/ --ref /data/ref_images/        # score images that already exist
    python eval_fid.py --model DIR --ref REF.npz --ref-cache imagenet256         # caches the reference's features...
    python eval_fid.py --model DIR --ref-cache imagenet256                       # ...and reuses them by name
    python eval_fid.py --model DIR --metrics --classifier CLS_DIR --ref REF      # classifier metrics only

Defaults are the field's protocol (DiT, ADM): 50k samples, 250 DDPM steps, guidance 1.5 on every
channel (--guided-channels 3 is DiT's original 3-of-4), labels uniform at random.

Writes to --out (default evals/<model name>): samples/ with one PNG per image, its label in the
name (a rerun continues with the missing images; under accelerate every process draws its share,
and image i is the same on any number of processes); samples.npz with --npz (arr_0, uint8,
N x H x W x 3, for ADM's TensorFlow evaluator); results.json with every metric and the full
protocol; history.jsonl, one line per run. Everything is checked before sampling starts, the
feature extractors' weights first: --inception-weights / --vgg16-weights, else torch-fidelity's
cache ($TORCH_HOME/hub/checkpoints), where a missing file is downloaded as torch-fidelity would,
unless HF_HUB_OFFLINE=1 or its server does not answer (then the error says where to get it).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from sdt_gen import SDTPipeline
from sdt_gen.metrics import (
    LABEL_MODES,
    METRICS,
    ImageFilesDataset,
    ImageDataset,
    SamplingStopped,
    ScoringImageFolder,
    TransformersImageClassifier,
    as_image_dataset,
    build_protocol,
    classifier_metrics,
    compute_metrics,
    format_table,
    labels_from_file_names,
    preflight,
    resolve_feature_extractor_weights,
    sample_to_folder,
    write_adm_npz,
    write_results,
)
from sdt_gen.metrics.datasets import bundled_images, training_subset_images
from sdt_gen.metrics.memorization import MEMORIZATION, dataset_memorization
from sdt_gen.metrics.sampling import MANIFEST
from sdt_gen.data import BUNDLED_DATASETS, SUBSET_FILE
from sdt_gen.data.vae import vae_downsampling
from sdt_gen.files import file_sha256
from sdt_gen.hub import local_folder
from sdt_gen.pipelines import SCHEDULERS, check_pipeline_folder, chosen_scheduler
from sdt_gen.training import PREEMPTED_EXIT_CODE, PreemptionHandler
from sdt_gen.cli import add_sampling_arguments, non_negative_int, positive_int, run_main, warn_if_cpu_busy

logger = logging.getLogger("eval_fid")


def default_out_dir(args) -> Path:
    """``evals/<name>``: the model folder's name (its parent's for a ``.../pipeline`` folder) or the samples'."""
    source = Path(args.model or args.samples_dir).expanduser().resolve()
    return Path("evals") / (source.parent.name if source.name == "pipeline" else source.name)


def image_size(pipe: SDTPipeline) -> tuple[int, int]:
    """The (height, width) of the pipeline's images: the transformer's grid, times the VAE's downsampling."""
    height, width = pipe.transformer.sample_hw
    factor = vae_downsampling(pipe.vae) if pipe.vae is not None else 1
    return height * factor, width * factor


def open_reference(args, size: tuple[int, int], path: str | None = None, split: str = "train") -> ImageDataset:
    """The --ref images (or those of ``path``) at the samples' size; another size is an error unless --resize-ref.
    ``path`` may name a bundled data set, whose ``split`` it then is (train_dit.py trains on all the digits), or be
    the run folder of a ``train_dit.py --train-size`` run: the images it trained on."""
    path = path or args.ref
    if path in BUNDLED_DATASETS:
        return bundled_images(path, "all" if (path, split) == ("digits", "train") else split, size[0])
    reference = training_subset_images(path) if (Path(path) / SUBSET_FILE).is_file() else as_image_dataset(path)
    if reference.size != tuple(size) and not args.resize_ref:
        raise ValueError(
            f"the reference {path} holds {reference.size[0]}x{reference.size[1]} images but the samples are "
            f"{size[0]}x{size[1]}; pass --resize-ref to resize (shorter side, bicubic) and center-crop the "
            f"reference to the samples' size, as ADM prepares its reference batches"
        )
    return reference.with_size(size, args.resize_ref)


def check_classifier_labels(classifier: TransformersImageClassifier, num_classes: int, id2label: dict) -> None:
    """The classifier must know every class of the generator, by the same ids."""
    if classifier.num_labels < num_classes:
        raise ValueError(
            f"the classifier {classifier.path} has {classifier.num_labels} labels but the model has {num_classes} "
            f"classes; conditional accuracy needs the classifier's label ids to be the model's class ids"
        )
    differ = [
        (i, name, classifier.id2label[i])
        for i, name in sorted(id2label.items())
        if i in classifier.id2label and classifier.id2label[i] != f"LABEL_{i}" and classifier.id2label[i] != name
    ]
    if differ:
        i, ours, theirs = differ[0]
        logger.warning(
            f"the classifier names {len(differ)} classes differently from the model, e.g. id {i}: {theirs!r} vs "
            f"{ours!r}; conditional accuracy assumes the ids mean the same classes"
        )


def file_record(folder: Path, names: tuple[str, ...]) -> dict:
    """The folder's path and the sha256 of those of ``names`` it holds."""
    return {
        "path": str(folder.resolve()),
        "sha256": {n: file_sha256(folder / n) for n in names if (folder / n).is_file()},
    }


def check_inputs(args, fidelity: list[str], memorization: bool) -> Path | None:
    """The model's local folder (``None`` for --samples-dir); raises for a missing input or a missing reference."""
    model_folder = None
    if args.model is not None:
        model_folder = local_folder(args.model)  # a Hub repo id: its cached snapshot
        check_pipeline_folder(model_folder, required=("transformer", "scheduler"))
    elif not Path(args.samples_dir).is_dir():
        raise FileNotFoundError(f"samples folder {args.samples_dir} does not exist (--samples-dir)")
    if args.ref is not None and not Path(args.ref).exists():
        raise FileNotFoundError(
            f"reference {args.ref} does not exist (--ref): expected a folder of images or an ADM-style .npz"
        )
    if any(m != "isc" for m in fidelity) and args.ref is None and args.ref_cache is None:
        raise ValueError(
            f"--metrics {' '.join(m for m in fidelity if m != 'isc')} compare against a reference: pass --ref "
            f"(a folder of images or an .npz) or --ref-cache NAME (statistics cached by an earlier run)"
        )
    if memorization:
        if args.train_ref is None:
            raise ValueError("--metrics memorization compares samples with the training images: pass --train-ref "
                             "(a folder of images or an .npz)")
        if args.memorization_space == "classifier" and args.classifier is None:
            raise ValueError("--memorization-space classifier measures distances in a classifier's features: "
                             "pass --classifier")
    if args.heldout_ref == "digits":
        raise ValueError("--heldout-ref digits: train_dit.py trains on all 1,797 bundled digits, so none is held out; "
                         "pass a folder of real images the model did not see (or --heldout-ref mnist for MNIST models)")
    for flag, path in (("--train-ref", args.train_ref), ("--heldout-ref", args.heldout_ref)):
        if path is not None and path not in BUNDLED_DATASETS and not Path(path).exists():
            raise FileNotFoundError(f"{flag} {path} does not exist: expected a folder of images or an .npz")
    return model_folder


def resolve_weights_once_per_machine(processes: PartialState, metrics: list[str], args) -> None:
    """Finds the feature extractors' weights on every process, downloading them on each machine's main process."""
    # One download per machine: the others wait, then find the file. The error of a failed
    # download is raised after the barrier, so no process waits there forever.
    failed = None
    if processes.is_local_main_process:
        try:
            resolve_feature_extractor_weights(metrics, args.inception_weights, args.vgg16_weights)
        except Exception as error:
            failed = error
    processes.wait_for_everyone()
    if failed is not None:
        raise failed
    resolve_feature_extractor_weights(metrics, args.inception_weights, args.vgg16_weights)


def load_pipeline(model_folder: Path, device: torch.device, args) -> SDTPipeline:
    """The pipeline on ``device`` in --dtype, with the --attention-backend and --scheduler asked."""
    # Loaded in --dtype: a cast after loading makes diffusers warn about modules kept in float32, even when none are.
    pipe = SDTPipeline.from_pretrained(model_folder, dtype=getattr(torch, args.dtype)).to(device)
    pipe.transformer.set_attention_backend(args.attention_backend)
    pipe.scheduler = chosen_scheduler(pipe.scheduler, args.scheduler, args.flow_shift)
    return pipe


def open_samples_dir(args) -> ScoringImageFolder:
    """The --samples-dir images; with --classifier, their file names must carry the conditioning labels."""
    samples = ScoringImageFolder(args.samples_dir)
    if args.classifier:
        labels_from_file_names(samples.files)
    return samples


def open_classifier(args, device: torch.device, pipe: SDTPipeline | None) -> TransformersImageClassifier | None:
    """The --classifier on ``device``, checked against the pipeline's classes; ``None`` without --classifier."""
    if not args.classifier:
        return None
    classifier = TransformersImageClassifier(args.classifier, device)
    if pipe is not None:
        check_classifier_labels(classifier, pipe.transformer.config.num_classes, pipe.id2label)
    return classifier


def sample_images(pipe: SDTPipeline, out_dir: Path, args, processes: PartialState) -> ImageFilesDataset:
    """The run's images in ``out_dir/samples``, the missing ones drawn by all processes; SIGTERM exits the run."""
    with PreemptionHandler() as preemption:
        try:
            files = sample_to_folder(
                pipe,
                out_dir / "samples",
                num_samples=args.num_samples,
                labels=args.labels,
                seed=args.seed,
                guidance_scale=args.guidance_scale,
                guided_channels=args.guided_channels,
                guidance_interval=args.guidance_interval,
                num_inference_steps=args.steps,
                batch_size=args.batch_size,
                accelerator=processes,
                stop_requested=lambda: preemption.received is not None,
            )
        except SamplingStopped as stopped:
            print(f"{stopped} (exit status {PREEMPTED_EXIT_CODE})", file=sys.stderr)
            raise SystemExit(PREEMPTED_EXIT_CODE) from None
    return ImageFilesDataset(files, source=str(out_dir / "samples"))


def score(
    samples: ImageDataset,
    reference: ImageDataset | None,
    classifier: TransformersImageClassifier | None,
    fidelity: list[str],
    memorization_refs: tuple[ImageDataset, ImageDataset | None] | None,
    device: torch.device,
    args,
    out_dir: Path,
) -> dict:
    """torch-fidelity's ``fidelity`` metrics, the classifier's and, given the training (and held-out) images,
    memorization (its picture, copies.png, in ``out_dir``), with ``num_samples`` and ``notes``."""
    results = {"num_samples": len(samples), "notes": []}
    if fidelity:
        results = compute_metrics(
            samples,
            reference,
            fidelity,
            inception_weights=args.inception_weights,
            vgg16_weights=args.vgg16_weights,
            device=device,
            cache_name=args.ref_cache,
            cache_root=args.cache_root,
            resize=args.resize_ref,
            kid_subset_size=args.kid_subset_size,
        )
    if classifier is not None:
        if reference is None:
            results["notes"].append("classifier Fréchet distance skipped: it needs reference images (--ref)")
        results.update(
            classifier_metrics(classifier, samples, labels_from_file_names(samples.files), reference=reference,
                               batch_size=args.batch_size, resize=args.resize_ref)
        )
    if memorization_refs is not None:
        results.update(dataset_memorization(
            samples, *memorization_refs,
            features=classifier if args.memorization_space == "classifier" else None,
            side=args.memorization_size, device=device, batch_size=args.batch_size,
            picture=out_dir / "copies.png",
        ))
    return results


def protocol_extra(
    args,
    out_dir: Path,
    processes: PartialState,
    device: torch.device,
    pipe: SDTPipeline | None,
    classifier: TransformersImageClassifier | None,
) -> dict:
    """The protocol's ``extra``: where and how this run sampled and scored."""
    extra = {
        "out_dir": str(out_dir.resolve()),
        "num_processes": processes.num_processes,
        "device": str(device),
        "batch_size": args.batch_size,
        "classifier": file_record(Path(args.classifier), ("config.json", "preprocessor_config.json"))
        if classifier is not None else None,
    }
    if pipe is not None:
        manifest = json.loads((out_dir / "samples" / MANIFEST).read_text())
        extra.update(dtype=args.dtype, weights_sha256=manifest["weights_sha256"], attention_backend={
            "requested": args.attention_backend, "ran": pipe.transformer.attention_backends_in_use(),
        })
    return extra


def full_protocol(args, samples: ImageDataset, pipe: SDTPipeline | None, results: dict, extra: dict) -> dict:
    """The full protocol of the scores; the sampling fields are ``None`` when existing images were scored."""
    return build_protocol(
        num_samples=len(samples),
        reference=args.ref,
        cache_name=args.ref_cache,
        model_path=args.model,
        scheduler=pipe.scheduler if pipe is not None else None,
        num_inference_steps=args.steps if pipe is not None else None,
        guidance_scale=args.guidance_scale if pipe is not None else None,
        guidance_channels=(args.guided_channels or "all") if pipe is not None else None,
        guidance_interval=args.guidance_interval if pipe is not None else None,
        label_mode=args.labels if pipe is not None else None,
        seed=args.seed if pipe is not None else None,
        samples_path=samples.source,
        resize_reference=args.resize_ref,
        feature_extractors=results.get("feature_extractors"),
        extra=extra,
    )


def main(args):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    processes = PartialState(cpu=args.device == "cpu")
    device = torch.device(args.device) if args.device and processes.num_processes == 1 else processes.device
    if processes.is_local_main_process:
        warn_if_cpu_busy(device, processes.num_processes)
    metrics = list(dict.fromkeys(args.metrics))
    out_dir = Path(args.out) if args.out else default_out_dir(args)

    # 1. Check every input before anything is sampled (on every process, so an error stops them all)
    fidelity = [m for m in metrics if m != MEMORIZATION]  # what torch-fidelity computes
    model_folder = check_inputs(args, fidelity, MEMORIZATION in metrics)
    if fidelity:  # the weights first: the cheapest check, and the one offline users hit
        resolve_weights_once_per_machine(processes, fidelity, args)
    pipe, samples = None, None
    if model_folder is not None:
        pipe = load_pipeline(model_folder, device, args)
        size = image_size(pipe)
    else:
        samples = open_samples_dir(args)
        size = samples.size
    classifier = open_classifier(args, device, pipe)
    reference = None
    if args.ref is not None and (any(m != "isc" for m in fidelity) or classifier is not None):
        reference = open_reference(args, size)
    memorization_refs = None
    if MEMORIZATION in metrics:  # opened (and their sizes checked) before sampling
        memorization_refs = (open_reference(args, size, args.train_ref),
                             open_reference(args, size, args.heldout_ref, "val") if args.heldout_ref else None)
    if fidelity:
        preflight(fidelity, reference, args.inception_weights, args.vgg16_weights, cache_name=args.ref_cache,
                  cache_root=args.cache_root, sample_size=size, resize=args.resize_ref)

    # 2. Sample on every process; SIGTERM / SIGINT stop after the batch, keeping every image written
    if pipe is not None:
        samples = sample_images(pipe, out_dir, args, processes)
    if not processes.is_main_process:
        return None

    # 3. Score on the main process
    if args.npz:
        npz = write_adm_npz(samples, out_dir / "samples.npz")
        print(f"wrote {npz} (arr_0: {len(samples)} x {size[0]} x {size[1]} x 3, uint8)")
    if not metrics and classifier is None:
        print(f"wrote {len(samples)} samples to {samples.source}; no metric asked (--metrics, --classifier)")
        return {}
    results = score(samples, reference, classifier, fidelity, memorization_refs, device, args, out_dir)

    # 4. Record the metrics with the full protocol
    extra = protocol_extra(args, out_dir, processes, device, pipe, classifier)
    path = write_results(out_dir, results, full_protocol(args, samples, pipe, results, extra))
    print(format_table(results))
    print(f"results: {path} (also appended to {path.with_name('history.jsonl')})")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="saved SDTPipeline folder to sample from")
    source.add_argument("--samples-dir", help="score the PNG/JPEG images of this folder instead of sampling")
    parser.add_argument("--ref", help="reference images: a folder of PNG/JPEG or an ADM-style .npz (arr_0)")
    parser.add_argument("--ref-cache", help="name of the reference's cached features: computed from --ref on "
                        "first use, reused by name afterwards (then --ref may be left out)")
    parser.add_argument("--cache-root", help="folder of cached reference features; default $TORCH_HOME/fidelity_cache")
    parser.add_argument("--resize-ref", action="store_true",
                        help="resize and center-crop reference images of another size to the samples' size")
    parser.add_argument("--num-samples", type=positive_int, default=50000, help="images to sample (FID-50K: 50000)")
    add_sampling_arguments(parser, guidance_scale=1.5, scheduler_names=SCHEDULERS,
                           scheduler_default="the saved scheduler (DiT's DDPM for DDPM models, DiT-exact; Euler for flow models)")
    parser.add_argument("--labels", choices=LABEL_MODES, default="random",
                        help="class labels: uniform at random (as DiT) or balanced (i %% num_classes)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="base seed: labels and image i's noise (seed*1000003+i)")
    parser.add_argument("--metrics", nargs="*", choices=(*METRICS, MEMORIZATION), default=["fid", "isc"],
                        help="torch-fidelity metrics (prc: precision/recall, with VGG16), and memorization (copies of "
                        "--train-ref images); none: sampling and --classifier only")
    parser.add_argument("--train-ref", help="memorization: the training images (folder or .npz) at the samples' size; "
                        "digits / mnist: what train_dit.py --dataset NAME trains on; a --train-size run's folder: its subset")
    parser.add_argument("--heldout-ref", help="memorization: real images the model did not train on (folder, .npz, or "
                        "mnist: its 500 held-out digits); adds how close they sit to the training set, the scale a copy "
                        "is judged against")
    parser.add_argument("--memorization-space", choices=("pixels", "classifier"), default="pixels",
                        help="distances between pixels on [0, 1], or in --classifier's pre-logit features")
    parser.add_argument("--memorization-size", type=positive_int, metavar="SIDE",
                        help="pixels: area-downsample to SIDE x SIDE first (cost / (H/SIDE)^2; ImageNet 256 px: 32)")
    parser.add_argument("--kid-subset-size", type=positive_int, default=1000,
                        help="KID subset size (lowered, and said so, for fewer images)")
    parser.add_argument("--inception-weights", help="local weights-inception-2015-12-05-6726825d.pth (default: "
                        "torch-fidelity's cache $TORCH_HOME/hub/checkpoints, downloaded there unless HF_HUB_OFFLINE=1)")
    parser.add_argument("--vgg16-weights", help="local vgg16-397923af.pth for prc (default: as --inception-weights)")
    parser.add_argument("--classifier", help="transformers image-classifier folder (with its image processor): adds "
                        "conditional accuracy and a Fréchet distance in its pre-logit features")
    parser.add_argument("--npz", action="store_true", help="also write samples.npz for ADM's TensorFlow evaluator")
    parser.add_argument("--out", help="output folder; default evals/<model name>")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N for one process; default: the process's accelerate device")
    return parser


if __name__ == "__main__":
    run_main(main, build_parser())
