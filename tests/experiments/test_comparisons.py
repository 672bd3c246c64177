"""experiments/objective_comparison.py and experiments/guidance_interval.py: their rows, published with provenance."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import perturbed
from sdt_gen import SDTConfig, SDTForImageClassification, SDTPipeline, SDTTransformer2DModel, save_classifier
from sdt_gen.pipelines import flow_scheduler
from sdt_gen.tables import main as tables_main

ROOT = Path(__file__).resolve().parents[2]
RECORD = {"command", "commit", "dirty", "versions", "threads", "cpu", "started", "finished", "wall_seconds",
          "cpu_seconds"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A DDPM and a flow pipeline of 32x32 one-channel digits and a classifier, all random and tiny, saved."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    paths = {}
    for objective in ("ddpm", "flow"):
        transformer = SDTTransformer2DModel(
            sample_size=32, patch_size=8, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10,
            objective=objective, learn_sigma=objective == "ddpm",
        )
        perturbed(transformer)  # a fresh adaLN-Zero model outputs zeros
        scheduler = flow_scheduler() if objective == "flow" else SDTPipeline.dit_scheduler()
        pipe = SDTPipeline(transformer.eval(), scheduler, None, id2label={i: str(i) for i in range(10)})
        pipe.save_pretrained(folder / objective)
        paths[objective] = folder / objective
    config = SDTConfig.from_preset("SDT-H-XT", num_labels=10, id2label={i: str(i) for i in range(10)}, image_size=32,
                                   num_channels=1, decay_mode="none")
    paths["classifier"] = save_classifier(SDTForImageClassification(config).eval(), folder / "classifier")
    return paths


@pytest.mark.parametrize("script, table, flags", [
    ("objective_comparison.py", "objective-comparison", ["--steps", "2", "--num-samples", "10", "--image-size", "32"]),
    ("guidance_interval.py", "guidance-interval-digits", ["--steps", "2", "--num-samples", "10", "--guidance-scales", "2", "--intervals", "0,0.7",
                              "--image-size", "32"]),
])
def test_the_published_table_carries_its_provenance_and_renders(script, table, flags, models, tmp_path):
    out = tmp_path / "measurements"
    argv = [ROOT / "experiments" / script, "--ddpm", models["ddpm"], "--flow", models["flow"],
            "--classifier", models["classifier"], *flags, "--out", out]
    done = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    published = json.loads((out / f"{table}.json").read_text())
    assert RECORD <= set(published["provenance"]) and published["provenance"]["command"].startswith("python ")
    assert script in published["provenance"]["command"] and published["provenance"]["versions"]["torch"]
    assert published["rows"] and all({"objective", "fd", "accuracy"} <= set(row) for row in published["rows"])
    doc = tmp_path / "measurements.md"
    doc.write_text(f"<!-- table: {table} -->\n<!-- end table -->\n")
    assert tables_main([str(doc)]) == 0
    assert "| ddpm |" in doc.read_text() and f"Measured by `python {ROOT / 'experiments' / script}" in doc.read_text()
