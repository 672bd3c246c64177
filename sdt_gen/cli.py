"""What the command lines share: argument types that refuse bad values, the argument groups the
training scripts (and the sampling scripts) have in common, and user errors as one line.

A script builds its parser and ends with ``run_main(main, parser)``: a bad input (a ``ValueError``, a
missing file or a missing optional package, whose messages say what to fix) prints ``error: ...`` and exits with status 2, as
argparse does for bad flags; ``--debug``, which ``run_main`` adds, shows the traceback instead.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .extras import MissingExtraError
from .layers import ATTENTION_BACKENDS
from .training.setup import REPORT_TO

# OSError: missing files, no space left, no permission: the message says which file. MissingExtraError: an
# optional package is missing, the message says what to install.
USER_ERRORS = (ValueError, OSError, MissingExtraError)


def _number(text: str, kind: type, test: Callable[[Any], bool], expected: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
    return value


def positive_int(text: str) -> int:
    """A count: an integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """A seed, an index or an optional count: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate)."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a guidance scale, a weight decay, a probability)."""
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


DTYPES = ("float32", "float16", "bfloat16")
MIXED_PRECISIONS = ("no", "fp16", "bf16")


class OptionRecordingParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose namespaces also hold ``given_options``: ``{dest: option}`` of what the command line set.

    A resumed run takes its own saved settings for every option not given (``sdt_gen.training.restore_run_settings``),
    which needs to tell ``--decay-mode cag`` typed by the user from the default ``cag``.
    """

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        probe = copy.deepcopy(self)
        probe.__class__ = argparse.ArgumentParser
        for action in probe._actions:
            action.default = argparse.SUPPRESS  # only what the command line sets lands in the namespace
        given, _ = probe.parse_known_args(args)
        options = {action.dest: action.option_strings[0] for action in self._actions if action.option_strings}
        parsed.given_options = {dest: options.get(dest, dest) for dest in sorted(vars(given))}
        return parsed, extras


def add_run_arguments(group, artifact: str, keep_checkpoints: int) -> None:
    """What every training script takes about its process and run folder (as SiT shares its transport flags).

    Args:
        group: the parser or argument group to add to.
        artifact: what ``--push-to-hub`` uploads, e.g. ``"pipeline folder"``.
        keep_checkpoints: the default number of checkpoints kept.
    """
    group.add_argument("--gradient-accumulation-steps", type=positive_int, default=1,
                       help="micro-batches per optimizer step")
    group.add_argument("--mixed-precision", choices=MIXED_PRECISIONS,
                       help="autocast precision (default: what `accelerate launch` was configured with, else no)")
    group.add_argument("--seed", type=non_negative_int, default=0, help="global seed (each process adds its rank)")
    group.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    group.add_argument("--results-dir", default="results", help="parent folder of the numbered run folders")
    group.add_argument("--resume", help="'latest' (newest run of this model and data) or a run/checkpoint folder")
    group.add_argument("--keep-checkpoints", type=positive_int, default=keep_checkpoints, help="newest checkpoints to keep")
    group.add_argument("--report-to", default="tensorboard", choices=REPORT_TO,
                       help="tracker of the loss curves (accelerate's): all = every one installed, none = the run "
                            "folder's log only (default: tensorboard)")
    group.add_argument("--push-to-hub", metavar="REPO_ID",
                       help=f"upload the final {artifact} (with its model card) to this Hub repository")


def add_subset_arguments(group) -> None:
    """``--train-size`` and ``--subset-seed``: train on a class-balanced subset (``sdt_gen.data.BalancedSubset``)."""
    group.add_argument("--train-size", type=positive_int, help="train on a class-balanced subset of N items of the "
                       "training data (N // classes a class), drawn with --subset-seed; default: all of it")
    group.add_argument("--subset-seed", type=non_negative_int, default=0, help="seed of --train-size's subset, apart "
                       "from --seed: runs with other seeds train on the same items")


def add_sampling_arguments(group, guidance_scale: float, scheduler_names: Sequence[str], scheduler_default: str) -> None:
    """What ``sample.py`` and ``eval_fid.py`` take about sampling a pipeline.

    Args:
        group: the parser or argument group to add to.
        guidance_scale: the default guidance.
        scheduler_names: the ``--scheduler`` choices (``sdt_gen.pipelines.SCHEDULERS``).
        scheduler_default: what the default (the saved scheduler) is, for the help text.
    """
    group.add_argument("--guidance-scale", type=non_negative_float, default=guidance_scale,
                       help="classifier-free guidance (1: none)")
    group.add_argument("--guided-channels", type=positive_int, default=None,
                       help="guide only the first k channels (3: DiT's original protocol); default all")
    group.add_argument("--guidance-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                       help="guide only at noise levels in [LO, HI] (0: clean, 1: pure noise; DDPM timestep t is t/1000, "
                            "a flow time sigma is sigma); default 0 1, every step")
    group.add_argument("--steps", type=positive_int, default=250, help="denoising steps")
    group.add_argument("--scheduler", choices=sorted(scheduler_names),
                       help=f"sampler built from the saved scheduler's config; default: {scheduler_default}")
    group.add_argument("--flow-shift", type=float, default=None,
                       help="flow models: the schedulers' time shift (diffusers' shift; 1: none); default: the saved one")
    group.add_argument("--batch-size", type=positive_int, default=32, help="images denoised at once (per process)")
    group.add_argument("--dtype", default="float32", choices=DTYPES, help="the pipeline's weights and activations")
    group.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS,
                       help="auto = flex on CUDA, sdpa elsewhere; eager: explicit softmax (slowest)")


def busy_cpu_warning(device: torch.device, processes: int = 1) -> str | None:
    """One line when torch would start more CPU threads than the machine has free, else ``None``; changes nothing.

    Threads that outnumber the free cores wait on each other: beside one other single-threaded job on 2 cores, the
    quick start trained 1.17 steps/s at torch's default 2 threads and 1.76 at one thread. Free cores are the cores
    this process may use less the 1-minute load average (which includes this process's own start, about 1 at
    most). Nothing to say when the work runs on a GPU, or when ``OMP_NUM_THREADS`` was set by the user.

    Args:
        device: where the work runs.
        processes: processes of this run on this machine, each starting torch's threads.
    """
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = torch.get_num_threads() * processes
    others = max(os.getloadavg()[0] - processes, 0.0)  # the load of other jobs, less this run's own start
    free = cores - others
    if threads <= 1 or threads <= free + 0.5:
        return None
    script = os.path.basename(sys.argv[0]) or "script.py"
    return (
        f"the CPU is busy (load {others:.1f} from other jobs on {cores} cores) and torch starts {threads} threads, "
        f"which will wait on each other; give each job one thread, which trained 1.5x faster beside another job: "
        f"OMP_NUM_THREADS=1 python {script} ..."
    )


def warn_if_cpu_busy(device: torch.device, processes: int = 1) -> None:
    """Prints ``busy_cpu_warning`` to stderr when it has something to say."""
    line = busy_cpu_warning(device, processes)
    if line is not None:
        print(f"warning: {line}", file=sys.stderr)


def run_main(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None) -> Any:
    """Parse ``argv`` and call ``main``; a user error ends the process with ``error: <message>`` and status 2."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    try:
        return main(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


__all__ = [
    "USER_ERRORS",
    "OptionRecordingParser",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "busy_cpu_warning",
    "run_main",
    "warn_if_cpu_busy",
]
