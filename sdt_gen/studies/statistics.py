"""What a study's runs say together: per-arm means, paired differences by seed and their Holm adjustment.

Built on ``sdt_gen.metrics.statistics`` (mean and std, the paired Student-t difference, Holm's step-down). A seed
fixes the data order, the noise and every initial weight the arms share, so two arms' runs of one seed form a pair
(``paired_by_seed``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..metrics import holm, mean_std, paired_difference

# (label, key, lower is better): the metrics of the summary table and the paired differences, at the last point.
METRICS = (
    ("FD", "fd", True), ("FD held-out", "fd_heldout", True), ("cond. acc.", "accuracy", False),
    ("precision", "precision", False), ("recall", "recall", False), ("held-out loss", "heldout_mse", True),
    ("FID", "fid", True), ("IS", "inception_score", False),
)
PRIMARY_KEY, PRIMARY_LABEL = "fd_last2", "FD, last two points"
WITHIN_RUN_KEY, WITHIN_RUN_LABEL = "fd_se", "FD s.e. within run"  # the bootstrap over one run's samples
TIMING_KEYS = ("steps_per_second", "seconds_per_step", "training_seconds", "training_cpu_seconds")


def arm_of(run: dict) -> str:
    """A run's arm; studies before arms had positions recorded it as ``mode``."""
    return run.get("arm", run.get("mode"))


def study_steps(runs: dict) -> list[int]:
    """The evaluation steps of a study's runs, in order (read from the runs, as old records lack ``eval_steps``)."""
    return sorted(int(s) for s in next(iter(runs.values()))["evals"])


def primary_value(run: dict, steps: list[int]) -> float:
    """The primary metric of one run: FD against the train split, mean over the last two evaluation points."""
    return float(np.mean([run["evals"][str(s)]["fd"] for s in steps[-2:]]))


def by_seed(runs: dict, arm: str, value: Callable[[dict], float | None]) -> dict[int, float]:
    """``{seed: value(run)}`` over the runs of ``arm`` whose value is not None."""
    values = {run["seed"]: value(run) for run in runs.values() if arm_of(run) == arm}
    return {seed: v for seed, v in sorted(values.items()) if v is not None}


def paired_by_seed(runs: dict, arm: str, against: str, value: Callable[[dict], float | None]) -> dict | None:
    """``value`` of ``arm`` minus that of ``against``, paired over the seeds both have a value at (None if none).

    Args:
        runs: the study's runs (``{name: {"arm" or "mode", "seed", ...}}``).
        arm: the arm compared.
        against: the arm it is compared with.
        value: what to compare, a function of one run (None where a run has no value, e.g. a flagged one).

    Returns:
        ``sdt_gen.metrics.paired_difference`` over the shared seeds, or None when they share none.
    """
    ours, theirs = by_seed(runs, arm, value), by_seed(runs, against, value)
    seeds = sorted(ours.keys() & theirs.keys())
    return paired_difference([ours[s] for s in seeds], [theirs[s] for s in seeds]) if seeds else None


def holm_adjust(differences: list[dict]) -> None:
    """Add ``p_holm`` to each paired difference, Holm-adjusted over all of them (one family of tests)."""
    for difference, adjusted in zip(differences, holm([d["p"] for d in differences])):
        difference["p_holm"] = adjusted


def run_values(runs: dict, steps: list[int]) -> dict[str, dict[str, float]]:
    """Per run, every number the summary compares: the metrics at the last point that every run has, the timings
    every run recorded, the primary metric (with two points or more) and the within-run FD standard error."""
    final = str(steps[-1])
    keys = [key for _, key, _ in METRICS if all(key in r["evals"][final] for r in runs.values())]
    timings = [key for key in TIMING_KEYS if all(key in r for r in runs.values())]
    per_run = {}
    for name, run in runs.items():
        values = {key: run["evals"][final][key] for key in keys}
        values.update({key: run[key] for key in timings})
        if "fd" in keys and len(steps) >= 2:
            values[PRIMARY_KEY] = primary_value(run, steps)
        if "fd_bootstrap" in run["evals"][final]:
            values[WITHIN_RUN_KEY] = run["evals"][final]["fd_bootstrap"]["std"]
        per_run[name] = values
    return per_run


def statistics(runs: dict, arms: list[str], steps: list[int], pairs: list[tuple[str, str, bool]]) -> dict:
    """Per arm, mean/std of every metric; per comparison, paired differences with Holm-adjusted p-values.

    Args:
        runs: the study's runs.
        arms: the study's arms, in order.
        steps: the evaluation points.
        pairs: ``(arm, against, primary)`` comparisons; none primary for a study that fixed no primary metric.

    Returns:
        ``summary`` (arm -> key -> mean/std), ``paired`` (``"arm - against"`` -> key -> difference, with ``p`` and
        ``p_holm``) and ``primary`` (the comparisons of the primary metric, Holm-adjusted as one family).
    """
    per_run = run_values(runs, steps)
    valued = {name: {**run, "values": per_run[name]} for name, run in runs.items()}
    all_keys = list(next(iter(per_run.values())))
    summary = {arm: {key: mean_std(list(by_seed(valued, arm, lambda r, k=key: r["values"][k]).values()))
                     for key in all_keys} for arm in arms}
    paired = {f"{arm} - {against}": {key: paired_by_seed(valued, arm, against, lambda r, k=key: r["values"][k])
                                     for key in all_keys} for arm, against, _ in pairs}
    # Primary: one metric over the primary comparisons; secondary: everything else, metrics that measure quality.
    with_primary = PRIMARY_KEY in all_keys
    tested = [key for key in all_keys if key in {k for _, k, _ in METRICS}]
    primary = [f"{a} - {b}" for a, b, is_primary in pairs if is_primary and with_primary]
    holm_adjust([paired[c][PRIMARY_KEY] for c in primary])
    holm_adjust([paired[c][key] for c in paired for key in tested]
                + [paired[c][PRIMARY_KEY] for c in paired if c not in primary and with_primary])
    return {"summary": summary, "paired": paired, "primary": primary}
