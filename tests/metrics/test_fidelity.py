"""compute_metrics against torch-fidelity's own calls, with random-weights extractors and no network.

Each test here runs torch-fidelity's real Inception (random weights, CPU) on a handful of 32x32
images; module fixtures share the expensive runs. FID is computed only where a test is about
FID: its 2048x2048 eigendecomposition costs more on two CPU cores than the images do.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from sdt_gen.metrics import (
    INCEPTION,
    VGG16,
    WEIGHTS,
    WeightsNotFoundError,
    compute_metrics,
    default_weights_path,
    format_table,
    preflight,
    resolve_feature_extractor_weights,
    resolve_weights,
    write_adm_npz,
)
from sdt_gen.metrics import fidelity

FID = torch_fidelity.KEY_METRIC_FID
KID = torch_fidelity.KEY_METRIC_KID_MEAN
FEATURE_KEYS = (  # the metrics computed from features alone, without FID statistics
    torch_fidelity.KEY_METRIC_ISC_MEAN,
    torch_fidelity.KEY_METRIC_ISC_STD,
    KID,
    torch_fidelity.KEY_METRIC_KID_STD,
)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fidelity_cache")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """An empty TORCH_HOME, online: the download probe's requests and torch.hub's downloads are recorded.

    ``probes`` holds (method, url, timeout) and ``downloads`` (url, destination, hash_prefix); a
    download links the destination to ``hub.file``, a few bytes unless a test sets real weights.
    """
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    record = SimpleNamespace(probes=[], downloads=[], file=tmp_path / "downloaded.pth")
    record.file.write_bytes(b"weights")

    def answer(request, timeout):
        record.probes.append((request.get_method(), request.full_url, timeout))
        return io.BytesIO()

    def download(url, dst, hash_prefix=None, progress=True):
        record.downloads.append((url, dst, hash_prefix))
        Path(dst).symlink_to(record.file)

    monkeypatch.setattr(fidelity, "urlopen", answer)
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return record


@pytest.fixture(scope="module")
def folder_metrics(samples_dir: Path, reference_dir: Path, inception_weights: Path, cache_root: Path) -> dict:
    """FID, IS and KID of the 4 samples against the 5 reference images, caching the reference as "ref"."""
    return compute_metrics(
        samples_dir,
        reference_dir,
        metrics=("fid", "isc", "kid"),
        inception_weights=inception_weights,
        device="cpu",
        cache_name="ref",
        cache_root=cache_root,
        verbose=False,
    )


def test_metrics_equal_a_direct_torch_fidelity_call(
    folder_metrics: dict, samples_dir: Path, reference_dir: Path, inception_weights: Path
):
    direct = torch_fidelity.calculate_metrics(
        input1=str(samples_dir),
        input2=str(reference_dir),
        fid=True,
        isc=True,
        kid=True,
        kid_subset_size=4,
        isc_splits=4,
        feature_extractor_weights_path=str(inception_weights),
        cuda=False,
        cache=False,
        verbose=False,
    )
    for key in (FID, *FEATURE_KEYS):
        assert folder_metrics[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-12), key
    assert folder_metrics[FID] > 1.0  # the random Inception does tell the two sets apart


def test_small_sample_counts_lower_the_kid_subset_size_and_say_so(folder_metrics: dict, inception_weights: Path):
    assert folder_metrics["num_samples"] == 4 and folder_metrics["num_reference"] == 5
    assert folder_metrics["kid_subset_size"] == 4 and folder_metrics["isc_splits"] == 4
    assert any("KID subset size lowered from 1000 to 4" in note for note in folder_metrics["notes"])
    assert folder_metrics["feature_extractors"] == {INCEPTION: str(inception_weights)}
    table = format_table(folder_metrics)
    assert "FID" in table and "KID subset 4" in table and "note: KID subset size lowered" in table


def test_cached_reference_is_reused_by_name(
    folder_metrics: dict, samples_dir: Path, inception_weights: Path, cache_root: Path, caplog
):
    assert (cache_root / "ref-inception-v3-compat-features-2048.pt").is_file()
    assert (cache_root / "ref-inception-v3-compat-stat-fid-2048.pt").is_file()
    with caplog.at_level(logging.WARNING, logger="sdt_gen.metrics.fidelity"):
        out = compute_metrics(
            samples_dir,
            None,
            metrics=("isc", "kid"),
            inception_weights=inception_weights,
            device="cpu",
            cache_name="ref",
            cache_root=cache_root,
            verbose=False,
        )
    for key in FEATURE_KEYS:
        assert out[key] == pytest.approx(folder_metrics[key], rel=1e-6, abs=1e-12), key
    assert out["num_reference"] == 5
    assert "KID subset size lowered from 1000 to 4" in caplog.text


def test_reference_problems_are_clear_errors(
    samples_dir: Path, inception_weights: Path, make_image_folder: Callable[..., Path], tmp_path: Path
):
    run = dict(metrics=("fid",), inception_weights=inception_weights, device="cpu", cache_root=tmp_path, verbose=False)
    with pytest.raises(FileNotFoundError, match="reference cache 'absent' in .* lacks absent-inception-v3-compat-stat"):
        compute_metrics(samples_dir, None, cache_name="absent", **run)
    with pytest.raises(ValueError, match="fid compare against a reference"):
        compute_metrics(samples_dir, None, **run)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compute_metrics(samples_dir, tmp_path / "missing", **run)
    with pytest.raises(ValueError, match="at least 2 images on each side; got 1 samples"):
        compute_metrics(make_image_folder(1), samples_dir, **run)
    with pytest.raises(ValueError, match="unknown or no metrics \\['fdi'\\]"):
        compute_metrics(samples_dir, samples_dir, **{**run, "metrics": ("fdi",)})


def test_npz_reference_of_another_size_errors_unless_resized(
    tmp_path: Path, samples_dir: Path, inception_weights: Path, make_image_array: Callable[..., np.ndarray]
):
    # ADM's reference layout (arr_0: uint8, N x H x W x 3) at 48x48, against 32x32 samples held in memory.
    reference = tmp_path / "reference.npz"
    np.savez(reference, arr_0=make_image_array(3, 48, seed=5, brightness=60.0))
    with np.load(write_adm_npz(samples_dir, tmp_path / "samples.npz")) as npz:
        samples = npz["arr_0"]
    run = dict(metrics=("kid",), inception_weights=inception_weights, device="cpu", verbose=False)
    with pytest.raises(ValueError, match="are 48x48 but 32x32 is required"):
        compute_metrics(samples, reference, **run)
    out = compute_metrics(samples, reference, resize=True, **run)
    assert out[KID] > 0.0 and (out["num_samples"], out["num_reference"]) == (4, 3)


def test_missing_weights_raise_at_once_without_network(
    samples_dir: Path, reference_dir: Path, inception_weights: Path, tmp_path: Path
):
    # TORCH_HOME is an empty folder here, and the offline fixture fails any connection: the
    # download probe gets no answer, so the run is taken to be offline.
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as missing_inception:
        compute_metrics(samples_dir, reference_dir, metrics=("fid",), device="cpu", verbose=False)
    message = str(missing_inception.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and "github.com cannot be reached" in message
    assert URL_INCEPTION_V3 in message and "--inception-weights PATH" in message

    with pytest.raises(WeightsNotFoundError) as missing_vgg:
        compute_metrics(samples_dir, reference_dir, metrics=("fid", "prc"), inception_weights=inception_weights)
    message = str(missing_vgg.value)
    assert "vgg16-397923af.pth" in message and WEIGHTS[VGG16].url in message and "--vgg16-weights PATH" in message

    with pytest.raises(WeightsNotFoundError, match="--inception-weights .*nowhere.pth does not exist"):
        compute_metrics(samples_dir, reference_dir, metrics=("isc",), inception_weights=tmp_path / "nowhere.pth")
    assert time.monotonic() - start < 5.0


def test_preflight_checks_weights_reference_and_size_before_any_sampling(
    reference_dir: Path, inception_weights: Path, tmp_path: Path
):
    assert preflight(("fid", "isc"), reference_dir, inception_weights=inception_weights) == {
        INCEPTION: inception_weights
    }
    with pytest.raises(ValueError, match="are 32x32 but 256x256 is required"):
        preflight(("fid",), reference_dir, inception_weights=inception_weights, sample_size=(256, 256))
    with pytest.raises(FileNotFoundError, match="reference cache 'imagenet' .* lacks"):
        preflight(("kid",), None, inception_weights=inception_weights, cache_name="imagenet", cache_root=tmp_path)
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth"):
        preflight(("prc",), reference_dir)


def test_weights_in_torch_fidelity_download_cache_are_found(hub: SimpleNamespace, inception_weights: Path):
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(inception_weights)
    assert resolve_feature_extractor_weights(("fid", "kid")) == {INCEPTION: cached}
    assert hub.probes == [] and hub.downloads == []


class _Intercepted(BaseException):
    """Ends torch-fidelity's own download once recorded; not an Exception, which torchvision's VGG16 retries."""


@pytest.mark.parametrize(("extractor", "layer"), [(INCEPTION, "2048"), (VGG16, "fc2_relu")])
def test_missing_weights_are_downloaded_as_torch_fidelity_itself_would(
    extractor: str, layer: str, hub: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
):
    own = []

    def intercept(url, dst, hash_prefix=None, progress=True):
        own.append((url, dst, hash_prefix))
        raise _Intercepted

    with monkeypatch.context() as patch, pytest.raises(_Intercepted):
        patch.setattr(torch.hub, "download_url_to_file", intercept)
        fidelity._EXTRACTOR_CLASS[extractor](extractor, [layer], verbose=False)

    path = resolve_weights(extractor)
    assert hub.downloads == own and path == Path(own[0][1]) == default_weights_path(extractor)
    assert path.read_bytes() == b"weights"
    assert hub.probes == [("HEAD", WEIGHTS[extractor].url, fidelity.PROBE_TIMEOUT_S)]
    assert fidelity.PROBE_TIMEOUT_S <= 5.0


def test_downloaded_inception_weights_are_what_torch_fidelity_runs_with(
    hub: SimpleNamespace, samples_dir: Path, inception_weights: Path, folder_metrics: dict
):
    hub.file = inception_weights
    out = compute_metrics(samples_dir, None, metrics=("isc",), device="cpu", verbose=False)
    assert out["feature_extractors"] == {INCEPTION: str(default_weights_path(INCEPTION))}
    for key in (torch_fidelity.KEY_METRIC_ISC_MEAN, torch_fidelity.KEY_METRIC_ISC_STD):
        assert out[key] == pytest.approx(folder_metrics[key], rel=1e-6, abs=1e-12), key
    assert resolve_weights(INCEPTION) == default_weights_path(INCEPTION)
    assert [url for url, _, _ in hub.downloads] == [URL_INCEPTION_V3]  # downloaded once, then read from the cache


def test_offline_missing_weights_fail_at_once_with_one_line_each(
    hub: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as missing:
        resolve_feature_extractor_weights(("fid", "prc"))
    assert time.monotonic() - start < 2.0
    assert hub.probes == [] and hub.downloads == []
    lines = str(missing.value).splitlines()
    assert len(lines) == 2
    for line, extractor in zip(lines, (INCEPTION, VGG16)):
        source = WEIGHTS[extractor]
        assert "HF_HUB_OFFLINE is set" in line and source.file_name in line and source.url in line
        assert f"copy it to {default_weights_path(extractor)}" in line and f"or pass {source.flag} PATH" in line


def test_a_server_without_answer_counts_as_offline(hub: SimpleNamespace, monkeypatch: pytest.MonkeyPatch):
    released = threading.Event()
    monkeypatch.setattr(fidelity, "urlopen", lambda request, timeout: released.wait(30) and io.BytesIO())
    monkeypatch.setattr(fidelity, "PROBE_TIMEOUT_S", 0.2)
    start = time.monotonic()
    try:
        with pytest.raises(WeightsNotFoundError, match=r"github.com cannot be reached \(no answer within 0.2 s\)"):
            resolve_weights(INCEPTION)
        assert time.monotonic() - start < 2.0 and hub.downloads == []
    finally:
        released.set()


@pytest.mark.parametrize(
    "failure", [URLError("connection reset"), RuntimeError('invalid hash value (expected "397923af", got "00")')]
)
def test_a_failed_download_is_one_clear_line(failure: Exception, hub: SimpleNamespace, monkeypatch: pytest.MonkeyPatch):
    def fail(url, dst, hash_prefix=None, progress=True):
        raise failure

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(WeightsNotFoundError) as missing:
        resolve_weights(VGG16)
    message = str(missing.value)
    assert "\n" not in message and "--vgg16-weights PATH" in message and WEIGHTS[VGG16].url in message
    assert f"downloading it from download.pytorch.org failed ({failure})" in message
    assert not default_weights_path(VGG16).exists()


def test_precision_recall_runs_as_its_own_vgg16_call(
    samples_dir: Path,
    reference_dir: Path,
    inception_weights: Path,
    vgg16_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_image_folder: Callable[..., Path],
):
    calls = []
    real = torch_fidelity.calculate_metrics

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(torch_fidelity, "calculate_metrics", spy)
    with pytest.raises(ValueError, match="at least 4 images on each side; got 3 samples"):
        compute_metrics(make_image_folder(3), reference_dir, metrics=("prc",), vgg16_weights=vgg16_weights)
    out = compute_metrics(
        samples_dir,
        reference_dir,
        metrics=("isc", "prc"),
        inception_weights=inception_weights,
        vgg16_weights=vgg16_weights,
        device="cpu",
        verbose=False,
    )
    assert [(c["feature_extractor"], c["feature_extractor_weights_path"]) for c in calls] == [
        (INCEPTION, str(inception_weights)),
        (VGG16, str(vgg16_weights)),
    ]
    assert not calls[0].get("prc") and calls[1]["prc"] and not calls[1].get("isc")
    for key in ("precision", "recall", "f_score"):
        assert 0.0 <= out[key] <= 1.0
    assert out["feature_extractors"] == {INCEPTION: str(inception_weights), VGG16: str(vgg16_weights)}
