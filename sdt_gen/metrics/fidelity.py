"""FID, IS, KID and precision/recall of generated images through torch-fidelity.

Weights. torch-fidelity takes the weights of its feature extractors, Inception
(``inception-v3-compat``, for FID, IS and KID) and VGG16 (``vgg16``, for precision/recall), from
torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``), downloading them there on first use. Here that happens before
any image is read, so a run fails before hours of sampling rather than after: every call hands
torch-fidelity an explicit ``feature_extractor_weights_path``, found beforehand. That is the path
given (``--inception-weights`` / ``--vgg16-weights``), else the file in that folder, else the
file downloaded there with the URL, file name and hash check torch-fidelity's own download uses
(``torch.hub.download_url_to_file``). Offline, a missing file raises ``WeightsNotFoundError`` at
once, naming the file, its URL, where to put it and the flag to pass instead. Offline means
``HF_HUB_OFFLINE=1``, the project's offline switch (torch.hub and torch-fidelity have none of
their own), or a server that does not answer within ``PROBE_TIMEOUT_S`` seconds.

Reference cache. With ``cache_name``, torch-fidelity keeps the reference's features and FID
statistics in ``cache_root`` (default ``$TORCH_HOME/fidelity_cache``) as
``{cache_name}-{extractor}-features-{layer}.pt`` and ``{cache_name}-{extractor}-stat-fid-{layer}.pt``:
computed on first use, read on every later one, and enough on their own (``reference=None``).
torch-fidelity keys them by name only, so a name must stand for one reference set at one image
size, resize setting and weights file: take a new name when any of them changes.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch
import torch_fidelity
import torchvision
from torch_fidelity.defaults import DEFAULTS as FIDELITY_DEFAULTS
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from ..hub import hub_offline
from .datasets import ImageDataset, ImageSource, as_image_dataset

logger = logging.getLogger(__name__)

INCEPTION = "inception-v3-compat"
VGG16 = "vgg16"
METRICS = ("fid", "isc", "kid", "prc")
# torch-fidelity's default feature extractor of each metric; precision/recall needs its own call.
EXTRACTOR_OF_METRIC = {"fid": INCEPTION, "isc": INCEPTION, "kid": INCEPTION, "prc": VGG16}
_EXTRACTOR_CLASS = {
    INCEPTION: torch_fidelity.FeatureExtractorInceptionV3,
    VGG16: torch_fidelity.FeatureExtractorVGG16,
}


# How long a missing file's server may take to answer before the run is taken to be offline.
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WeightsSource:
    """Where torch-fidelity fetches a feature extractor's weights, and how users pass a local copy.

    Args:
        url: the download URL; its last part is the file name torch.hub stores it under.
        flag: the command-line option that takes a local path.
        check_hash: whether the download is checked against the hex digits ending the file name
            (torchvision's weights, hence torch-fidelity's VGG16, are; its Inception is not).
    """

    url: str
    flag: str
    check_hash: bool = False

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str | None:
        """What ``torch.hub.load_state_dict_from_url`` checks the download's sha256 against."""
        return torch.hub.HASH_REGEX.search(self.file_name).group(1) if self.check_hash else None


WEIGHTS = {
    INCEPTION: WeightsSource(URL_INCEPTION_V3, "--inception-weights"),
    VGG16: WeightsSource(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url, "--vgg16-weights", check_hash=True),
}


class WeightsNotFoundError(FileNotFoundError):
    """A feature extractor's weights are neither at the given path nor in, or downloadable to, torch-fidelity's cache."""


def default_weights_path(extractor: str) -> Path:
    """Where torch-fidelity's download puts an extractor's weights: ``$TORCH_HOME/hub/checkpoints/<file>``.

    Args:
        extractor: ``"inception-v3-compat"`` or ``"vgg16"``.
    """
    if extractor not in WEIGHTS:
        raise ValueError(f"unknown feature extractor {extractor!r}; expected one of {sorted(WEIGHTS)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS[extractor].file_name


def _unreachable(url: str) -> str | None:
    """Why ``url``'s server cannot be reached, or ``None`` when it answers within ``PROBE_TIMEOUT_S``.

    The HEAD request runs in a daemon thread because a socket timeout does not bound the name
    lookup, which on a machine without internet can block far longer. Any HTTP answer, an error
    status included, shows the network works; the download then reports its own HTTP errors.

    Args:
        url: the file to download.
    """
    outcome = []

    def probe():
        # torch.hub's User-Agent, so the server answers the probe as it will answer the download.
        request = Request(url, method="HEAD", headers={"User-Agent": "torch.hub"})
        try:
            urlopen(request, timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except HTTPError:
            outcome.append(None)
        except Exception as error:  # whatever stops the probe stops the download; uncaught, it would be lost here
            outcome.append(str(getattr(error, "reason", error)))

    thread = threading.Thread(target=probe, name="weights-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    return outcome[0] if outcome else f"no answer within {PROBE_TIMEOUT_S:g} s"


def _download(source: WeightsSource, destination: Path) -> str | None:
    """Downloads ``source`` to ``destination`` as ``torch.hub.load_state_dict_from_url`` does; returns why not.

    Args:
        source: the weights to fetch.
        destination: the file in torch.hub's checkpoint folder.
    """
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    host = urlparse(source.url).netloc
    reason = _unreachable(source.url)
    if reason is not None:
        return f"{host} cannot be reached ({reason})"
    logger.info(f"downloading {source.url} to {destination}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        # torch.hub writes to a temporary name and renames it when complete (and, with a hash
        # prefix, verified), so a failed or concurrent download never leaves a truncated file.
        torch.hub.download_url_to_file(source.url, str(destination), source.hash_prefix, progress=True)
    except (OSError, http.client.HTTPException, RuntimeError) as error:  # RuntimeError: a hash mismatch
        return f"downloading it from {host} failed ({error})"
    return None


def resolve_weights(extractor: str, path: str | os.PathLike | None = None) -> Path:
    """Returns the weights file of a feature extractor, downloading it when torch-fidelity would.

    A ``path`` must exist. Without one, the file in torch-fidelity's download cache is used, and
    downloaded there first when missing, unless offline (``HF_HUB_OFFLINE=1``, or the server does
    not answer within ``PROBE_TIMEOUT_S`` seconds). Every failure raises ``WeightsNotFoundError``
    with one line naming the file, its URL, where it belongs and the flag to pass.

    Args:
        extractor: ``"inception-v3-compat"`` or ``"vgg16"``.
        path: a local weights file; ``None`` uses torch-fidelity's download cache.
    """
    cached = default_weights_path(extractor)
    source = WEIGHTS[extractor]
    if path is not None:
        given = Path(path).expanduser()
        if given.is_file():
            return given
        raise WeightsNotFoundError(
            f"{source.flag} {given} does not exist: expected the {extractor} weights {source.file_name} (from "
            f"{source.url}); leave {source.flag} out to use or download {cached}"
        )
    if cached.is_file():
        return cached
    reason = _download(source, cached)
    if reason is None:
        return cached
    raise WeightsNotFoundError(
        f"{extractor} weights {source.file_name} are not in torch-fidelity's download cache and {reason}: fetch "
        f"{source.url} elsewhere and copy it to {cached}, or pass {source.flag} PATH"
    )


def resolve_feature_extractor_weights(
    metrics: Sequence[str],
    inception_weights: str | os.PathLike | None = None,
    vgg16_weights: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Returns the weights file of every feature extractor the metrics need, keyed by extractor.

    Args:
        metrics: names from ``METRICS``.
        inception_weights: local Inception weights; ``None`` uses (or downloads to) torch-fidelity's cache.
        vgg16_weights: local VGG16 weights; ``None`` uses (or downloads to) torch-fidelity's cache.
    """
    given = {INCEPTION: inception_weights, VGG16: vgg16_weights}
    found, missing = {}, []
    for extractor in dict.fromkeys(EXTRACTOR_OF_METRIC[m] for m in _check_metrics(metrics)):
        try:
            found[extractor] = resolve_weights(extractor, given[extractor])
        except WeightsNotFoundError as error:
            missing.append(str(error))
    if missing:
        # All at once, so an offline user fetches every file in one go.
        raise WeightsNotFoundError("\n".join(missing))
    return found


def default_cache_root() -> Path:
    """torch-fidelity's own default cache folder: ``$TORCH_HOME/fidelity_cache``."""
    return Path(torch.hub._get_torch_home()) / "fidelity_cache"


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    """Validates metric names and returns them as a tuple without repeats.

    Args:
        metrics: names from ``METRICS``.
    """
    metrics = (metrics,) if isinstance(metrics, str) else tuple(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown or no metrics {unknown or list(metrics)}; expected some of {list(METRICS)}")
    return metrics


def _layer(extractor: str, metric: str) -> str:
    return _EXTRACTOR_CLASS[extractor].get_default_feature_layer_for_metric(metric)


def _reference_cache_needs(cache_root: Path, cache_name: str, metrics: Sequence[str]) -> list[tuple[Path, ...]]:
    """For each lookup torch-fidelity makes for a cached reference, the files that answer it (any one).

    Names as torch-fidelity 0.4 builds them in ``utils.extract_featuresdict_from_input_id_cached``
    (features) and ``metric_fid.fid_input_id_to_statistics_cached`` (statistics).

    Args:
        cache_root: the cache folder.
        cache_name: the reference's name in it.
        metrics: the metrics to compute.
    """

    def features(extractor: str, metric: str) -> Path:
        return cache_root / f"{cache_name}-{extractor}-features-{_layer(extractor, metric)}.pt"

    needs = []
    if "kid" in metrics:
        needs.append((features(INCEPTION, "kid"),))
    elif "fid" in metrics:
        # FID alone reads the statistics, or computes them from cached features.
        statistics = cache_root / f"{cache_name}-{INCEPTION}-stat-fid-{_layer(INCEPTION, 'fid')}.pt"
        needs.append((statistics, features(INCEPTION, "fid")))
    if "prc" in metrics:
        needs.append((features(VGG16, "prc"),))
    return needs


def _prepare_reference(
    reference: ImageSource | None,
    metrics: Sequence[str],
    size: tuple[int, int] | None,
    resize: bool,
    cache_name: str | None,
    cache_root: Path,
) -> tuple[ImageDataset | None, int | None]:
    """Opens the reference images, or checks the cache stands in for them.

    Returns the reference dataset (``None`` when the cache or nothing is used) and its image
    count (``None`` when only FID statistics are cached).

    Args:
        reference: the reference images, or ``None`` to use the cache.
        metrics: the metrics to compute.
        size: the samples' (height, width), or ``None`` when not known yet.
        resize: resize and center-crop reference images to ``size``.
        cache_name: the reference's name in the cache, or ``None``.
        cache_root: the cache folder.
    """
    if cache_name is not None and (not cache_name or "/" in cache_name or os.sep in cache_name):
        raise ValueError(f"cache_name {cache_name!r} must be a non-empty name without path separators")
    binary = [m for m in metrics if m != "isc"]
    if not binary:
        return None, None
    if reference is not None:
        dataset = as_image_dataset(reference, size=size, resize=resize)
        return dataset, len(dataset)
    if cache_name is None:
        raise ValueError(
            f"{', '.join(binary)} compare against a reference: pass a folder of images, an .npz, or a cache_name "
            f"of reference statistics cached by an earlier run"
        )
    needs = _reference_cache_needs(cache_root, cache_name, metrics)
    missing = [" or ".join(p.name for p in options) for options in needs if not any(p.is_file() for p in options)]
    if missing:
        raise FileNotFoundError(
            f"the reference cache {cache_name!r} in {cache_root} lacks {'; '.join(missing)} (needed for "
            f"{', '.join(binary)}); pass the reference images once with this cache_name to compute them"
        )
    # Cached features hold one row per reference image; cached FID statistics do not say.
    features = [p for options in needs for p in options if "-features-" in p.name and p.is_file()]
    return None, len(torch.load(features[0], mmap=True, weights_only=True)) if features else None


def preflight(
    metrics: Sequence[str],
    reference: ImageSource | None,
    inception_weights: str | os.PathLike | None = None,
    vgg16_weights: str | os.PathLike | None = None,
    cache_name: str | None = None,
    cache_root: str | os.PathLike | None = None,
    sample_size: tuple[int, int] | None = None,
    resize: bool = False,
) -> dict[str, Path]:
    """Checks everything ``compute_metrics`` needs besides the samples, so a run fails before sampling.

    Returns the weights file of each feature extractor. Raises on unknown metrics, missing
    weights, an unreadable reference, a reference of another size than ``sample_size`` (unless
    ``resize``), or a cache that lacks what ``reference=None`` needs.

    Args:
        metrics: names from ``METRICS``.
        reference: as in ``compute_metrics``.
        inception_weights: as in ``compute_metrics``.
        vgg16_weights: as in ``compute_metrics``.
        cache_name: as in ``compute_metrics``.
        cache_root: as in ``compute_metrics``.
        sample_size: the (height, width) the samples will have, if known.
        resize: as in ``compute_metrics``.
    """
    weights = resolve_feature_extractor_weights(metrics, inception_weights, vgg16_weights)
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    _prepare_reference(reference, _check_metrics(metrics), sample_size, resize, cache_name, cache_root)
    return weights


def _fidelity_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available and ``None``; raises for a device torch-fidelity cannot use."""
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"torch-fidelity runs on 'cpu' or 'cuda[:N]', got device {device}")
    return device


def _fit_to_image_counts(
    metrics: Sequence[str], num_samples: int, num_reference: int | None, kid_subset_size: int, isc_splits: int
) -> tuple[int, int, list[str]]:
    """The KID subset size and IS splits the image counts allow, and a note (also logged) on each one lowered."""
    counts = [n for n in (num_samples, num_reference) if n is not None]
    notes = []
    if ("fid" in metrics or "kid" in metrics) and min(counts) < 2:
        raise ValueError(
            f"FID and KID need at least 2 images on each side; got {num_samples} samples and {num_reference} "
            f"reference images"
        )
    neighbours = FIDELITY_DEFAULTS["prc_neighborhood"]
    if "prc" in metrics and min(counts) <= neighbours:
        raise ValueError(
            f"precision/recall compares each image with its {neighbours} nearest neighbours and needs at least "
            f"{neighbours + 1} images on each side; got {num_samples} samples and {num_reference} reference images"
        )
    kid_subset_size_used = min(kid_subset_size, *counts)
    if "kid" in metrics and kid_subset_size_used < kid_subset_size:
        notes.append(
            f"KID subset size lowered from {kid_subset_size} to {kid_subset_size_used} for {num_samples} samples "
            f"and {num_reference} reference images; KID is comparable only at equal subset sizes"
        )
    isc_splits_used = min(isc_splits, num_samples)
    if "isc" in metrics and isc_splits_used < isc_splits:
        notes.append(f"Inception Score splits lowered from {isc_splits} to {isc_splits_used} for {num_samples} samples")
    for note in notes:
        logger.warning(note)
    return kid_subset_size_used, isc_splits_used, notes


def _fidelity_calls(
    metrics: Sequence[str],
    samples: ImageDataset,
    reference: ImageDataset | None,
    cache_name: str | None,
    cache_root: Path,
    device: torch.device,
    **settings: Any,
) -> list[dict[str, Any]]:
    """The keyword arguments of ``torch_fidelity.calculate_metrics``, one call per feature extractor needed."""
    common = {
        "input1": samples,
        # torch-fidelity wants an input2 even when the cache answers; the cache folder holds no
        # images, so a cache miss fails instead of scoring against nothing.
        "input2": reference if reference is not None else str(cache_root),
        "input2_cache_name": cache_name,
        "cache_root": str(cache_root),
        "cuda": device.type == "cuda",
        **settings,
    }
    inception_binary = {m: True for m in ("fid", "kid") if m in metrics}
    # IS reads the samples only. It shares the Inception pass when reference images are read
    # anyway; against a cache it runs alone, because in a shared call torch-fidelity also looks
    # up the reference's IS features, which a cache made without IS lacks.
    isc_alone = "isc" in metrics and (reference is None or not inception_binary)
    calls = []
    if inception_binary:
        isc_shared = "isc" in metrics and not isc_alone
        calls.append({**common, **inception_binary, "isc": isc_shared, "feature_extractor": INCEPTION})
    if isc_alone:
        calls.append({**common, "input2": None, "isc": True, "feature_extractor": INCEPTION})
    if "prc" in metrics:
        calls.append({**common, "prc": True, "feature_extractor": VGG16})
    return calls


def _run_torch_fidelity(calls: list[dict[str, Any]], weights: dict[str, Path], device: torch.device) -> dict[str, Any]:
    """The metrics of every torch-fidelity call, each given its feature extractor's weights file."""
    result: dict[str, Any] = {}
    # torch-fidelity only switches CUDA on or off, and then works on the current CUDA device.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for call in calls:
            weights_path = str(weights[call["feature_extractor"]])
            result.update(torch_fidelity.calculate_metrics(**call, feature_extractor_weights_path=weights_path))
    return result


def compute_metrics(
    samples: ImageSource,
    reference: ImageSource | None,
    metrics: Sequence[str] = METRICS,
    inception_weights: str | os.PathLike | None = None,
    vgg16_weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    cache_name: str | None = None,
    cache_root: str | os.PathLike | None = None,
    resize: bool = False,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    isc_splits: int = 10,
    seed: int = 2020,
    verbose: bool = True,
) -> dict[str, Any]:
    """FID, Inception Score, KID and precision/recall of samples against a reference, via torch-fidelity.

    Returns torch-fidelity's metric keys (``frechet_inception_distance``, ``inception_score_mean``
    and ``_std``, ``kernel_inception_distance_mean`` and ``_std``, ``precision``, ``recall``,
    ``f_score``) for the metrics asked, plus ``num_samples``, ``num_reference`` (``None`` when
    only cached FID statistics were read), the ``kid_subset_size`` and ``isc_splits`` used,
    ``feature_extractors`` (extractor name to weights path) and ``notes``: every setting adapted
    to a small sample count, also logged as a warning.

    Args:
        samples: the generated images: a folder of PNG/JPEG, an ADM-style ``.npz``, a uint8 array
            (N, H, W, 3) or an ``ImageDataset``.
        reference: the real images in the same forms, or ``None`` to read them from the cache
            ``cache_name`` (see the module docstring for where it lives).
        metrics: some of ``"fid"``, ``"isc"``, ``"kid"``, ``"prc"``.
        inception_weights: local ``weights-inception-2015-12-05-6726825d.pth``; ``None`` uses
            torch-fidelity's download cache, downloading the file there when missing and online.
        vgg16_weights: local ``vgg16-397923af.pth`` for precision/recall; ``None`` as for Inception.
        batch_size: images per feature-extractor batch.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``None`` takes CUDA when available.
        cache_name: the reference's name in the cache: computed on first use, read afterwards.
        cache_root: the cache folder; ``None`` is torch-fidelity's default, ``$TORCH_HOME/fidelity_cache``.
        resize: resize (shorter side) and center-crop reference images whose size differs from the
            samples' instead of raising.
        kid_subset_size: KID subset size, lowered to the smaller image count when needed.
        kid_subsets: number of KID subsets.
        isc_splits: Inception Score splits, lowered to the sample count when needed.
        seed: torch-fidelity's seed for KID subsets and IS shuffling.
        verbose: let torch-fidelity report progress on stderr.
    """
    metrics = _check_metrics(metrics)
    weights = resolve_feature_extractor_weights(metrics, inception_weights, vgg16_weights)
    device = _fidelity_device(device)
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    samples = as_image_dataset(samples)
    reference, num_reference = _prepare_reference(reference, metrics, samples.size, resize, cache_name, cache_root)

    # 1. Fit settings to small sample counts, or refuse counts the metrics cannot work with.
    num_samples = len(samples)
    kid_subset_size_used, isc_splits_used, notes = _fit_to_image_counts(
        metrics, num_samples, num_reference, kid_subset_size, isc_splits
    )

    # 2. One torch-fidelity call per feature extractor.
    calls = _fidelity_calls(
        metrics, samples, reference, cache_name, cache_root, device, batch_size=batch_size, kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size_used, isc_splits=isc_splits_used, rng_seed=seed, verbose=verbose,
    )
    result = _run_torch_fidelity(calls, weights, device)

    # 3. What was computed, and how.
    result["num_samples"] = num_samples
    result["num_reference"] = num_reference
    if "kid" in metrics:
        result["kid_subset_size"] = kid_subset_size_used
    if "isc" in metrics:
        result["isc_splits"] = isc_splits_used
    result["feature_extractors"] = {name: str(path) for name, path in weights.items()}
    result["notes"] = notes
    return result
