"""Hub repo ids read from a Hugging Face cache laid out by hand, with HF_HUB_OFFLINE=1; no test touches the network."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import cache_in_hub

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """HF_HOME whose hub cache holds ``me/tiny-sdt`` (a pixel pipeline) as huggingface_hub lays it out."""
    import torch

    from sdt_gen import SDTPipeline, SDTTransformer2DModel

    home = tmp_path_factory.mktemp("hf_home")
    torch.manual_seed(0)
    transformer = SDTTransformer2DModel(sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1,
                                        num_heads=2, num_classes=10, attention_backend="sdpa")
    pipe = SDTPipeline(transformer=transformer, scheduler=SDTPipeline.dit_scheduler(), vae=None,
                       id2label={i: f"class {i}" for i in range(10)})
    saved = tmp_path_factory.mktemp("saved") / "pipe"
    pipe.save_pretrained(saved)
    cache_in_hub(saved, home, "me/tiny-sdt", COMMIT)
    return home


def run(code_or_argv, hf_home, cwd):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    argv = ["-c", textwrap.dedent(code_or_argv)] if isinstance(code_or_argv, str) else list(map(str, code_or_argv))
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_repo_id_loads_from_the_cache_offline(hf_home, tmp_path):
    result = run("""
        from sdt_gen import SDTPipeline
        pipe = SDTPipeline.from_pretrained("me/tiny-sdt")
        print(type(pipe).__name__, pipe.id2label[3])
        """, hf_home, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "SDTPipeline class 3"


def test_sample_and_eval_fid_take_a_repo_id(hf_home, tmp_path):
    result = run([ROOT / "sample.py", "--model", "me/tiny-sdt", "--classes", "3", "--steps", 1,
                  "--out-dir", tmp_path / "samples"], hf_home, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "samples").glob("*.png")] == ["000000_3_class_3.png"]
    result = run([ROOT / "eval_fid.py", "--model", "me/tiny-sdt", "--num-samples", 2, "--steps", 1,
                  "--metrics", "--out", tmp_path / "eval", "--device", "cpu"], hf_home, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "eval" / "samples").glob("*.png"))) == 2


def test_an_uncached_id_offline_is_one_clear_line(hf_home, tmp_path):
    result = run([ROOT / "sample.py", "--model", "me/not-cached", "--classes", "3"], hf_home, tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: 'me/not-cached' is not a local folder")
    assert "HF_HUB_OFFLINE is set" in result.stderr and "`hf download me/not-cached`" in result.stderr
