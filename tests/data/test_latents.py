"""Latent extraction under accelerate: every image once, resumable, and the reader's round trip."""

import json
import os
import threading
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from sdt_gen.data import ImageFolderDataset, LatentDataset, extract_latents, shard_name, shard_ranges
from sdt_gen.files import partial_path


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.fixture
def dataset(image_folder):
    # 11 images over 2 classes, one corrupt file: shards of 4 -> [0, 4), [4, 8), [8, 11).
    root = image_folder
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    return ImageFolderDataset(root, image_size=16, random_flip=False)


def read_shards(out_dir):
    names = sorted(name for name in os.listdir(out_dir) if name.startswith("shard-"))
    return {name: load_file(os.path.join(out_dir, name)) for name in names}


def test_shard_ranges():
    assert shard_ranges(11, 4) == [(0, 4), (4, 8), (8, 11)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_name(4, 8) == "shard-00000004-00000008.safetensors"
    with pytest.raises(ValueError, match="shard_size must be positive, got 0"):
        shard_ranges(3, 0)


def test_extract_each_image_once_and_round_trip(dataset, vae, tmp_path):
    out_dir = tmp_path / "latents"
    with pytest.warns(UserWarning, match="skipping corrupt image"):
        meta = extract_latents(Accelerator(cpu=True), dataset, vae, out_dir, batch_size=3, shard_size=4, num_workers=0)

    assert meta["count"] == 10 and meta["num_images"] == 11 and meta["skipped"] == 1
    assert meta["latent_shape"] == [4, 8, 8] and meta["scaling_factor"] == vae.config.scaling_factor
    assert meta["id2label"] == {"0": "cat", "1": "dog"}
    assert json.loads((out_dir / "meta.json").read_text()) == meta

    shards = read_shards(out_dir)
    assert list(shards) == [shard_name(0, 4), shard_name(4, 8), shard_name(8, 11)]
    indices = torch.cat([s["indices"] for s in shards.values()]).tolist()
    broken = dataset.samples.index((str(dataset.root) + "/dog/broken.png", 1))
    assert sorted(indices) == [i for i in range(11) if i != broken]  # each image exactly once
    assert torch.cat([s["labels"] for s in shards.values()]).tolist() == [dataset.targets[i] for i in indices]

    # Stored latents are posterior samples, scaled: within a few standard deviations of the mean.
    first = shards[shard_name(0, 4)]
    with torch.no_grad():
        images = torch.stack([dataset[i][0] for i in range(4)])
        posterior = vae.encode(images).latent_dist
        posterior_flip = vae.encode(images.flip(-1)).latent_dist
    scale = vae.config.scaling_factor
    assert ((first["latents"] / scale - posterior.mean).abs() < 6 * posterior.std).all()
    assert ((first["latents_flip"] / scale - posterior_flip.mean).abs() < 6 * posterior_flip.std).all()
    assert not torch.allclose(first["latents"], first["latents_flip"])

    # The reader returns exactly what was stored, in shard order.
    reader = LatentDataset(out_dir, random_flip=False)
    assert len(reader) == 10 and reader.id2label == {0: "cat", 1: "dog"} and reader.latent_shape == (4, 8, 8)
    stored = torch.cat([s["latents"] for s in shards.values()])
    for i in range(len(reader)):
        latent, label = reader[i]
        assert torch.equal(latent, stored[i]) and label == reader.targets[i]

    flipping = LatentDataset(out_dir, random_flip=True)
    stored_flip = torch.cat([s["latents_flip"] for s in shards.values()])
    torch.manual_seed(0)
    picks = [flipping[5][0] for _ in range(20)]
    assert any(torch.equal(p, stored[5]) for p in picks) and any(torch.equal(p, stored_flip[5]) for p in picks)


def test_extraction_resumes_and_is_deterministic(dataset, vae, tmp_path):
    out_dir = tmp_path / "latents"
    accelerator = Accelerator(cpu=True)
    with pytest.warns(UserWarning):
        extract_latents(accelerator, dataset, vae, out_dir, batch_size=4, shard_size=4, num_workers=0)
    before = read_shards(out_dir)
    kept = out_dir / shard_name(0, 4)
    kept_mtime = kept.stat().st_mtime_ns
    # A killed run: one shard missing, a stray temporary file left behind.
    os.remove(out_dir / shard_name(8, 11))
    partial_path(out_dir / shard_name(8, 11)).write_bytes(b"half a shard")  # the name a shard is written as

    calls = []
    original_encode = vae.encode
    vae.encode = lambda x: calls.append(len(x)) or original_encode(x)
    try:
        with pytest.warns(UserWarning):  # the corrupt file lives in the re-done shard
            extract_latents(accelerator, dataset, vae, out_dir, batch_size=4, shard_size=4, num_workers=0)
    finally:
        del vae.encode
    assert sum(calls) == 2 * 2  # only the missing shard's items (3 minus the corrupt one), twice for the flip
    assert kept.stat().st_mtime_ns == kept_mtime
    after = read_shards(out_dir)
    assert after.keys() == before.keys()
    for name in before:
        for key in before[name]:
            assert torch.equal(before[name][key], after[name][key]), (name, key)
    assert len(LatentDataset(out_dir)) == 10

    with pytest.raises(ValueError, match="do not fit this extraction"):
        extract_latents(accelerator, dataset, vae, out_dir, batch_size=4, shard_size=5, num_workers=0)


class ThreadedProcess(SimpleNamespace):
    """One of N simulated accelerate processes (threads sharing a barrier)."""

    def wait_for_everyone(self):
        self.barrier.wait()


def test_extraction_splits_chunks_round_robin(dataset, vae, tmp_path):
    out_dir = tmp_path / "latents"
    barrier, written, errors = threading.Barrier(2), {}, []

    def run(rank):
        accelerator = ThreadedProcess(
            process_index=rank, num_processes=2, is_main_process=rank == 0, is_local_main_process=rank == 0,
            device=torch.device("cpu"), barrier=barrier,
        )
        try:
            written[rank] = extract_latents(
                accelerator, dataset, vae, out_dir, batch_size=2, shard_size=3, num_workers=0
            )
        except BaseException as err:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    with pytest.warns(UserWarning):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert written[0] == written[1]
    assert written[0]["shards"] == [shard_name(s, e) for s, e in [(0, 3), (3, 6), (6, 9), (9, 11)]]
    indices = torch.cat([s["indices"] for s in read_shards(out_dir).values()]).tolist()
    assert len(indices) == len(set(indices)) == 10


def test_extraction_rejects_flipping_datasets(image_folder, tmp_path, vae):
    flipping = ImageFolderDataset(image_folder, image_size=16, random_flip=True)
    with pytest.raises(ValueError, match="random_flip=False"):
        extract_latents(Accelerator(cpu=True), flipping, vae, tmp_path / "latents")


def test_latent_dataset_errors(dataset, vae, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-latents"):
        LatentDataset(tmp_path / "missing-latents")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        LatentDataset(tmp_path / "empty")

    out_dir = tmp_path / "latents"
    with pytest.warns(UserWarning):
        extract_latents(Accelerator(cpu=True), dataset, vae, out_dir, batch_size=4, shard_size=4, num_workers=0)
    meta = json.loads((out_dir / "meta.json").read_text())

    (out_dir / "meta.json").write_text(json.dumps({**meta, "count": 11}))
    with pytest.raises(ValueError, match="hold 10 items; meta.json says 11"):
        LatentDataset(out_dir)
    (out_dir / "meta.json").write_text(json.dumps({**meta, "latent_shape": [4, 4, 4]}))
    with pytest.raises(ValueError, match="latents has shape"):
        LatentDataset(out_dir)
    (out_dir / "meta.json").write_text(json.dumps(meta))
    os.rename(out_dir / shard_name(8, 11), out_dir / shard_name(8, 12))
    with pytest.raises(ValueError, match=r"disagree with meta.json: missing \['shard-00000008-00000011"):
        LatentDataset(out_dir)


def test_damaged_shards_are_named(dataset, vae, tmp_path):
    out_dir = tmp_path / "latents"
    with pytest.warns(UserWarning):
        extract_latents(Accelerator(cpu=True), dataset, vae, out_dir, batch_size=4, shard_size=4, num_workers=0)
    shard = out_dir / shard_name(4, 8)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a partial copy
    with pytest.raises(ValueError, match=rf"latent shard .*{shard.name} has \d+ bytes but {len(data)} were written"):
        LatentDataset(out_dir)
    shard.write_bytes(b"\xff" * len(data))  # the right size, a garbled header
    with pytest.raises(ValueError, match=rf"latent shard .*{shard.name} is damaged"):
        LatentDataset(out_dir)


def test_a_full_disk_during_extraction_names_the_shard_and_keeps_the_others(dataset, vae, tmp_path, monkeypatch):
    import errno

    from sdt_gen.data import latents

    real_save = latents.save_file
    calls = []

    def save_until_disk_is_full(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"\0" * 10)  # part of it landed
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(tensors, path)

    monkeypatch.setattr(latents, "save_file", save_until_disk_is_full)
    out_dir = tmp_path / "latents"
    with pytest.raises(OSError, match=rf"could not write latent shard .*{shard_name(4, 8)}: No space left on device"):
        extract_latents(Accelerator(cpu=True), dataset, vae, out_dir, batch_size=4, shard_size=4, num_workers=0)
    assert sorted(os.listdir(out_dir)) == [shard_name(0, 4)]  # no partial file left
    monkeypatch.setattr(latents, "save_file", real_save)
    with pytest.warns(UserWarning):
        extract_latents(Accelerator(cpu=True), dataset, vae, out_dir, batch_size=4, shard_size=4, num_workers=0)
    assert len(LatentDataset(out_dir)) == 10
