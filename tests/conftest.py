"""Fixtures for every test module."""

import logging

import pytest


@pytest.fixture(autouse=True, scope="module")
def restore_run_logger():
    """Training scripts point the ``sdt_gen`` logger at their run folder and stop its propagation (see
    ``create_logger``); later modules must find it as it was, so that ``caplog`` sees library warnings."""
    logger = logging.getLogger("sdt_gen")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:], logger.propagate, logger.level = saved


def pytest_configure(config):
    """Scripts the tests start as subprocesses get the thread count of this process, set explicitly, so that the
    one-line warning about a busy CPU (``sdt_gen.cli.busy_cpu_warning``, which an explicit count silences) never
    lands in the output a test reads; the warning's own test clears the variable."""
    import os

    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
