"""Class folders: ADM crop, flip, id2label, corrupt files and bad folders."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sdt_gen.data import ImageFolderDataset, center_crop_arr, collate_skip_none


@pytest.mark.parametrize(
    "size_in, image_size",
    [((1000, 600), 256), ((600, 1000), 256), ((300, 900), 64), ((10, 20), 32), ((256, 256), 256), ((513, 700), 256)],
)
def test_center_crop_sizes(size_in, image_size):
    out = center_crop_arr(Image.new("RGB", size_in), image_size)
    assert out.size == (image_size, image_size) and out.mode == "RGB"


def test_center_crop_keeps_the_middle():
    # A tall image in three horizontal bands: the square centre crop is all middle band.
    pixels = np.zeros((900, 300, 3), dtype=np.uint8)
    pixels[:300, :, 0] = 255
    pixels[300:600, :, 1] = 255
    pixels[600:, :, 2] = 255
    out = np.asarray(center_crop_arr(Image.fromarray(pixels), 64)).astype(int)
    assert out.shape == (64, 64, 3)
    inner = out[2:-2]  # bicubic blends the bands within a pixel or two of the crop's edges
    assert (inner[..., 1] > 250).all() and (inner[..., [0, 2]] < 5).all()


def test_center_crop_box_halving_then_bicubic():
    # 1000x600 at 256: one BOX halving (600 >= 512) to 500x300, then bicubic to 427x256, crop x=85.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 1000, 3), dtype=np.uint8))
    expected = image.resize((500, 300), Image.BOX).resize((427, 256), Image.BICUBIC).crop((85, 0, 341, 256))
    assert np.array_equal(np.asarray(center_crop_arr(image, 256)), np.asarray(expected))


def test_image_folder_items_and_labels(image_folder):
    dataset = ImageFolderDataset(image_folder, image_size=16)
    assert len(dataset) == 10 and dataset.num_classes == 2
    assert dataset.id2label == {0: "cat", 1: "dog"}
    image, label = dataset[7]
    assert image.shape == (3, 16, 16) and label == 1
    assert image.min() >= -1 and image.max() <= 1


def test_random_flip(image_folder):
    fixed = ImageFolderDataset(image_folder, image_size=16, random_flip=False)
    flipping = ImageFolderDataset(image_folder, image_size=16, random_flip=True)
    reference = fixed[0][0]
    assert torch.equal(fixed[0][0], reference)
    torch.manual_seed(0)
    seen = {torch.equal(flipping[0][0], reference.flip(-1)) for _ in range(20)}
    assert seen == {True, False}


def test_imagenet_layout_gets_imagenet_names_unless_a_mapping_is_given(make_image_folder, tmp_path):
    wordnet_ids = [f"n{i:08d}" for i in range(1000)]
    imagenet = ImageFolderDataset(make_image_folder("in1k", wordnet_ids, per_class=1, size=(4, 4)), 4)
    assert imagenet.id2label[207] == "golden retriever" and imagenet.id2label[360] == "otter"
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({name: name.upper() for name in wordnet_ids}))
    assert ImageFolderDataset(tmp_path / "in1k", 4, class_names=mapping).id2label[207] == "N00000207"
    shutil.rmtree(tmp_path / "in1k" / wordnet_ids[-1])  # 999 WordNet folders: not ImageNet-1k, folder names stay
    assert ImageFolderDataset(tmp_path / "in1k", 4).id2label[207] == "n00000207"


def test_class_name_mapping(image_folder, tmp_path):
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"cat": "tabby cat", "dog": "golden retriever", "fox": "red fox"}))
    assert ImageFolderDataset(image_folder, 16, class_names=mapping).id2label == {0: "tabby cat", 1: "golden retriever"}

    mapping.write_text(json.dumps({"cat": "tabby cat"}))
    with pytest.raises(ValueError, match=r"\['dog'\].*names.json"):
        ImageFolderDataset(image_folder, 16, class_names=mapping)
    mapping.write_text(json.dumps(["cat", "dog"]))
    with pytest.raises(ValueError, match="JSON object"):
        ImageFolderDataset(image_folder, 16, class_names=mapping)


def test_corrupt_files_are_skipped_warned_and_counted(image_folder):
    (image_folder / "cat" / "garbage.png").write_bytes(b"this is not a png")
    truncated = (image_folder / "dog" / "0.png").read_bytes()
    (image_folder / "dog" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    dataset = ImageFolderDataset(image_folder, image_size=16, random_flip=False)
    assert len(dataset) == 12

    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_skip_none)
    with pytest.warns(UserWarning, match="skipping corrupt image") as record:
        batches = [batch for batch in loader if batch is not None]
    assert len(record) == 2
    assert sum(len(labels) for _, labels in batches) == 10
    assert len(dataset.corrupt_files) == 2 and any(p.endswith("garbage.png") for p in dataset.corrupt_files)


def test_collate_all_corrupt_is_none():
    assert collate_skip_none([None, None]) is None


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        ImageFolderDataset(tmp_path / "does-not-exist", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images found in .*empty"):
        ImageFolderDataset(tmp_path / "empty", 16)
    (tmp_path / "no-images" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no images found in .*no-images"):
        ImageFolderDataset(tmp_path / "no-images", 16)
