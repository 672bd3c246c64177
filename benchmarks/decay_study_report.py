"""What the decay study writes from its numbers: ``summary.md`` and its four pictures.

Plain functions of the study's results (``decay_study.py`` computes them); nothing here trains or
samples. Matplotlib is imported only here.
"""

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sdt_gen.metrics import ImageFilesDataset  # noqa: E402
from sdt_gen.visualize import make_grid_png  # noqa: E402

# (label, key, lower is better): the metrics of the summary table and the paired differences.
METRICS = (
    ("FD", "fd", True), ("cond. acc.", "accuracy", False), ("precision", "precision", False),
    ("recall", "recall", False), ("held-out loss", "heldout_mse", True),
    ("FID", "fid", True), ("IS", "inception_score", False),
)
MODE_COLOURS = {"none": "tab:gray", "fixed": "tab:blue", "cag": "tab:red"}


#################################################################################
#                                   summary.md                                  #
#################################################################################

def fmt(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}g} ± {stat['std']:.2g}" if stat["n"] > 1 else f"{stat['mean']:.{digits}g}"


def describe(diffs: dict, columns) -> str:
    """In words: which differences the 95% intervals support, and which they do not."""
    better = {key: lower for _, key, lower in METRICS}
    supported, unsupported = [], []
    for label, key in columns:
        d = diffs[key]
        if d["excludes_zero"]:
            direction = "better" if (d["mean"] < 0) == better[key] else "worse"
            supported.append(f"{label} {direction} by {abs(d['mean']):.3g}")
        else:
            unsupported.append(label)
    parts = []
    if supported:
        parts.append("interval excludes 0 for " + ", ".join(supported))
    if unsupported:
        parts.append("no measurable difference (interval contains 0) in " + ", ".join(unsupported))
    return "; ".join(parts) + "."


def write_summary(out: Path, results: dict, objective: str, final_step: int) -> None:
    """``summary.md``: the protocol in a sentence, mean ± std per mode, paired differences and their reading.

    Args:
        out: the study folder.
        results: what the study writes to ``results.json``.
        objective: the training objective (``"ddpm"`` or ``"flow"``).
        final_step: the step whose EMA weights the table scores.
    """
    summary, paired, evaluator = results["summary"], results["paired_vs_none"], results["evaluator"]
    protocol, modes, seeds = results["protocol"], results["modes"], results["seeds"]
    columns = [(label, key) for label, key, _ in METRICS if key in next(iter(summary.values()))]
    lines = [
        "# Decay study", "",
        f"{protocol['model']} on {protocol['data']}, "
        + ("SiT's flow-matching objective, " if objective == "flow" else "")
        + f"{protocol['steps']} steps of {protocol['global_batch_size']} "
        f"images (lr {protocol['lr']}), seeds {' '.join(map(str, seeds))}; EMA weights of step "
        f"{final_step}. Samples: {protocol['sampling']['num_samples']} class-balanced, "
        f"{protocol['sampling']['scheduler']} {protocol['sampling']['steps']} steps, guidance "
        f"{protocol['sampling']['guidance_scale']}. Evaluator held-out top-1: "
        f"{evaluator.get('heldout_top1', float('nan')):.4f}. Mean ± standard deviation over seeds; steps/s and "
        "training time are wall clock, checkpoints and exports included, evaluations not.", "",
        "| mode | " + " | ".join(label for label, _ in columns) + " | steps/s | training time |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for mode in modes:
        stats = summary[mode]
        cells = [fmt(stats[key]) for _, key in columns]
        wall = stats["training_seconds"]["mean"] / 60
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {fmt(stats['steps_per_second'])} | {wall:.1f} min |")
    if paired:
        lines += ["", "Paired differences against `none` (same seed), mean and 95% interval:", "",
                  "| mode | " + " | ".join(label for label, _ in columns) + " | steps/s |",
                  "|---" * (len(columns) + 2) + "|"]
        for mode, diffs in paired.items():
            cells = [f"{diffs[key]['mean']:+.3g} [{diffs[key]['low']:+.3g}, {diffs[key]['high']:+.3g}]"
                     for _, key in columns + [("", "steps_per_second")]]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        lines += ["", "Reading:", ""]
        for mode, diffs in paired.items():
            lines.append(f"- **{mode} vs none**: " + describe(diffs, columns))
    seconds = results["seconds"]
    lines += ["", f"Compute: {sum(seconds.values()) / 60:.0f} min in all (training {seconds['training'] / 60:.0f}, "
              f"evaluation {seconds['evaluation'] / 60:.0f}, evaluator {seconds['evaluator_training'] / 60:.0f}). "
              "Written by `python benchmarks/decay_study.py`; every number and the protocol are in `results.json`."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


#################################################################################
#                                   Pictures                                    #
#################################################################################

def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(out: Path, runs: dict, modes: list[str], steps: list[int]) -> None:
    """``fd_vs_step.png``: FD, conditional accuracy and held-out loss against the step; mean over seeds, band min..max."""
    keys = [(k, label) for label, k, _ in METRICS if k in ("fd", "accuracy", "heldout_mse")
            and all(k in r["evals"][str(steps[0])] for r in runs.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for mode in modes:
            values = np.array([[r["evals"][str(s)][key] for s in steps] for r in runs.values() if r["mode"] == mode])
            colour = MODE_COLOURS.get(mode)
            ax.plot(steps, values.mean(0), marker="o", label=mode, color=colour)
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2, color=colour)
        ax.set_xlabel("training step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    save_figure(fig, out / "fd_vs_step.png")


def plot_samples(out: Path, sample_folders: dict[str, Path], count: int, caption: str) -> None:
    """``samples.png``: the first ``count`` samples of each mode's folder (same classes and seeds), one block per mode."""
    fig, axes = plt.subplots(1, len(sample_folders), figsize=(4 * len(sample_folders), 2.2), squeeze=False)
    for ax, (mode, folder) in zip(axes[0], sample_folders.items()):
        samples = ImageFilesDataset(sorted(folder.glob("*.png"))[:count])
        images = np.stack([samples[i].numpy() for i in range(len(samples))])  # (N, 3, H, W) uint8
        ax.imshow(make_grid_png(images, nrow=min(10, count), scale=1))
        ax.set_title(f"{mode} ({caption})")
        ax.axis("off")
    save_figure(fig, out / "samples.png")


def plot_decay_maps(out: Path, models: dict, x0: torch.Tensor, labels: torch.Tensor, noised: Callable) -> None:
    """``decay_maps.png``: learned cag decay against fixed, three query tokens at three noise levels, heads averaged.

    Args:
        out: the study folder.
        models: the ``"fixed"`` and ``"cag"`` denoisers.
        x0, labels: one clean image ``(1, C, H, W)`` and its class ``(1,)``.
        noised: ``noised(model, x0, t, noise)``, the input the model sees at timestep ``t``.
    """
    h, w = models["cag"].grid_size
    queries = [(1, 1), (h // 2, w // 2), (h - 2, w // 3)]
    rows = [("fixed", 500), ("cag", 50), ("cag", 500), ("cag", 950)]
    layers = sorted({0, models["cag"].config.depth - 1})
    fig, axes = plt.subplots(len(rows), 1 + len(queries) * len(layers), figsize=(1.6 * (1 + 3 * len(layers)), 1.7 * 4))
    for r, (mode, t) in enumerate(rows):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        t_batch = torch.full((1,), t, dtype=torch.long)
        xt = noised(models[mode], x0, t_batch, noise)
        axes[r][0].imshow(xt[0, 0], cmap="gray")
        axes[r][0].set_ylabel(f"{mode}, t={t}" if mode == "cag" else "fixed (any t)", fontsize=8)
        for q, query in enumerate(queries):
            maps = models[mode].decay_maps(xt, t_batch, labels, query=query)  # (depth, 1, H, h, w)
            for li, layer in enumerate(layers):
                ax = axes[r][1 + q * len(layers) + li]
                ax.imshow(maps[layer, 0].mean(0), cmap="magma", vmin=0, vmax=1)
                if r == 0:
                    ax.set_title(f"query {query}\nlayer {layer}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("decay exp(B(query, .)), mean over heads; left: the noisy input", fontsize=9)
    save_figure(fig, out / "decay_maps.png")


def plot_gates(out: Path, curves: dict, runs: dict, timesteps) -> None:
    """``gates_vs_timestep.png``: per layer and head, cag's decay per unit distance against the timestep, and fixed's."""
    cag = np.array([c for name, c in curves.items() if runs[name]["mode"] == "cag"])  # (seeds, T, depth, H)
    fixed = np.array([c for name, c in curves.items() if runs[name]["mode"] == "fixed"])
    if not len(cag):
        return
    depth, heads = cag.shape[2], cag.shape[3]
    fig, axes = plt.subplots(1, depth, figsize=(3.2 * depth, 3.2), sharey=True, squeeze=False)
    for layer, ax in enumerate(axes[0]):
        for head in range(heads):
            colour = f"C{head}"
            ax.plot(timesteps, cag[:, :, layer, head].mean(0), color=colour, label=f"head {head}")
            ax.fill_between(timesteps, cag[:, :, layer, head].min(0), cag[:, :, layer, head].max(0),
                            color=colour, alpha=0.2)
            if len(fixed):
                ax.axhline(fixed[0, 0, layer, head], color=colour, linestyle="--", linewidth=0.8)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("diffusion timestep (noise ->)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("decay per unit distance exp(2 mean a)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("cag (solid: mean over seeds, band min..max) and fixed RMT gammas (dashed)", fontsize=9)
    save_figure(fig, out / "gates_vs_timestep.png")
