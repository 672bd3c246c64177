"""The package's layering (README "Layout"): imports point one way, and the project stands alone."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train_dit", "train_classifier", "sample", "eval_fid", "benchmarks", "experiments", "tests"}
# What each sub-package must not import, by the order of the README's data flow.
FORBIDDEN = {
    "layers": {"models", "diffusion", "data", "training", "metrics", "pipelines"},
    "diffusion": {"models", "training", "metrics", "pipelines"},
    "data": {"models", "training", "metrics", "pipelines"},
    "models": {"training", "metrics", "pipelines"},
    "training": {"metrics", "pipelines"},
    # The studies sit on top of everything; nothing in the library imports them (test below).
    "studies": set(),
}


def library_files() -> list[Path]:
    return sorted([*ROOT.glob("sdt_gen/**/*.py"), *ROOT.glob("pipelines/**/*.py")])


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = path.relative_to(ROOT).with_suffix("").parts
    package = ("sdt_gen", *package) if package[0] == "pipelines" else package
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level]) if node.level else []
            names.add(".".join([*base, *([node.module] if node.module else [])]))
    return names


def subpackage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "sdt_gen" and len(parts) > 1 else None


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_imports_point_one_way(path: Path):
    names = imported_modules(path)
    assert not {n.split(".")[0] for n in names} & SCRIPTS, f"{path} imports a script"
    parts = path.relative_to(ROOT).parts
    own = parts[1] if parts[0] == "sdt_gen" and len(parts) > 2 else None
    bad = sorted(n for n in names if subpackage(n) in FORBIDDEN.get(own, set()))
    assert not bad, f"{path} ({own}/) imports {bad}, against the direction of the layout"


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_in_the_library_imports_the_studies(path: Path):
    if path.is_relative_to(ROOT / "sdt_gen" / "studies"):
        return
    studies = sorted(n for n in imported_modules(path) if subpackage(n) == "studies")
    assert not studies, f"{path} imports {studies}: the studies sit on top of the library, nothing imports them"


def test_layers_depend_on_torch_only():
    allowed = {"torch", "sdt_gen", "__future__"} | set(sys.stdlib_module_names)
    for path in ROOT.glob("sdt_gen/layers/*.py"):
        outside = {n.split(".")[0] for n in imported_modules(path)} - allowed
        assert not outside, f"{path} imports {outside}; the layers depend on torch only"


def test_no_file_points_outside_the_project():
    outside = ("../" + "shared", "SDT_" + "METHOD.md")  # split, so this file does not match itself
    folders = ("sdt_gen", "pipelines", "benchmarks", "experiments", "tests", "docs", "configs", ".ci")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix != ".pyc"]
    for path in files + [p for p in ROOT.iterdir() if p.is_file()]:
        text = path.read_text(errors="ignore")
        assert not any(s in text for s in outside), f"{path} points outside the project"
