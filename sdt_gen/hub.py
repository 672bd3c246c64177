"""Hub repository ids or local folders, resolved the way diffusers and transformers resolve them.

A path that exists is used as it is. Otherwise a name shaped like a repository id (``org/name``)
is fetched into the Hugging Face cache with ``huggingface_hub.snapshot_download``; with
``HF_HUB_OFFLINE=1`` only the cache is read. Either way the caller gets a local folder, so its own
checks of what a folder must hold still name what is missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set now (read at call time, not when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def local_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder of ``name_or_path``: itself when it exists, else the cached snapshot of that Hub repo.

    Args:
        name_or_path: a local folder or a Hub repository id such as ``"stabilityai/sd-vae-ft-ema"``.
        revision: a branch, tag or commit of the repository.

    Raises:
        FileNotFoundError: the id is neither cached nor downloadable; the message says how to get it.
    """
    path = Path(name_or_path)
    if path.exists() or not _REPO_ID.match(str(name_or_path)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, offline = str(name_or_path), hub_offline()
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=offline))
    except LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder, and it is not in the Hugging Face cache while {how}: run "
            f"`hf download {repo_id}` on a machine with internet (same HF_HOME), or pass a local folder"
        ) from None
    except HfHubHTTPError as error:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder, and the Hub refused it: {str(error).splitlines()[0]}"
        ) from None


__all__ = ["hub_offline", "local_folder"]
