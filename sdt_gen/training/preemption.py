"""Preemption: SIGTERM or SIGINT ends a run cleanly after the current step, with a checkpoint to resume from.

Cluster schedulers (SLURM, spot instances) send SIGTERM some time before they kill a job. The
handler only records the signal; the training loop asks ``stop_requested`` after each step,
saves a checkpoint and exits with ``PREEMPTED_EXIT_CODE``. A second signal exits at once: the
checkpoint being written is a temporary folder, so the previous ones stay intact.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import torch

from .checkpoint import save_checkpoint

if TYPE_CHECKING:
    from accelerate import Accelerator

PREEMPTED_EXIT_CODE = 75
"""Exit status of a preempted run (BSD's EX_TEMPFAIL, "try again later"): resume it with ``--resume latest``."""
# A launcher relays the scheduler's signal to processes that got it already (torchrun does):
# a repeat this soon after the first is the same request, not a second one.
_RELAY_WINDOW_S = 1.0


class PreemptionHandler:
    """Records SIGTERM / SIGINT while training runs; use as a context manager around the loop.

    Args:
        signals: the signals that request a stop.

    Example:
        >>> with PreemptionHandler() as preemption:
        ...     for batch in loader:
        ...         ...  # one training step
        ...         if preemption.stop_requested(accelerator):
        ...             preemption.checkpoint_and_exit(accelerator, run_dir, state.step, logger)
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: signal.Signals | None = None
        self._received_at = 0.0
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> PreemptionHandler:
        if threading.current_thread() is threading.main_thread():  # Python installs handlers there only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received, self._received_at = signal.Signals(signum), time.monotonic()
        elif time.monotonic() - self._received_at > _RELAY_WINDOW_S:
            os._exit(128 + signum)  # the second request: stop now, leaving only a temporary folder behind

    def stop_requested(self, accelerator: Accelerator) -> bool:
        """Whether any process got a signal; all processes get the same answer (a collective when there are several)."""
        if accelerator.num_processes == 1:
            return self.received is not None
        flag = torch.tensor([float(self.received is not None)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def checkpoint_and_exit(
        self,
        accelerator: Accelerator,
        run_dir: str | os.PathLike,
        step: int,
        logger: logging.Logger,
        keep_last: int | None = None,
        saved: Path | None = None,
    ) -> NoReturn:
        """Save a checkpoint of ``step`` (unless ``saved`` is it), say where, and exit with ``PREEMPTED_EXIT_CODE``.

        Call it on every process, after ``stop_requested`` said yes on all of them.
        """
        folder = saved or save_checkpoint(accelerator, run_dir, step, keep_last=keep_last)
        accelerator.end_training()
        logger.info(f"step {step:07d}: stopped by a signal; checkpoint {folder}, continue with --resume latest "
                    f"(exit status {PREEMPTED_EXIT_CODE})")
        raise SystemExit(PREEMPTED_EXIT_CODE)


__all__ = ["PREEMPTED_EXIT_CODE", "PreemptionHandler"]
