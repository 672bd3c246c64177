"""Files written whole (under a temporary name, then ``os.replace``) and files hashed: one copy of each.

A reader never sees half a file or half a folder: a file is written as ``NAME.partial`` beside its
final path, a folder as ``.tmp-NAME``, and renamed only once complete. A run killed while writing
leaves at most that temporary name, which nothing reads (and the next write replaces).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"
"""Suffix of a file being written (``samples/000001_3_cat.png.partial``)."""
TMP_FOLDER_PREFIX = ".tmp-"
"""Prefix of a folder being written (``checkpoints/.tmp-step-0000100``)."""


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary sibling that ``path`` is written as: ``path`` + ``PARTIAL_SUFFIX``."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write ``path`` as; renames it to ``path`` once the block ends without error.

    On an error the temporary file is removed and ``path`` (new or old) is left as it was.

        with atomic_file(out / "features.safetensors") as tmp:
            save_file(tensors, tmp)
    """
    path = Path(path)
    tmp = partial_path(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` under a temporary name, then renames it."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` under a temporary name, then renames it."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json_atomically(
    path: str | os.PathLike,
    value: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Writes ``value`` as JSON (and a final newline) under a temporary name, then renames it.

    Args:
        path: the JSON file.
        value: what to write.
        indent, sort_keys, default: as for ``json.dumps``.
    """
    write_text_atomically(path, json.dumps(value, indent=indent, sort_keys=sort_keys, default=default) + "\n")


def copy_file_atomically(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copies ``source`` to ``path`` under a temporary name, then renames it."""
    with atomic_file(path) as tmp:
        shutil.copyfile(source, tmp)


def temporary_folder(path: str | os.PathLike) -> Path:
    """The temporary sibling that the folder ``path`` is written as: ``TMP_FOLDER_PREFIX`` + its name."""
    path = Path(path)
    return path.with_name(TMP_FOLDER_PREFIX + path.name)


def replace_folder(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Renames the finished folder ``tmp`` to ``path``; an existing ``path`` is moved aside first, then removed.

    ``path`` is missing only between two renames, never half-written.
    """
    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = path.with_name(f"{TMP_FOLDER_PREFIX}old-{path.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write the folder ``path`` as; swaps it in once complete.

    A leftover temporary folder of a killed run is removed first. On an error the temporary folder
    is removed and ``path`` is left as it was.

        with atomic_folder(out / "pipeline") as tmp:
            pipe.save_pretrained(tmp)
    """
    path = Path(path)
    tmp = temporary_folder(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, path)


class DamagedFolderError(ValueError):
    """A folder's files do not match its manifest: one missing, truncated or changed (the message names it)."""


def write_manifest(folder: str | os.PathLike, name: str, **fields: Any) -> Path:
    """Records every file under ``folder`` (size and sha256) in ``folder/name``, with ``fields``.

    Write it last: a folder whose manifest verifies holds exactly what was written, however it was
    copied, truncated or bit-flipped since (``verify_manifest``).

    Args:
        folder: the finished folder.
        name: the manifest's file name (``checkpoint.json``).
        fields: further JSON values to record (``step=1000``).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != name)
    record = dict(fields, files={
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files
    })
    write_json_atomically(folder / name, record, sort_keys=True)
    return folder / name


def verify_manifest(folder: str | os.PathLike, name: str) -> dict:
    """The fields of ``folder/name`` once every file it records is present, of its size and content.

    Raises:
        DamagedFolderError: the manifest is missing or unreadable, or a file it records is missing,
            of another size or of another sha256; the message names the file and what is wrong.
    """
    folder = Path(folder)
    manifest = folder / name
    if not manifest.is_file():
        raise DamagedFolderError(f"{manifest} is missing: {folder} was not completely written")
    try:
        record = json.loads(manifest.read_text())
        files = record.pop("files")
    except (ValueError, KeyError, AttributeError) as error:
        raise DamagedFolderError(f"{manifest} is damaged ({error})") from None
    for relative, expected in files.items():
        path = folder / relative
        if not path.is_file():
            raise DamagedFolderError(f"{path} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise DamagedFolderError(f"{path} has {size} bytes, {expected['bytes']} were written (truncated or cut)")
        if file_sha256(path) != expected["sha256"]:
            raise DamagedFolderError(f"{path} does not match the sha256 recorded when it was written (corrupted)")
    return record


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The sha256 of the file's raw bytes, as a hex string (what ``sha256sum`` prints), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = [
    "DamagedFolderError",
    "PARTIAL_SUFFIX",
    "TMP_FOLDER_PREFIX",
    "atomic_file",
    "atomic_folder",
    "copy_file_atomically",
    "file_sha256",
    "partial_path",
    "replace_folder",
    "temporary_folder",
    "verify_manifest",
    "write_bytes_atomically",
    "write_json_atomically",
    "write_manifest",
    "write_text_atomically",
]
