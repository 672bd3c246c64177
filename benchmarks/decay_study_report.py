"""What the decay study makes of its numbers: statistics, ``summary.md`` and its pictures.

Plain functions of the study's results (``decay_study.py`` trains, samples and scores); nothing here trains or
samples. Matplotlib is imported only here. Run as a script, it reanalyses a study written before the protocol
had a primary metric and multiplicity correction (the published 64-token study) from its ``results.json``:

    python benchmarks/decay_study_report.py docs/decay_study    # writes reanalysis.md, re-plots the gates
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sdt_gen.metrics import ImageFilesDataset, holm, mean_std, paired_difference  # noqa: E402
from sdt_gen.visualize import make_grid_png  # noqa: E402

# (label, key, lower is better): the metrics of the summary table and the paired differences, at the last point.
METRICS = (
    ("FD", "fd", True), ("FD held-out", "fd_heldout", True), ("cond. acc.", "accuracy", False),
    ("precision", "precision", False), ("recall", "recall", False), ("held-out loss", "heldout_mse", True),
    ("FID", "fid", True), ("IS", "inception_score", False),
)
PRIMARY_KEY, PRIMARY_LABEL = "fd_last2", "FD, last two points"
WITHIN_RUN_KEY, WITHIN_RUN_LABEL = "fd_se", "FD s.e. within run"  # the bootstrap over one run's samples
ARM_COLOURS = {
    "none": "tab:gray", "fixed": "tab:blue", "cag": "tab:red", "rope": "tab:green", "rope+cag": "tab:purple",
    "rope+fixed": "tab:cyan",
}


def arm_of(run: dict) -> str:
    """A run's arm; studies before arms had positions recorded it as ``mode``."""
    return run.get("arm", run.get("mode"))


def colour(arm: str) -> str | None:
    return ARM_COLOURS.get(arm)


#################################################################################
#                                  Statistics                                   #
#################################################################################

def primary_value(run: dict, steps: list[int]) -> float:
    """The primary metric of one run: FD against the train split, mean over the last two evaluation points."""
    return float(np.mean([run["evals"][str(s)]["fd"] for s in steps[-2:]]))


def fd_at_time(run: dict, steps: list[int], seconds: float) -> float | None:
    """FD of a run after ``seconds`` of training CPU time, interpolated linearly between its evaluation points
    (None before its first one)."""
    times = run["times"]["cpu"]
    if seconds < times[0] - 1e-9:
        return None
    return float(np.interp(seconds, times, [run["evals"][str(s)]["fd"] for s in steps]))


def statistics(runs: dict, arms: list[str], steps: list[int], pairs: list[tuple[str, str, bool]]) -> dict:
    """Per arm, mean/std of every metric; per comparison, paired differences with Holm-adjusted p-values.

    Args:
        runs: ``collect``'s runs.
        arms: the study's arms, in order.
        steps: the evaluation points.
        pairs: ``(arm, against, primary)`` comparisons.

    Returns:
        ``summary`` (arm -> key -> mean/std), ``paired`` (``"arm - against"`` -> key -> difference, with ``p`` and
        ``p_holm``), ``primary`` (the primary metric's comparisons) and ``equal_time`` (FD of each arm at the
        cheapest arm's training CPU time, and its paired differences).
    """
    final = str(steps[-1])
    keys = [key for _, key, _ in METRICS if all(key in r["evals"][final] for r in runs.values())]
    with_fd = "fd" in keys and len(steps) >= 2
    per_run = {}
    for name, run in runs.items():
        values = {key: run["evals"][final][key] for key in keys}
        values.update({key: run[key] for key in ("steps_per_second", "seconds_per_step", "training_seconds",
                                                  "training_cpu_seconds")})
        if with_fd:
            values[PRIMARY_KEY] = primary_value(run, steps)
        if "fd_bootstrap" in run["evals"][final]:
            values[WITHIN_RUN_KEY] = run["evals"][final]["fd_bootstrap"]["std"]
        per_run[name] = values
    all_keys = list(next(iter(per_run.values())))

    def values(arm: str, key: str) -> list[float]:
        picked = sorted((r["seed"], per_run[n][key]) for n, r in runs.items() if arm_of(r) == arm)
        return [v for _, v in picked]

    summary = {arm: {key: mean_std(values(arm, key)) for key in all_keys} for arm in arms}
    paired = {f"{arm} - {against}": {key: paired_difference(values(arm, key), values(against, key)) for key in all_keys}
              for arm, against, _ in pairs}
    # Primary: one metric over the primary comparisons; secondary: everything else, metrics that measure quality.
    tested = [key for key in all_keys if key in {k for _, k, _ in METRICS}]
    primary = [f"{a} - {b}" for a, b, is_primary in pairs if is_primary and with_fd]
    families = [[(c, PRIMARY_KEY) for c in primary]]
    families.append([(c, key) for c in paired for key in tested] + [(c, PRIMARY_KEY) for c in paired if c not in primary and with_fd])
    for family in families:
        for (comparison, key), adjusted in zip(family, holm([paired[c][k]["p"] for c, k in family])):
            paired[comparison][key]["p_holm"] = adjusted
    result = {"summary": summary, "paired": paired, "primary": primary}
    if with_fd:
        result["equal_time"] = equal_time(runs, arms, steps, pairs)
    return result


def equal_time(runs: dict, arms: list[str], steps: list[int], pairs) -> dict:
    """FD of every run at the training CPU time of the cheapest arm's last evaluation (mean over its seeds)."""
    budget = min(np.mean([r["times"]["cpu"][-1] for r in runs.values() if arm_of(r) == arm]) for arm in arms)
    fd = {name: fd_at_time(run, steps, budget) for name, run in runs.items()}

    def values(arm: str) -> list[float] | None:
        picked = [fd[n] for n, r in sorted(runs.items(), key=lambda item: item[1]["seed"]) if arm_of(r) == arm]
        return None if any(v is None for v in picked) else picked

    per_arm = {arm: values(arm) for arm in arms}
    return {
        "cpu_seconds": float(budget),
        "fd": {arm: None if v is None else mean_std(v) for arm, v in per_arm.items()},
        "paired": {f"{a} - {b}": None if per_arm[a] is None or per_arm[b] is None
                   else paired_difference(per_arm[a], per_arm[b]) for a, b, _ in pairs},
    }


#################################################################################
#                                   summary.md                                  #
#################################################################################

def fmt(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}g} ± {stat['std']:.2g}" if stat["n"] > 1 else f"{stat['mean']:.{digits}g}"


def interval(d: dict) -> str:
    return f"{d['mean']:+.3g} [{d['low']:+.3g}, {d['high']:+.3g}]"


def describe(diffs: dict, columns) -> str:
    """In words: which differences survive the Holm adjustment at 5%, which only the uncorrected interval, which neither."""
    better = {key: lower for _, key, lower in METRICS}
    better[PRIMARY_KEY] = True
    held, uncorrected, level = [], [], []
    for label, key in columns:
        d = diffs[key]
        direction = "better" if (d["mean"] < 0) == better[key] else "worse"
        if d.get("p_holm", 1.0) < 0.05:
            held.append(f"{label} {direction} by {abs(d['mean']):.3g}")
        elif d["excludes_zero"]:
            uncorrected.append(f"{label} {direction} by {abs(d['mean']):.3g}")
        else:
            level.append(label)
    parts = []
    if held:
        parts.append("after the Holm adjustment: " + ", ".join(held))
    if uncorrected:
        parts.append("95% interval excludes 0 but not after the Holm adjustment: " + ", ".join(uncorrected))
    if level:
        parts.append("no measurable difference (interval contains 0) in " + ", ".join(level))
    return "; ".join(parts) + "."


def primary_side_by_side(label: str, results: dict) -> str | None:
    """``cag - none`` of a study: at the last point and (where it has two points) over the last two."""
    runs, steps = results["runs"], sorted(int(s) for s in next(iter(results["runs"].values()))["evals"])
    cag = sorted((r["seed"], r) for r in runs.values() if arm_of(r) == "cag")
    none = sorted((r["seed"], r) for r in runs.values() if arm_of(r) == "none")
    if not cag or [s for s, _ in cag] != [s for s, _ in none]:
        return None
    last = paired_difference([r["evals"][str(steps[-1])]["fd"] for _, r in cag],
                             [r["evals"][str(steps[-1])]["fd"] for _, r in none])
    two = paired_difference([primary_value(r, steps) for _, r in cag], [primary_value(r, steps) for _, r in none])
    return (f"| {label} | {results['protocol']['model']} | {len(cag)} | {interval(last)} | {interval(two)} |")


def write_summary(out: Path, results: dict, objective: str, other_study: dict | None = None) -> None:
    """``summary.md``: the protocol in a sentence, mean ± std per arm, the primary comparisons, paired differences
    and their reading, equal training time, and the other study's ``cag - none`` beside this one's.

    Args:
        out: the study folder.
        results: what the study writes to ``results.json``.
        objective: the training objective (``"ddpm"`` or ``"flow"``).
        other_study: the ``results.json`` of a study at another token count, or None.
    """
    summary, paired, evaluator = results["summary"], results["paired"], results["evaluator"]
    protocol, arms, seeds, steps = results["protocol"], results["arms"], results["seeds"], results["eval_steps"]
    machines = sorted({m for r in results["runs"].values() for m in r["machines"]})
    columns = [(label, key) for label, key, _ in METRICS if key in next(iter(summary.values()))]
    has_primary = PRIMARY_KEY in next(iter(summary.values()))
    lines = [
        "# Decay study", "",
        f"{protocol['model']} on {protocol['data']}, "
        + ("SiT's flow-matching objective, " if objective == "flow" else "")
        + f"{protocol['steps']} steps of {protocol['global_batch_size']} "
        f"images (lr {protocol['lr']}), arms {', '.join(arms)}, seeds {' '.join(map(str, seeds))}; EMA weights "
        f"scored at steps {', '.join(map(str, steps))}. Samples: {protocol['sampling']['num_samples']} "
        f"class-balanced, {protocol['sampling']['scheduler']} {protocol['sampling']['steps']} steps, guidance "
        f"{protocol['sampling']['guidance_scale']}. Evaluator held-out top-1: "
        f"{evaluator.get('heldout_top1', float('nan')):.4f}. Runs at {protocol['threads']} thread(s), torch "
        f"{protocol['torch']}, on {'; '.join(machines)}. Mean ± standard deviation over seeds; training time is "
        "wall clock, checkpoints and exports included, evaluations not.", "",
    ]
    if has_primary:
        lines += [
            f"**Primary metric** (fixed in the protocol before the runs): {protocol['primary']['definition']}; "
            f"{protocol['primary']['comparisons']}; {protocol['primary']['test']}.", "",
            "| comparison | " + PRIMARY_LABEL + " | 95% interval | p | p (Holm) |", "|---|---|---|---|---|",
        ]
        for comparison in results["primary"]:
            d = paired[comparison][PRIMARY_KEY]
            lines.append(f"| {comparison} | {d['mean']:+.3g} | [{d['low']:+.3g}, {d['high']:+.3g}] | {d['p']:.3g} "
                         f"| {d['p_holm']:.3g} |")
        lines.append("")
    table_keys = columns + ([(PRIMARY_LABEL, PRIMARY_KEY)] if has_primary else [])
    arm_keys = list(table_keys)
    if WITHIN_RUN_KEY in next(iter(summary.values())):
        arm_keys.insert(1, (WITHIN_RUN_LABEL, WITHIN_RUN_KEY))
    lines += [
        f"At step {steps[-1]} ({WITHIN_RUN_LABEL}: the bootstrap standard error of one run's FD over its samples, "
        "mean over seeds; ± elsewhere: the standard deviation over seeds):", "",
        "| arm | " + " | ".join(label for label, _ in arm_keys) + " | s/step | training time |",
        "|---" * (len(arm_keys) + 3) + "|",
    ]
    for arm in arms:
        stats = summary[arm]
        cells = [fmt(stats[key]) for _, key in arm_keys]
        wall = stats["training_seconds"]["mean"] / 60
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {fmt(stats['seconds_per_step'])} | {wall:.1f} min |")
    if paired:
        lines += ["", "Paired differences (same seed), mean and 95% interval; secondary tests, Holm-adjusted together:", "",
                  "| comparison | " + " | ".join(label for label, _ in table_keys) + " | s/step |",
                  "|---" * (len(table_keys) + 2) + "|"]
        for comparison, diffs in paired.items():
            cells = [interval(diffs[key]) for _, key in table_keys + [("", "seconds_per_step")]]
            lines.append(f"| {comparison} | " + " | ".join(cells) + " |")
    if results.get("real_data"):
        real = results["real_data"]
        lines += ["", f"Real digits: the {real['images']} held-out digits score FD {real['fd']['fd']:.3g} "
                  f"(bootstrap s.e. {real['fd']['std']:.2g}) against the train split: real images at that count, the "
                  "scale on which the arms' FD (of 1,000 samples each) and their differences are read."]
    sweep_rows = sweep_table(results)
    if sweep_rows:
        lines += ["", f"Guidance sweep at step {steps[-1]} (FD / cond. acc., mean over seeds):", "", *sweep_rows]
    if "equal_time" in results:
        lines += ["", *equal_time_lines(results["equal_time"])]
    if other_study is not None:
        rows = [primary_side_by_side(f"{tokens(r)} tokens", r) for r in (other_study, results)]
        if all(rows):
            lines += ["", "`cag - none` FD at the two token counts (paired over seeds, mean and 95% interval):", "",
                      "| grid | model | seeds | at the last point | last two points |", "|---|---|---|---|---|", *rows]
    if paired:
        lines += ["", "Reading:", ""]
        for comparison, diffs in paired.items():
            lines.append(f"- **{comparison}**: " + describe(diffs, table_keys))
    seconds = results["seconds"]
    lines += ["", f"Compute: {sum(seconds.values()) / 60:.0f} min in all (training {seconds['training'] / 60:.0f}, "
              f"evaluation {seconds['evaluation'] / 60:.0f}, evaluator {seconds['evaluator_training'] / 60:.0f}). "
              "Written by `python benchmarks/decay_study.py`; every number and the protocol are in `results.json`."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def tokens(results: dict) -> int:
    """The token count of a study's model on 32x32 digits (``SDT-Ti/4`` -> 64)."""
    patch = int(results["protocol"]["model"].rsplit("/", 1)[1])
    return (32 // patch) ** 2


def sweep_table(results: dict) -> list[str]:
    final = str(results["eval_steps"][-1])
    runs = list(results["runs"].values())
    if not all("guidance_sweep" in r["evals"][final] and "fd" in r["evals"][final] for r in runs):
        return []
    main_scale = results["protocol"]["sampling"]["guidance_scale"]
    scales = sorted([*runs[0]["evals"][final]["guidance_sweep"], f"{main_scale:g}"], key=float)
    rows = ["| arm | " + " | ".join(f"guidance {s}" for s in scales) + " |", "|---" * (len(scales) + 1) + "|"]
    for arm in results["arms"]:
        cells = []
        for scale in scales:
            scores = [r["evals"][final] if scale == f"{main_scale:g}" else r["evals"][final]["guidance_sweep"][scale]
                      for r in runs if arm_of(r) == arm]
            cells.append(f"{np.mean([s['fd'] for s in scores]):.3g} / {np.mean([s['accuracy'] for s in scores]):.3f}")
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    return rows


def equal_time_lines(equal: dict) -> list[str]:
    lines = [f"At equal training time: FD of every arm after {equal['cpu_seconds'] / 60:.1f} min of training CPU time "
             "(the cheapest arm's last evaluation, mean over its seeds), interpolated linearly between evaluation "
             "points; one thread, so CPU time is compute and other jobs on the machine do not inflate it:", ""]
    for arm, stat in equal["fd"].items():
        lines.append(f"- {arm}: " + ("not reached (its first evaluation came later)" if stat is None else fmt(stat)))
    for comparison, d in equal["paired"].items():
        if d is not None:
            lines.append(f"- {comparison}: {interval(d)}")
    return lines


#################################################################################
#                                   Pictures                                    #
#################################################################################

def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(out: Path, runs: dict, arms: list[str], steps: list[int]) -> None:
    """``fd_vs_step.png``: FD, conditional accuracy and held-out loss against the step; mean over seeds, band min..max."""
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


def plot_time_curves(out: Path, runs: dict, arms: list[str]) -> None:
    """``fd_vs_time.png``: FD against training CPU time; per arm the mean over seeds, band min..max."""
    if not all("fd" in e for r in runs.values() for e in r["evals"].values()):
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for arm in arms:
        picked = [r for r in runs.values() if arm_of(r) == arm]
        minutes = np.array([r["times"]["cpu"] for r in picked]).mean(0) / 60
        fds = np.array([[e["fd"] for _, e in sorted(r["evals"].items(), key=lambda item: int(item[0]))] for r in picked])
        ax.plot(minutes, fds.mean(0), marker="o", label=arm, color=colour(arm))
        ax.fill_between(minutes, fds.min(0), fds.max(0), alpha=0.2, color=colour(arm))
    ax.set_xlabel("training CPU time (min, one thread)")
    ax.set_ylabel("FD (evaluator features, train split)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / "fd_vs_time.png")


def plot_samples(out: Path, sample_folders: dict[str, Path], count: int, caption: str) -> None:
    """``samples.png``: the first ``count`` samples of each arm's folder (same classes and seeds), one block per arm."""
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


#################################################################################
#                      Reanalysis of a study's results.json                     #
#################################################################################

def reanalysis_lines(results: dict) -> list[str]:
    """``reanalysis.md`` of a study that predates the primary metric: its tests Holm-adjusted, FD over the last two
    points (post hoc there), and FD's paired difference at every evaluation point.

    Args:
        results: the study's ``results.json`` (runs with ``evals`` per step and ``mode`` or ``arm``).
    """
    runs = results["runs"]
    steps = sorted(int(s) for s in next(iter(runs.values()))["evals"])
    final = str(steps[-1])
    arms = results.get("arms", results.get("modes"))
    keys = [(label, key) for label, key, _ in METRICS if all(key in r["evals"][final] for r in runs.values())]

    def by_seed(arm: str, value) -> list[float]:
        return [value(r) for _, r in sorted((r["seed"], r) for r in runs.values() if arm_of(r) == arm)]

    compared = [arm for arm in arms if arm != "none"]
    tests = [(arm, label, paired_difference(by_seed(arm, lambda r, k=key: r["evals"][final][k]),
                                            by_seed("none", lambda r, k=key: r["evals"][final][k])))
             for arm in compared for label, key in keys]
    for (_, _, d), adjusted in zip(tests, holm([d["p"] for _, _, d in tests])):
        d["p_holm"] = adjusted
    last_two = [(arm, paired_difference(by_seed(arm, lambda r: primary_value(r, steps)),
                                        by_seed("none", lambda r: primary_value(r, steps)))) for arm in compared]
    for (_, d), adjusted in zip(last_two, holm([d["p"] for _, d in last_two])):
        d["p_holm"] = adjusted
    lines = [
        "# Reanalysis", "",
        f"The study of `summary.md`, {results['protocol']['model']}, {len(results['seeds'])} seeds, read again from its "
        "`results.json` with the rules the 256-token study fixed before its runs (nothing retrained or resampled). "
        "Written by `python benchmarks/decay_study_report.py " + "<this folder>`.", "",
        f"**Its {len(tests)} tests at step {final}, Holm-adjusted together** (`summary.md` gave uncorrected "
        "95% intervals):", "",
        "| comparison | metric | difference [95% interval] | p | p (Holm) |", "|---|---|---|---|---|",
        *(f"| {arm} - none | {label} | {interval(d)} | {d['p']:.3g} | {d['p_holm']:.3g} |" for arm, label, d in tests),
        "", f"**{PRIMARY_LABEL}** ({', '.join(map(str, steps[-2:]))}), the 256-token study's primary metric; post hoc "
        "here, since this study named none in advance (Holm over its comparisons):", "",
        "| comparison | difference [95% interval] | p | p (Holm) |", "|---|---|---|---|",
        *(f"| {arm} - none | {interval(d)} | {d['p']:.3g} | {d['p_holm']:.3g} |" for arm, d in last_two),
        "", "**FD at every evaluation point**, paired against `none` (mean and 95% interval):", "",
        "| comparison | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|",
    ]
    for arm in compared:
        cells = [interval(paired_difference(by_seed(arm, lambda r, s=s: r["evals"][str(s)]["fd"]),
                                            by_seed("none", lambda r, s=s: r["evals"][str(s)]["fd"]))) for s in steps]
        lines.append(f"| {arm} - none | " + " | ".join(cells) + " |")
    missing = [what for what, present in (
        ("a bootstrap of each evaluation's FD over its samples", any("fd_bootstrap" in e for r in runs.values()
                                                                     for e in r["evals"].values())),
        ("FD against the held-out split", "fd_heldout" in runs[next(iter(runs))]["evals"][final]),
        ("a guidance sweep", "guidance_sweep" in runs[next(iter(runs))]["evals"][final]),
        ("the thread count", "threads" in results["protocol"]),
    ) if not present]
    if missing:
        lines += ["", "Not in this study's records, so not reanalysed (they need its runs again): "
                  + ", ".join(missing) + "."]
    if results.get("gates_vs_timestep", {}).get("strength"):
        lines += ["", "`gates_vs_timestep.png` is re-plotted from the recorded curves with the heads of every seed "
                  "ranked by strength before the mean (a head index names a different head in each seed)."]
    return lines


def reanalyse(folder: Path) -> None:
    """Write ``reanalysis.md`` beside a study's ``results.json`` and re-plot its gates with heads ranked."""
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: no results.json in {folder}: give the folder of a finished decay study")
    results = json.loads(path.read_text())
    (folder / "reanalysis.md").write_text("\n".join(reanalysis_lines(results)) + "\n")
    gates = results.get("gates_vs_timestep", {})
    if gates.get("strength"):
        plot_gates(folder, gates["strength"], results["runs"], gates["timesteps"])
    print(f"wrote {folder / 'reanalysis.md'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a finished decay study's folder (with results.json)")
    reanalyse(parser.parse_args().folder)
