"""benchmarks/plan_run.py: FLOPs counted on the meta device against DiT's published table, and the memory plan."""

import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import plan_run  # noqa: E402


@pytest.mark.parametrize("preset, published", sorted(plan_run.DIT_TABLE4_GMACS.items()))
def test_decay_none_presets_count_dits_table_4_flops(preset, published):
    gmacs = plan_run.count_flops(preset, "none", 256)["forward"] / 2e9
    # within 0.1%, or the table's rounding to two decimals
    assert gmacs == pytest.approx(published, rel=1e-3, abs=0.005)


def test_cag_adds_a_tenth_of_a_percent_and_training_is_three_forwards():
    cag, none = (plan_run.count_flops("SDT-S/2", mode, 256) for mode in ("cag", "none"))
    assert 0 < 1 - none["forward"] / cag["forward"] < 0.003
    assert 2.9 < cag["train_step"] / cag["forward"] < 3.1  # backward: two matmuls per forward matmul


def test_the_memory_plan_shards_state_under_fsdp_and_checkpointing_saves_activations(capsys):
    args = Namespace(model=["SDT-S/2"], decay_mode=["cag"], image_size=256, batch=64, steps=1000, gpus=4, gpu="a100",
                     mfu=0.5, out=None)
    numbers = plan_run.plan("SDT-S/2", "cag", args)
    params = numbers["params"]
    assert numbers["state_bytes"] == {"parameters": 4 * params, "gradients": 4 * params, "AdamW": 8 * params,
                                      "EMA": 4 * params}
    activations = numbers["activation_bytes"]
    assert 0 < activations["checkpointed"] < activations["full"] / 3
    assert numbers["per_gpu_batch"] == 16
    state = sum(numbers["state_bytes"].values())
    assert numbers["memory_per_gpu"] == {
        "DDP": {kind: state + held for kind, held in activations.items()},
        "FSDP": {kind: state / 4 + held for kind, held in activations.items()},
    }
    hours = numbers["total_flops"] / (4 * 312e12 * 0.5) / 3600
    assert numbers["hours"] == pytest.approx(hours) and numbers["gpu_hours"] == pytest.approx(4 * hours)
    plan_run.main(args)
    printed = capsys.readouterr().out
    assert "DiT's Table 4: 6.06 GMACs" in printed and "memory per GPU, FSDP" in printed


def test_out_writes_the_printed_comparison_one_row_per_model_and_decay_mode(publish):
    _, tables = publish("plan_run.py", "--model", "SDT-S/2", "--decay-mode", "none", "cag")
    assert list(tables) == ["plan-run"]  # the item-by-item table is for one plan
    rows = tables["plan-run"].rows
    assert [row["model"] for row in rows] == ["DiT-S/2 (SDT-S/2 `none`)", "SDT-S/2 `cag`"]
    assert rows[0]["forward"] == f"{rows[0]['forward_gmacs']:.2f} (DiT: 6.06)" and rows[0]["decay_share"] == 0
    assert rows[1]["forward"] == f"{rows[1]['forward_gmacs']:.2f}" and rows[1]["decay_share"] > 0
    assert rows[1]["DDP"] == f"{rows[1]['DDP_full_gib']:.1f} ({rows[1]['DDP_checkpointed_gib']:.1f})"


def test_one_plan_also_publishes_its_items(publish):
    printed, tables = publish("plan_run.py", "--model", "SDT-S/2", "--decay-mode", "cag")
    assert sorted(tables) == ["plan-run", "plan-run-details"]
    assert "| forward, one image | 6.06 GMACs = 12.13 GFLOPs (DiT's Table 4: 6.06 GMACs) |" in printed
