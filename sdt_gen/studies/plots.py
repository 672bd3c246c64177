"""The studies' pictures: FD against step and time, samples, decay maps and the gates against the timestep.

Matplotlib is an optional extra (``plots``): imported when a picture is drawn, so the library imports without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..extras import require
from ..metrics import ImageFilesDataset
from ..visualize import make_grid_png
from .statistics import METRICS, arm_of

ARM_COLOURS = {
    "none": "tab:gray", "fixed": "tab:blue", "cag": "tab:red", "rope": "tab:green", "rope+cag": "tab:purple",
    "rope+fixed": "tab:cyan",
}


def colour(arm: str) -> str | None:
    """The colour of ``arm`` in every picture (matplotlib's cycle for an arm without one)."""
    return ARM_COLOURS.get(arm)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; a MissingExtraError names the extra that installs it."""
    matplotlib = require("matplotlib", "the studies' plots", extra="plots")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "the studies' plots", extra="plots")


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_curves(out: Path, runs: dict, arms: list[str], steps: list[int]) -> None:
    """``fd_vs_step.png``: FD, conditional accuracy and held-out loss against the step; mean over seeds, band min..max."""
    plt = pyplot()
    keys = [(k, label) for label, k, _ in METRICS if k in ("fd", "accuracy", "heldout_mse")
            and all(k in r["evals"][str(steps[0])] for r in runs.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for arm in arms:
            values = np.array([[r["evals"][str(s)][key] for s in steps] for r in runs.values() if arm_of(r) == arm])
            ax.plot(steps, values.mean(0), marker="o", label=arm, color=colour(arm))
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2, color=colour(arm))
        ax.set_xlabel("training step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    save_figure(fig, out / "fd_vs_step.png")


def plot_time_curves(out: Path, runs: dict, arms: list[str], budget: float) -> None:
    """``fd_vs_time.png``: FD against training CPU time, every run against its own clock (one line per seed), and
    the equal-time budget (``budget`` CPU seconds, dashed)."""
    if not all("fd" in e for r in runs.values() for e in r["evals"].values()):
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for arm in arms:
        for index, run in enumerate(r for r in runs.values() if arm_of(r) == arm):
            fds = [e["fd"] for _, e in sorted(run["evals"].items(), key=lambda item: int(item[0]))]
            ax.plot(np.array(run["times"]["cpu"]) / 60, fds, marker="o", color=colour(arm), alpha=0.8,
                    label=arm if index == 0 else None)
    ax.axvline(budget / 60, color="black", linestyle="--", linewidth=0.8, label="equal-time budget")
    ax.set_xlabel("training CPU time (min, one thread)")
    ax.set_ylabel("FD (evaluator features, train split)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / "fd_vs_time.png")


def plot_samples(out: Path, sample_folders: dict[str, Path], count: int, caption: str) -> None:
    """``samples.png``: the first ``count`` samples of each arm's folder (same classes and seeds), one block per arm."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sample_folders), figsize=(4 * len(sample_folders), 2.2), squeeze=False)
    for ax, (arm, folder) in zip(axes[0], sample_folders.items()):
        samples = ImageFilesDataset(sorted(folder.glob("*.png"))[:count])
        images = np.stack([samples[i].numpy() for i in range(len(samples))])  # (N, 3, H, W) uint8
        ax.imshow(make_grid_png(images, nrow=min(10, count), scale=1))
        ax.set_title(f"{arm} ({caption})")
        ax.axis("off")
    save_figure(fig, out / "samples.png")


def plot_decay_maps(out: Path, maps: dict, modes: dict, timesteps, queries) -> None:
    """``decay_maps.png``: the decay of every arm with one, at three query tokens, heads averaged; a gated arm at
    every timestep of ``timesteps``, a fixed one once (its decay does not depend on the input).

    Args:
        out: the study folder.
        maps: arm -> its ``decay_maps.safetensors``: ``input_t{t}`` (the noisy input, ``(H, W)``) and
            ``map_t{t}_q{q}`` (``(depth, heads, h, w)``) for every timestep and query.
        modes: arm -> its decay mode.
        timesteps: the timesteps of the maps.
        queries: the ``(row, col)`` query tokens, in the maps' order.
    """
    plt = pyplot()
    rows = [(arm, t) for arm in maps for t in ((timesteps[len(timesteps) // 2],) if modes[arm] == "fixed" else timesteps)]
    depth = next(iter(maps.values()))[f"map_t{timesteps[0]}_q0"].shape[0]
    layers = sorted({0, depth - 1})
    fig, axes = plt.subplots(len(rows), 1 + len(queries) * len(layers),
                             figsize=(1.6 * (1 + len(queries) * len(layers)), 1.7 * len(rows)), squeeze=False)
    for r, (arm, t) in enumerate(rows):
        axes[r][0].imshow(maps[arm][f"input_t{t}"], cmap="gray")
        axes[r][0].set_ylabel(f"{arm} (any t)" if modes[arm] == "fixed" else f"{arm}, t={t}", fontsize=8)
        for q, query in enumerate(queries):
            for li, layer in enumerate(layers):
                ax = axes[r][1 + q * len(layers) + li]
                ax.imshow(maps[arm][f"map_t{t}_q{q}"][layer].mean(0), cmap="magma", vmin=0, vmax=1)
                if r == 0:
                    ax.set_title(f"query {query}\nlayer {layer}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("decay exp(B(query, .)), mean over heads; left: the noisy input", fontsize=9)
    save_figure(fig, out / "decay_maps.png")


def heads_by_strength(curves: np.ndarray) -> np.ndarray:
    """Reorder each run's and layer's heads from the strongest decay to the weakest (by the mean over timesteps).

    A head index names a different head in every seed, so averaging over seeds by index mixes unrelated heads;
    averaging by rank compares like with like.

    Args:
        curves: ``(runs, T, depth, H)`` decay per unit distance (lower: stronger decay).
    """
    order = np.argsort(curves.mean(axis=1), axis=-1)  # (runs, depth, H)
    return np.take_along_axis(curves, order[:, None], axis=-1)


def plot_gates(out: Path, curves: dict, runs: dict, timesteps) -> None:
    """``gates_vs_timestep.png``: per gated arm (one row each) and layer, the decay per unit distance of the heads
    against the timestep, heads ranked by strength in every seed before the mean; fixed arms' gammas dashed."""
    plt = pyplot()
    by_arm = {}
    for name, curve in curves.items():
        by_arm.setdefault(arm_of(runs[name]), []).append(curve)
    gated = {arm: heads_by_strength(np.array(c)) for arm, c in by_arm.items() if arm != "fixed" and not arm.endswith("+fixed")}
    fixed = next((heads_by_strength(np.array(c)) for arm, c in by_arm.items() if arm == "fixed"), None)
    if not gated:
        return
    depth, heads = next(iter(gated.values())).shape[2:]
    fig, axes = plt.subplots(len(gated), depth, figsize=(3.2 * depth, 3.0 * len(gated)), sharey=True, squeeze=False)
    for row, (arm, values) in enumerate(gated.items()):
        for layer, ax in enumerate(axes[row]):
            for rank in range(heads):
                ax.plot(timesteps, values[:, :, layer, rank].mean(0), color=f"C{rank}", label=f"rank {rank + 1}")
                ax.fill_between(timesteps, values[:, :, layer, rank].min(0), values[:, :, layer, rank].max(0),
                                color=f"C{rank}", alpha=0.2)
                if fixed is not None:
                    ax.axhline(fixed[0, 0, layer, rank], color=f"C{rank}", linestyle="--", linewidth=0.8)
            ax.set_title(f"{arm}, layer {layer}", fontsize=9)
            ax.set_xlabel("diffusion timestep (noise ->)")
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("decay per unit distance exp(2 mean a)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"heads ranked by strength in each of {len(next(iter(gated.values())))} seeds (1: strongest); "
                 "solid: mean over seeds, band min..max" + ("; dashed: fixed RMT gammas" if fixed is not None else ""),
                 fontsize=9)
    save_figure(fig, out / "gates_vs_timestep.png")
