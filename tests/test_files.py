"""sdt_gen.files: the one atomic-write and file-hashing helper."""

import hashlib
import json

import pytest

from sdt_gen.files import (
    PARTIAL_SUFFIX,
    TMP_FOLDER_PREFIX,
    atomic_file,
    atomic_folder,
    copy_file_atomically,
    file_sha256,
    partial_path,
    replace_folder,
    temporary_folder,
    write_bytes_atomically,
    write_json_atomically,
    write_text_atomically,
)


def test_temporary_names(tmp_path):
    assert partial_path(tmp_path / "a.png") == tmp_path / ("a.png" + PARTIAL_SUFFIX)
    assert temporary_folder(tmp_path / "step-0000001") == tmp_path / (TMP_FOLDER_PREFIX + "step-0000001")


def test_writers_leave_only_the_final_file(tmp_path):
    write_text_atomically(tmp_path / "a.txt", "hello")
    write_bytes_atomically(tmp_path / "b.bin", b"\x00\x01")
    write_json_atomically(tmp_path / "c.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    copy_file_atomically(tmp_path / "a.txt", tmp_path / "d.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json", "d.txt"]
    assert (tmp_path / "a.txt").read_text() == "hello" == (tmp_path / "d.txt").read_text()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    text = (tmp_path / "c.json").read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"


def test_json_default_serialises_other_values(tmp_path):
    write_json_atomically(tmp_path / "x.json", {"p": tmp_path}, default=str)
    assert json.loads((tmp_path / "x.json").read_text()) == {"p": str(tmp_path)}


def test_failed_write_keeps_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_atomic_folder_replaces_an_existing_folder_whole(tmp_path):
    path = tmp_path / "pipe"
    path.mkdir()
    (path / "old.txt").write_text("old")
    temporary_folder(path).mkdir()  # a killed run's leftover
    (temporary_folder(path) / "stale.txt").write_text("stale")
    with atomic_folder(path) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in path.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_atomic_folder_error_keeps_the_old_folder(tmp_path):
    path = tmp_path / "pipe"
    path.mkdir()
    (path / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(path) as tmp:
            tmp.mkdir()
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    assert (path / "old.txt").read_text() == "old"


def test_replace_folder_into_a_new_place(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    replace_folder(tmp_path / "src", tmp_path / "dst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_file_sha256_is_sha256sums(tmp_path):
    data = bytes(range(256)) * 5000  # more than one chunk
    (tmp_path / "w.bin").write_bytes(data)
    assert file_sha256(tmp_path / "w.bin", chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_manifest_names_the_missing_truncated_or_changed_file(tmp_path):
    from sdt_gen.files import DamagedFolderError, verify_manifest, write_manifest

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"0123456789")
    (folder / "sub" / "b.json").write_text("{}")
    write_manifest(folder, "manifest.json", step=7)
    assert verify_manifest(folder, "manifest.json") == {"step": 7}

    (folder / "a.bin").write_bytes(b"01234")
    with pytest.raises(DamagedFolderError, match=r"a.bin has 5 bytes, 10 were written"):
        verify_manifest(folder, "manifest.json")
    (folder / "a.bin").write_bytes(b"0123456780")
    with pytest.raises(DamagedFolderError, match=r"a.bin does not match the sha256"):
        verify_manifest(folder, "manifest.json")
    (folder / "a.bin").write_bytes(b"0123456789")
    (folder / "sub" / "b.json").unlink()
    with pytest.raises(DamagedFolderError, match=r"sub/b.json is missing"):
        verify_manifest(folder, "manifest.json")
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(DamagedFolderError, match=r"manifest.json is damaged"):
        verify_manifest(folder, "manifest.json")
    (folder / "manifest.json").unlink()
    with pytest.raises(DamagedFolderError, match=r"manifest.json is missing"):
        verify_manifest(folder, "manifest.json")
