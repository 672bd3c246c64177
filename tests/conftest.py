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
