"""Run folders, config and logging."""

import argparse
import json
from pathlib import Path

import pytest

from sdt_gen.training import create_logger, create_run_dir, latest_run_dir, save_config


def test_run_dirs_are_numbered(tmp_path):
    results = tmp_path / "results"
    first = create_run_dir(results, "SDT-S/2", "digits")
    assert first == results / "000-SDT-S-2-digits"
    assert (first / "checkpoints").is_dir() and (first / "samples").is_dir()
    second = create_run_dir(results, "SDT-XL/2", "imagenet256")
    assert second.name == "001-SDT-XL-2-imagenet256"
    (results / "007-old-run").mkdir()  # numbering continues after the highest, gaps or not
    (results / "notes.txt").write_text("not a run")
    assert create_run_dir(results, "SDT-S/2", "digits").name == "008-SDT-S-2-digits"

    assert latest_run_dir(results, "SDT-S/2", "digits").name == "008-SDT-S-2-digits"
    assert latest_run_dir(results, "SDT-XL/2", "imagenet256") == second
    assert latest_run_dir(results, "SDT-B/2", "digits") is None
    assert latest_run_dir(tmp_path / "nowhere", "SDT-S/2", "digits") is None


def test_save_config(tmp_path):
    args = argparse.Namespace(model="SDT-S/2", lr=1e-4, data_path=Path("/data/x"), resume=None)
    path = save_config(tmp_path, args)
    assert json.loads(path.read_text()) == {"model": "SDT-S/2", "lr": 1e-4, "data_path": "/data/x", "resume": None}
    with pytest.raises(TypeError, match="got list"):
        save_config(tmp_path, [1, 2])


def test_logger_writes_file_and_stdout_on_main_only(tmp_path, capsys):
    logger = create_logger(tmp_path, is_main_process=True, name="sdt_gen.test")
    logger.info("step 1 loss 0.5")
    logger = create_logger(tmp_path, is_main_process=True, name="sdt_gen.test")  # no duplicated handlers
    logger.info("step 2 loss 0.4")
    out = capsys.readouterr().out
    assert out.count("step 1 loss 0.5") == 1 and out.count("step 2 loss 0.4") == 1
    assert "step 2 loss 0.4" in (tmp_path / "log.txt").read_text()

    silent = create_logger(tmp_path / "other", is_main_process=False, name="sdt_gen.test.worker")
    silent.info("from another process")
    assert "from another process" not in capsys.readouterr().out
    assert not (tmp_path / "other" / "log.txt").exists()
