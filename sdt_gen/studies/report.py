"""What a study publishes: ``results.json``'s analysis and ``summary.md``, and the reanalysis of an older study.

Plain functions of a study's ``results.json``: nothing here trains or samples, so a published study is re-read
(``regenerate``) from its folder alone, whatever code wrote it, as long as its runs are in ``results.json``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..provenance import RunRecord
from .equal_time import equal_time
from .plots import plot_gates, plot_time_curves
from .protocol import comparisons, write_json
from .statistics import (
    METRICS,
    PRIMARY_KEY,
    PRIMARY_LABEL,
    WITHIN_RUN_KEY,
    WITHIN_RUN_LABEL,
    arm_of,
    holm_adjust,
    paired_by_seed,
    primary_value,
    statistics,
    study_steps,
)


def analyse(results: dict, costs: dict | None = None, budget: float | None = None) -> dict:
    """What ``results.json`` derives from its runs: ``statistics`` and, where the runs recorded CPU time,
    ``equal_time``. A study that fixed no primary metric in its protocol gets no primary comparison.

    Args:
        results: ``runs``, ``arms`` (or ``modes``) and ``protocol`` of a study.
        costs: the benchmark's CPU seconds per step (``equal_time.read_costs``), or None.
        budget: the equal-time reading's CPU seconds (default: the earliest end of any run's record).
    """
    runs, arms, steps = results["runs"], results.get("arms", results.get("modes")), study_steps(results["runs"])
    pairs = [(arm, against, primary and "primary" in results["protocol"]) for arm, against, primary in comparisons(arms)]
    derived = statistics(runs, arms, steps, pairs)
    if all("times" in run for run in runs.values()) and "fd" in runs[next(iter(runs))]["evals"][str(steps[-1])]:
        derived["equal_time"] = equal_time(runs, arms, steps, pairs, costs, budget)
    return derived


#################################################################################
#                                  summary.md                                   #
#################################################################################

def fmt(stat: dict, digits: int = 3) -> str:
    """``mean ± std`` (the mean alone for one value)."""
    return f"{stat['mean']:.{digits}g} ± {stat['std']:.2g}" if stat["n"] > 1 else f"{stat['mean']:.{digits}g}"


def interval(d: dict) -> str:
    """A paired difference as ``+mean [+low, +high]``."""
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


def objective_of(protocol: dict) -> str:
    """The training objective a protocol's runs used (``--objective`` in its training flags; DDPM without it)."""
    flags = protocol["training_flags"]
    return flags[flags.index("--objective") + 1] if "--objective" in flags else "ddpm"


def tokens(results: dict) -> int:
    """The token count of a study's model on 32x32 digits (``SDT-Ti/4`` -> 64)."""
    patch = int(results["protocol"]["model"].rsplit("/", 1)[1])
    return (32 // patch) ** 2


def primary_side_by_side(label: str, results: dict) -> str | None:
    """``cag - none`` of a study: at the last point and (where it has two points) over the last two."""
    runs, steps = results["runs"], study_steps(results["runs"])
    last = paired_by_seed(runs, "cag", "none", lambda r: r["evals"][str(steps[-1])]["fd"])
    if last is None:
        return None
    two = paired_by_seed(runs, "cag", "none", lambda r: primary_value(r, steps))
    return f"| {label} | {results['protocol']['model']} | {last['n']} | {interval(last)} | {interval(two)} |"


def sweep_table(results: dict) -> list[str]:
    """FD / cond. acc. of every arm at every guidance scale of the last point (none without a sweep)."""
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
            cells.append(f"{sum(s['fd'] for s in scores) / len(scores):.3g} / "
                         f"{sum(s['accuracy'] for s in scores) / len(scores):.3f}")
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    return rows


def reading_lines(reading: dict) -> list[str]:
    """One equal-time reading: FD per arm, the flagged runs, and the paired differences."""
    lines = [f"- {arm}: " + ("no run reached it" if stat is None else fmt(stat) + ("" if stat["n"] > 1 else " (1 run)"))
             for arm, stat in reading["fd"].items()]
    lines += [f"- flagged, left out with its seed's pairs: {name} ({why})" for name, why in reading["flagged"].items()]
    lines += [f"- {comparison}: " + (interval(d) if d["n"] > 1 else f"{d['mean']:+.3g}") + f" ({d['n']} seeds)"
              for comparison, d in reading["paired"].items() if d is not None]
    return lines


def equal_time_lines(equal: dict) -> list[str]:
    """The two equal-compute readings and how far apart the costs behind them are."""
    clock = equal["clock"]
    chosen = ("as given" if clock["given"] else
              f"the earliest end of any run's record, {clock['earliest_end']}'s, so every run reached it")
    lines = [f"At equal training time, by the recorded clocks: FD of every run after {clock['cpu_seconds'] / 60:.1f} "
             f"min of its training CPU time ({chosen}), interpolated linearly between its evaluation points; a run "
             "whose record ends earlier is flagged, never extrapolated. Paired differences: uncorrected 95% "
             "intervals, exploratory (outside the Holm families):", "", *reading_lines(clock)]
    cost = equal["cost"]
    if cost is None:
        return lines + ["", "No benchmark cost ratios were given (`--cost-ratios`), so no equal-compute reading "
                            "independent of the load on the machine."]
    ratios, recorded = cost["ratios"], equal["recorded_ratios"]
    reference = min(ratios, key=ratios.get)
    steps = ", ".join(f"{arm} at step {step:.0f}" for arm, step in cost["steps"].items())
    lines += ["", f"At equal compute by the benchmark's cost per step ({cost['source']}): {steps}, FD interpolated "
              "linearly in steps between evaluation points:", "", *reading_lines(cost), "",
              f"How far apart the two costs are (per step, against {reference}; recorded: the runs' training CPU "
              "time, mean over seeds and the range of its seeds):", "",
              "| arm | benchmark | recorded | recorded seeds | recorded / benchmark |", "|---|---|---|---|---|"]
    for arm in ratios:
        mine = recorded[arm]
        lines.append(f"| {arm} | {ratios[arm]:.2f}x | {mine['mean']:.2f}x | {mine['low']:.2f}-{mine['high']:.2f}x "
                     f"| {mine['mean'] / ratios[arm]:.2f} |")
    return lines


def provenance_lines(provenance: dict | None) -> list[str]:
    """The "Provenance" section: where the runs' numbers and this file came from."""
    lines = ["## Provenance", ""]
    if provenance is None:
        return lines + ["Not recorded."]
    for part, title in (("study", "The runs"), ("report", "This file")):
        record = provenance.get(part)
        if record is None:
            continue
        if "command" not in record:
            lines.append(f"- {title}: {record['note']}")
            continue
        versions = ", ".join(f"{name} {v}" for name, v in record["versions"].items() if v is not None)
        lines.append(f"- {title}: `{record['command']}` at commit {record['commit']} (uncommitted changes: "
                     f"{'yes' if record['dirty'] else 'no'}), {record['threads']} thread(s) on {record['cpu']}, "
                     f"{record['started']} to {record['finished']} ({record['wall_seconds'] / 60:.1f} min wall, "
                     f"{record['cpu_seconds'] / 60:.1f} min CPU); {versions}.")
    invocations = provenance.get("invocations", [])
    if len(invocations) > 1:
        lines.append(f"- {len(invocations)} invocations trained and scored the runs, each recorded in `results.json`.")
    return lines


def protocol_lines(results: dict) -> list[str]:
    """The protocol in a sentence."""
    protocol, evaluator, steps = results["protocol"], results["evaluator"], results["eval_steps"]
    machines = sorted({m for r in results["runs"].values() for m in r.get("machines", [])})
    threads, torch_version = protocol.get("threads", "not recorded"), protocol.get("torch", "not recorded")
    return [
        f"{protocol['model']} on {protocol['data']}, "
        + ("SiT's flow-matching objective, " if objective_of(protocol) == "flow" else "DiT's DDPM objective, ")
        + f"{protocol['steps']} steps of {protocol['global_batch_size']} images (lr {protocol['lr']}), arms "
        f"{', '.join(results['arms'])}, seeds {' '.join(map(str, results['seeds']))}; EMA weights scored at steps "
        f"{', '.join(map(str, steps))}. Samples: {protocol['sampling']['num_samples']} class-balanced, "
        f"{protocol['sampling']['scheduler']} {protocol['sampling']['steps']} steps, guidance "
        f"{protocol['sampling']['guidance_scale']}. Evaluator held-out top-1: "
        f"{evaluator.get('heldout_top1', float('nan')):.4f}. Threads per run: {threads}; torch {torch_version}; "
        f"machine: {'; '.join(machines) or 'not recorded'}. Mean ± standard deviation over seeds; training time is "
        "wall clock, checkpoints and exports included, evaluations not.", "",
    ]


def write_summary(out: Path, results: dict, other_study: dict | None = None) -> None:
    """``summary.md``: the protocol in a sentence, mean ± std per arm, the primary comparisons, paired differences
    and their reading, equal training time, the other study's ``cag - none`` beside this one's, and provenance.

    Args:
        out: the study folder.
        results: what the study writes to ``results.json``.
        other_study: the ``results.json`` of a study at another token count, or None.
    """
    summary, paired, steps = results["summary"], results["paired"], results["eval_steps"]
    first = next(iter(summary.values()))
    columns = [(label, key) for label, key, _ in METRICS if key in first]
    timing = next((label, key) for label, key in (("s/step", "seconds_per_step"), ("steps/s", "steps_per_second"))
                  if key in first)
    lines = ["# Decay study", "", *protocol_lines(results)]
    if results["primary"]:
        primary = results["protocol"]["primary"]
        lines += [
            f"**Primary metric** (fixed in the protocol before the runs): {primary['definition']}; "
            f"{primary['comparisons']}; {primary['test']}.", "",
            "| comparison | " + PRIMARY_LABEL + " | 95% interval | p | p (Holm) |", "|---|---|---|---|---|",
        ]
        for comparison in results["primary"]:
            d = paired[comparison][PRIMARY_KEY]
            lines.append(f"| {comparison} | {d['mean']:+.3g} | [{d['low']:+.3g}, {d['high']:+.3g}] | {d['p']:.3g} "
                         f"| {d['p_holm']:.3g} |")
        lines.append("")
    else:
        lines += ["No primary metric was fixed before these runs: every test below is secondary, Holm-adjusted "
                  "together (`reanalysis.md`, where present, reads them with a later study's rules).", ""]
    table_keys = columns + ([(PRIMARY_LABEL, PRIMARY_KEY)] if PRIMARY_KEY in first else [])
    arm_keys = list(table_keys)
    if WITHIN_RUN_KEY in first:
        arm_keys.insert(1, (WITHIN_RUN_LABEL, WITHIN_RUN_KEY))
    within = (f"{WITHIN_RUN_LABEL}: the bootstrap standard error of one run's FD over its samples, mean over seeds; "
              "± elsewhere" if WITHIN_RUN_KEY in first else "±")
    lines += [
        f"At step {steps[-1]} ({within}: the standard deviation over seeds):", "",
        "| arm | " + " | ".join(label for label, _ in arm_keys) + f" | {timing[0]} | training time |",
        "|---" * (len(arm_keys) + 3) + "|",
    ]
    for arm in results["arms"]:
        stats = summary[arm]
        cells = [fmt(stats[key]) for _, key in arm_keys]
        wall = stats["training_seconds"]["mean"] / 60
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {fmt(stats[timing[1]])} | {wall:.1f} min |")
    if paired:
        lines += ["", "Paired differences (same seed), mean and 95% interval; secondary tests, Holm-adjusted together:", "",
                  "| comparison | " + " | ".join(label for label, _ in table_keys) + f" | {timing[0]} |",
                  "|---" * (len(table_keys) + 2) + "|"]
        for comparison, diffs in paired.items():
            cells = [interval(diffs[key]) for _, key in table_keys + [timing]]
            lines.append(f"| {comparison} | " + " | ".join(cells) + " |")
    if results.get("real_data"):
        real = results["real_data"]
        lines += ["", f"Real digits: the {real['images']} held-out digits score FD {real['fd']['fd']:.3g} "
                  f"(bootstrap s.e. {real['fd']['std']:.2g}) against the train split: real images at that count, the "
                  "scale on which the arms' FD (of 1,000 samples each) and their differences are read."]
    sweep_rows = sweep_table(results)
    if sweep_rows:
        lines += ["", f"Guidance sweep at step {steps[-1]} (FD / cond. acc., mean over seeds):", "", *sweep_rows]
    lines += ["", *(equal_time_lines(results["equal_time"]) if "equal_time" in results else
                    ["Equal training time: not read (the runs kept no CPU-time record per evaluation point)."])]
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
              "Every number and the protocol are in `results.json`.", "", *provenance_lines(results.get("provenance"))]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


#################################################################################
#                         Reading a published study again                       #
#################################################################################

def regenerate(folder: Path, record: RunRecord, costs: dict | None = None, budget: float | None = None,
               other_study: dict | None = None) -> dict:
    """Rewrite a study's ``results.json`` analysis, ``summary.md`` and ``fd_vs_time.png`` from its runs, with
    this code; the runs, protocol and evaluator records are kept as they are, nothing is retrained or resampled.

    Args:
        folder: the study folder, with ``results.json``.
        record: this invocation's provenance, started by the caller.
        costs: the benchmark's CPU seconds per step of the arms (``equal_time.read_costs``), or None.
        budget: the equal-time reading's CPU seconds (default: the earliest end of any run's record).
        other_study: another token count's ``results.json``, whose ``cag - none`` the summary sets beside.

    Returns:
        the rewritten results.
    """
    results = read_results(folder)
    results.setdefault("arms", results.pop("modes", None))
    results.setdefault("eval_steps", study_steps(results["runs"]))
    results.pop("paired_vs_none", None)  # the pre-Holm analysis, superseded by ``paired``
    results.update(analyse(results, costs, budget))
    provenance = results.setdefault("provenance", {})
    provenance.setdefault("study", {"note": (
        "not recorded: the runs predate provenance records (no command line, commit or package versions beyond "
        f"the protocol's were kept); results.json was published in commit {published_in(folder / 'results.json')}")})
    provenance["report"] = record.finish()
    write_report(folder, results, other_study)
    return results


def write_report(folder: Path, results: dict, other_study: dict | None = None) -> None:
    """``results.json``, ``summary.md`` and, where the runs recorded CPU time, ``fd_vs_time.png``."""
    write_json(folder / "results.json", results)
    write_summary(folder, results, other_study)
    if "equal_time" in results:
        plot_time_curves(folder, results["runs"], results["arms"], results["equal_time"]["clock"]["cpu_seconds"])


def published_in(path: Path) -> str | None:
    """The last commit that changed ``path`` (``git log --format=%H -1``), or None outside git."""
    try:
        done = subprocess.run(["git", "-C", str(path.parent), "log", "--format=%H", "-1", "--", path.name],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def read_results(folder: Path) -> dict:
    """A finished study's ``results.json``; a SystemExit names a folder without one."""
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: no results.json in {folder}: give the folder of a finished decay study")
    return json.loads(path.read_text())


def reanalysis_lines(results: dict) -> list[str]:
    """``reanalysis.md`` of a study that predates the primary metric: its tests Holm-adjusted, FD over the last two
    points (post hoc there), and FD's paired difference at every evaluation point.

    Args:
        results: the study's ``results.json`` (runs with ``evals`` per step and ``mode`` or ``arm``).
    """
    runs = results["runs"]
    steps = study_steps(runs)
    final = str(steps[-1])
    arms = results.get("arms", results.get("modes"))
    keys = [(label, key) for label, key, _ in METRICS if all(key in r["evals"][final] for r in runs.values())]
    compared = [arm for arm in arms if arm != "none"]
    tests = [(arm, label, paired_by_seed(runs, arm, "none", lambda r, k=key: r["evals"][final][k]))
             for arm in compared for label, key in keys]
    holm_adjust([d for _, _, d in tests])
    last_two = [(arm, paired_by_seed(runs, arm, "none", lambda r: primary_value(r, steps))) for arm in compared]
    holm_adjust([d for _, d in last_two])
    lines = [
        "# Reanalysis", "",
        f"The study of `summary.md`, {results['protocol']['model']}, {len(results['seeds'])} seeds, read again from its "
        "`results.json` with the rules the 256-token study fixed before its runs (nothing retrained or resampled). "
        "Written by `python experiments/decay_study_report.py " + "<this folder>`.", "",
        f"**Its {len(tests)} tests at step {final}, Holm-adjusted together** (its first summary gave uncorrected "
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
        cells = [interval(paired_by_seed(runs, arm, "none", lambda r, s=s: r["evals"][str(s)]["fd"])) for s in steps]
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


def reanalyse(folder: Path, record: RunRecord) -> None:
    """Write ``reanalysis.md`` beside a study's ``results.json`` and re-plot its gates with heads ranked.

    Args:
        folder: the study folder, with ``results.json``.
        record: this invocation's provenance, started by the caller.
    """
    results = read_results(folder)
    provenance = {"study": results.get("provenance", {}).get("study"), "report": record.finish()}
    lines = [*reanalysis_lines(results), "", *provenance_lines(provenance)]
    (folder / "reanalysis.md").write_text("\n".join(lines) + "\n")
    gates = results.get("gates_vs_timestep", {})
    if gates.get("strength"):
        plot_gates(folder, gates["strength"], results["runs"], gates["timesteps"])
    print(f"wrote {folder / 'reanalysis.md'}")
