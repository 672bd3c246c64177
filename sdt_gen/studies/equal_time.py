"""Arms at equal training compute, beside equal steps: two readings, and how far apart their costs are.

* **The recorded clocks**: every run's FD at one budget of training CPU time, interpolated linearly between its
  evaluation points in its own CPU time. The budget defaults to the earliest end of any run's record, so every run
  reached it. A run whose record ends before the budget, or whose first evaluation came after it, is flagged and
  left out (with its seed's pairs), never extrapolated nor held at its last value.
* **The benchmark's cost ratios** (CPU seconds per step of each arm, measured apart from the study, e.g. by
  ``benchmarks/bench_training.py --arms``): the cheapest arm is read at its last evaluation point and every other
  arm at the step where it has spent as much compute, ``last step * cheapest cost / its cost``, interpolated in
  steps; a step before the first evaluation point is flagged the same way.

The clocks of runs sharing a machine with other jobs carry the load beside them; the ratios are the cleaner cost.
``equal_time`` reports both and, per arm, the cost ratio each implies, so the reader sees how far apart they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..metrics import mean_std
from .statistics import arm_of, by_seed, paired_by_seed


def reading_at(positions: list[float], values: list[float], at: float) -> float | None:
    """``values`` interpolated linearly at ``at`` between ``positions`` (None outside them: nothing extrapolated)."""
    tolerance = 1e-9 * max(1.0, abs(at))
    if at < positions[0] - tolerance or at > positions[-1] + tolerance:
        return None
    return float(np.interp(at, positions, values))


def arm_readings(runs: dict, arms: list[str], pairs, fd: dict[str, float | None]) -> dict:
    """Per arm, mean/std of the runs' FD readings that exist; per comparison, their paired differences by seed."""
    def reading(run: dict) -> float | None:
        return fd[run["name"]]

    named = {name: {**run, "name": name} for name, run in runs.items()}
    per_arm = {arm: list(by_seed(named, arm, reading).values()) for arm in arms}
    return {
        "fd": {arm: mean_std(values) if values else None for arm, values in per_arm.items()},
        "paired": {f"{a} - {b}": paired_by_seed(named, a, b, reading) for a, b, _ in pairs},
    }


def clock_reading(runs: dict, arms: list[str], steps: list[int], pairs, budget: float | None = None) -> dict:
    """FD of every run at ``budget`` seconds of its recorded training CPU time.

    Args:
        runs: the study's runs, with ``times["cpu"]`` (cumulative CPU seconds at each evaluation point).
        arms: the study's arms.
        steps: the evaluation points.
        pairs: ``(arm, against, primary)`` comparisons.
        budget: CPU seconds (default: the earliest end of any run's record, which every run reached).

    Returns:
        ``cpu_seconds`` (the budget), ``given`` (whether the caller chose it), ``earliest_end`` (the run whose record ends first), ``fd`` and ``paired``
        (``arm_readings``), and ``flagged``: run -> why it has no reading.
    """
    ends = {name: run["times"]["cpu"][-1] for name, run in runs.items()}
    given = budget is not None
    budget = budget if given else min(ends.values())
    fd, flagged = {}, {}
    for name, run in runs.items():
        times = run["times"]["cpu"]
        fd[name] = reading_at(times, [run["evals"][str(s)]["fd"] for s in steps], budget)
        if fd[name] is None:
            flagged[name] = (f"record ends at {times[-1] / 60:.1f} min, before the budget" if budget > times[-1]
                             else f"first evaluation at {times[0] / 60:.1f} min, after the budget")
    return {"cpu_seconds": float(budget), "given": given, "earliest_end": min(ends, key=ends.get),
            **arm_readings(runs, arms, pairs, fd), "flagged": flagged}


def cost_reading(runs: dict, arms: list[str], steps: list[int], pairs, costs: dict[str, float]) -> dict:
    """FD of every arm at equal compute by the benchmark's cost per step: the cheapest arm at its last step.

    Args:
        runs: the study's runs.
        arms: the study's arms; an arm without a cost is flagged.
        steps: the evaluation points.
        pairs: ``(arm, against, primary)`` comparisons.
        costs: arm -> CPU seconds per step (or any multiple of it: only the ratios count).

    Returns:
        ``ratios`` (arm -> its cost over the cheapest arm's), ``steps`` (arm -> the step it is read at), ``fd`` and
        ``paired`` (``arm_readings``), and ``flagged``: run -> why it has no reading.
    """
    known = [arm for arm in arms if arm in costs]
    if not known:
        raise ValueError(f"the costs name none of the study's arms ({', '.join(arms)}): {', '.join(costs)}")
    cheapest = min(costs[arm] for arm in known)
    ratios = {arm: costs[arm] / cheapest for arm in arms if arm in costs}
    at_step = {arm: steps[-1] / ratio for arm, ratio in ratios.items()}
    fd, flagged = {}, {}
    for name, run in runs.items():
        arm = arm_of(run)
        fd[name] = reading_at(steps, [run["evals"][str(s)]["fd"] for s in steps], at_step[arm]) if arm in ratios else None
        if arm not in ratios:
            flagged[name] = "no cost ratio for its arm"
        elif fd[name] is None:
            flagged[name] = f"equal compute at step {at_step[arm]:.0f}, before its first evaluation ({steps[0]})"
    return {"ratios": ratios, "steps": at_step, **arm_readings(runs, arms, pairs, fd), "flagged": flagged}


def recorded_ratios(runs: dict, arms: list[str], reference: str) -> dict[str, dict[str, float]]:
    """Per arm, the cost per step its runs' CPU clocks imply against ``reference``'s mean: ``mean`` over seeds,
    and the ``low``/``high`` of its seeds (the spread the load beside them adds)."""
    totals = {arm: by_seed(runs, arm, lambda r: r["training_cpu_seconds"]) for arm in arms}
    base = np.mean(list(totals[reference].values()))
    return {arm: {"mean": float(np.mean(list(v.values())) / base), "low": float(min(v.values()) / base),
                  "high": float(max(v.values()) / base)} for arm, v in totals.items()}


def equal_time(runs: dict, arms: list[str], steps: list[int], pairs, costs: dict | None = None,
               budget: float | None = None) -> dict:
    """Both readings (``clock``; ``cost`` with benchmark costs, else None) and the recorded clocks' cost ratios.

    Args:
        runs: the study's runs, with their CPU-time records.
        arms: the study's arms.
        steps: the evaluation points.
        pairs: ``(arm, against, primary)`` comparisons.
        costs: ``{"values": arm -> CPU seconds per step, "source": where they were measured}``, or None.
        budget: the clock reading's CPU seconds (default: the earliest end of any run's record).
    """
    result = {"clock": clock_reading(runs, arms, steps, pairs, budget), "cost": None}
    if costs:
        result["cost"] = {**cost_reading(runs, arms, steps, pairs, costs["values"]), "source": costs["source"]}
        reference = min(result["cost"]["ratios"], key=result["cost"]["ratios"].get)
        result["recorded_ratios"] = recorded_ratios(runs, arms, reference)
    return result


def read_costs(items: list[str]) -> dict:
    """Benchmark costs from the command line: ``ARM=SECONDS_PER_STEP ...``, or one JSON file: an object mapping each
    arm to its CPU seconds per step (or ratio), or a measurement table (``docs/measurements/*.json``) whose rows
    have an ``arm`` and its ``seconds`` (or ``ratio``). Returns ``{"values": {arm: value}, "source": ...}``; a
    ValueError says what is wrong."""
    if len(items) == 1 and "=" not in items[0]:
        path = Path(items[0])
        if not path.is_file():
            raise ValueError(f"{path}: no such file (give ARM=VALUE pairs or a JSON file of arm -> cost)")
        values, source = json.loads(path.read_text()), str(path)
        if isinstance(values, dict) and "rows" in values:
            values = {row.get("arm"): row.get("seconds", row.get("ratio")) for row in values["rows"]}
    else:
        pairs = [item.partition("=") for item in items]
        if any(not arm or not sep for arm, sep, _ in pairs):
            raise ValueError(f"expected ARM=VALUE pairs, got {' '.join(items)}")
        values, source = {arm: value for arm, _, value in pairs}, "--cost-ratios " + " ".join(items)
    try:
        values = {arm: float(value) for arm, value in values.items()}
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"costs must map each arm to a number, got {values!r}") from None
    if not values or min(values.values()) <= 0:
        raise ValueError(f"costs must be positive numbers, got {values}")
    return {"values": values, "source": source}

