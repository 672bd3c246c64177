"""The image datasets handed to torch-fidelity, and the ADM .npz layout."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdt_gen.metrics import (
    ArrayImageDataset,
    ImageFilesDataset,
    NpzImageDataset,
    ScoringImageFolder,
    as_image_dataset,
    write_adm_npz,
)


def test_folder_dataset_yields_sorted_uint8_rgb_tensors(reference_dir: Path):
    dataset = as_image_dataset(reference_dir)
    assert isinstance(dataset, ScoringImageFolder)
    assert [p.name for p in dataset.files] == ["000.png", "001.jpg", "002.png", "003.png", "004.png"]
    for index in range(len(dataset)):
        image = dataset[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    gray = dataset[0]  # saved as a one-channel PNG
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    with Image.open(dataset.files[2]) as picture:
        expected = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(dataset[2], expected)


def test_folder_dataset_searches_subfolders(tmp_path: Path, make_image_array: Callable[..., np.ndarray]):
    for name, image in zip(("b/x.png", "a/y.JPEG", "c.png"), make_image_array(3, 8, seed=0)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / name, format="PNG" if name.endswith("png") else "JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = ScoringImageFolder(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in dataset.files] == ["a/y.JPEG", "b/x.png", "c.png"]


@pytest.mark.parametrize("kind", ["folder", "npz", "array"])
def test_datasets_pickle(kind: str, tmp_path: Path, samples_dir: Path):
    folder = as_image_dataset(samples_dir)
    source = {
        "folder": lambda: samples_dir,
        "npz": lambda: write_adm_npz(samples_dir, tmp_path / "s.npz"),
        "array": lambda: np.stack([folder[i].permute(1, 2, 0).numpy() for i in range(len(folder))]),
    }[kind]()
    dataset = as_image_dataset(source)
    restored = pickle.loads(pickle.dumps(dataset))
    assert len(restored) == len(folder) == 4
    assert all(torch.equal(restored[i], folder[i]) for i in range(len(folder)))


def test_write_adm_npz_has_the_adm_layout(tmp_path: Path, reference_dir: Path):
    path = write_adm_npz(reference_dir, tmp_path / "sub" / "ref.npz")
    with np.load(path) as npz:
        assert npz.files == ["arr_0"]
        images = npz["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (5, 32, 32, 3)
    folder = as_image_dataset(reference_dir)
    assert all(np.array_equal(images[i], folder[i].permute(1, 2, 0).numpy()) for i in range(5))
    with zipfile.ZipFile(path) as archive:
        # Stored uncompressed, so readers can memory-map it, as np.savez writes it.
        assert archive.getinfo("arr_0.npy").compress_type == zipfile.ZIP_STORED
    assert isinstance(NpzImageDataset(path).array, np.memmap)
    assert not list(tmp_path.glob("sub/*.partial"))


def test_npz_from_np_savez_is_read_compressed_or_not(tmp_path: Path, make_image_array: Callable[..., np.ndarray]):
    images = make_image_array(3, 8, seed=0)
    np.savez(tmp_path / "plain.npz", arr_0=images, label=np.arange(3))
    np.savez_compressed(tmp_path / "packed.npz", arr_0=images)
    for name in ("plain.npz", "packed.npz"):
        dataset = as_image_dataset(tmp_path / name)
        assert np.array_equal(np.stack([dataset[i].permute(1, 2, 0).numpy() for i in range(3)]), images)
    np.savez(tmp_path / "stats.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="holds no 'arr_0' \\(it holds mu\\)"):
        as_image_dataset(tmp_path / "stats.npz")


def test_array_dataset_accepts_gray_and_rejects_bad_arrays():
    gray = ArrayImageDataset(np.full((2, 5, 5), 7, np.uint8))
    assert gray[1].shape == (3, 5, 5) and int(gray[1].sum()) == 7 * 75
    with pytest.raises(TypeError, match="float32 values; expected uint8"):
        as_image_dataset(np.zeros((2, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="channels-first"):
        as_image_dataset(np.zeros((2, 3, 5, 5), np.uint8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        as_image_dataset("/no/such/folder")
    with pytest.raises(TypeError, match="cannot read images from a list"):
        as_image_dataset([1, 2])


def test_reference_of_another_size_is_an_error_naming_both_sizes(make_image_folder: Callable[..., Path]):
    reference = make_image_folder(2, size=48, seed=3)
    with pytest.raises(ValueError, match="are 48x48 but 32x32 is required"):
        as_image_dataset(reference, size=(32, 32))
    resized = as_image_dataset(reference, size=(32, 32), resize=True)
    assert resized[0].shape == (3, 32, 32) and resized[0].dtype == torch.uint8


def test_mixed_sizes_in_a_folder_error_per_image_unless_resized(tmp_path: Path, make_image_array):
    Image.fromarray(make_image_array(1, 16, seed=0)[0]).save(tmp_path / "a.png")
    Image.fromarray(make_image_array(1, 24, seed=1)[0][:, :20]).save(tmp_path / "b.png")  # 24 high, 20 wide
    dataset = as_image_dataset(tmp_path)
    with pytest.raises(ValueError, match="b.png is 24x20 but the images of .* must all be 16x16"):
        dataset[1]
    assert dataset.with_size((16, 16), resize=True)[1].shape == (3, 16, 16)


def test_scoring_folder_is_an_image_files_dataset_built_through_its_init(reference_dir: Path):
    folder = ScoringImageFolder(reference_dir)
    assert isinstance(folder, ImageFilesDataset) and folder.source == str(reference_dir)
    files = ImageFilesDataset(folder.files[:2])
    assert files.source == str(reference_dir) and len(files) == 2 and files.size == folder.size
    assert torch.equal(files[1], folder[1])
    with pytest.raises(ValueError, match="no image files given"):
        ImageFilesDataset([])
