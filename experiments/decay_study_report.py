"""A published decay study read again from its ``results.json``, with today's code; nothing retrained or resampled.

    python experiments/decay_study_report.py docs/decay_study              # reanalysis.md, the gates re-plotted
    python experiments/decay_study_report.py docs/decay_study --summary    # results.json's analysis and summary.md
    python experiments/decay_study_report.py docs/decay_study_256 --summary \\
        --cost-ratios none=0.940 cag=1.284 rope=1.091 rope+cag=1.478 --compare-with docs/decay_study/results.json

The reanalysis reads a study written before the protocol had a primary metric and multiplicity correction (the
published 64-token study) with the rules the 256-token study fixed before its runs. ``--summary`` rewrites the
analysis in ``results.json`` (statistics, equal time), ``summary.md`` and ``fd_vs_time.png`` from the recorded
runs, and records this invocation's provenance beside the runs' (a note where the runs recorded none).
"""

import argparse
import json
from pathlib import Path

from sdt_gen.cli import positive_float, run_main
from sdt_gen.provenance import RunRecord
from sdt_gen.studies.equal_time import read_costs
from sdt_gen.studies.report import reanalyse, regenerate


def main(args: argparse.Namespace, record: RunRecord) -> None:
    """Reanalyse the study in ``args.folder``, or with ``--summary`` regenerate its summary."""
    if not args.summary:
        reanalyse(args.folder, record)
        return
    try:
        costs = read_costs(args.cost_ratios) if args.cost_ratios else None
    except ValueError as error:
        raise SystemExit(f"error: --cost-ratios: {error}") from None
    other = json.loads(Path(args.compare_with).read_text()) if args.compare_with else None
    budget = args.budget_minutes * 60 if args.budget_minutes else None
    regenerate(args.folder, record, costs, budget, other)
    print((args.folder / "summary.md").read_text())


def build_parser() -> argparse.ArgumentParser:
    """The report's command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a finished decay study's folder (with results.json)")
    p.add_argument("--summary", action="store_true",
                   help="rewrite results.json's analysis, summary.md and fd_vs_time.png instead of reanalysis.md")
    p.add_argument("--cost-ratios", nargs="+", metavar="ARM=S",
                   help="the arms' CPU seconds per step from benchmarks/bench_training.py --arms (ARM=VALUE pairs or a "
                   "JSON file of arm -> value): the equal-compute reading beside the recorded clocks")
    p.add_argument("--budget-minutes", type=positive_float,
                   help="the equal-time reading's budget in training CPU minutes (default: the earliest end of any "
                   "run's record; a run whose record ends before it is flagged)")
    p.add_argument("--compare-with", help="another token count's results.json, whose cag - none the summary sets beside")
    return p


if __name__ == "__main__":
    started = RunRecord.start()
    run_main(lambda args: main(args, started), build_parser())
