"""sdt_gen.studies.equal_time: arms at a CPU-time budget every run reached, and at equal compute by cost ratios."""

import json

import pytest

from sdt_gen.studies.equal_time import clock_reading, cost_reading, equal_time, read_costs, reading_at

STEPS = [800, 1600, 2400]
PAIRS = [("cag", "none", True)]


def run(arm: str, seed: int, minutes: list[float], fd: list[float]) -> dict:
    return {"arm": arm, "seed": seed, "times": {"cpu": [60 * m for m in minutes]},
            "training_cpu_seconds": 60 * minutes[-1], "evals": {str(s): {"fd": v} for s, v in zip(STEPS, fd)}}


def study() -> dict:
    """none-s1 ends early (20 min); cag's runs are slower per step and better at the end."""
    return {
        "none-s0": run("none", 0, [10, 20, 30], [40, 30, 24]),
        "none-s1": run("none", 1, [7, 14, 20], [42, 32, 26]),
        "cag-s0": run("cag", 0, [14, 28, 42], [38, 26, 20]),
        "cag-s1": run("cag", 1, [13, 26, 39], [39, 27, 21]),
    }


def test_values_are_interpolated_inside_the_record_and_never_beyond():
    assert reading_at([10, 20, 30], [40, 30, 24], 15) == 35
    assert reading_at([10, 20, 30], [40, 30, 24], 30) == 24
    assert reading_at([10, 20, 30], [40, 30, 24], 31) is None and reading_at([10, 20, 30], [40, 30, 24], 9) is None


def test_the_default_budget_is_the_earliest_end_which_every_run_reached():
    reading = clock_reading(study(), ["none", "cag"], STEPS, PAIRS)
    assert reading["cpu_seconds"] == 20 * 60 and reading["earliest_end"] == "none-s1" and not reading["given"]
    assert reading["flagged"] == {}
    assert reading["fd"]["none"]["mean"] == pytest.approx((30 + 26) / 2)
    assert reading["paired"]["cag - none"]["n"] == 2


def test_a_run_whose_record_ends_before_the_budget_is_flagged_never_held_flat():
    reading = clock_reading(study(), ["none", "cag"], STEPS, PAIRS, budget=25 * 60)
    assert reading["flagged"] == {"none-s1": "record ends at 20.0 min, before the budget"}
    # none is read from none-s0 alone, and cag - none pairs seed 0 only: none-s1's last FD (26) is not used.
    assert reading["fd"]["none"]["n"] == 1 and reading["fd"]["none"]["mean"] == pytest.approx(27.0)
    assert reading["paired"]["cag - none"]["n"] == 1
    early = clock_reading(study(), ["none", "cag"], STEPS, PAIRS, budget=8 * 60)
    assert set(early["flagged"]) == {"none-s0", "cag-s0", "cag-s1"} and early["fd"]["cag"] is None
    assert "first evaluation at 10.0 min, after the budget" == early["flagged"]["none-s0"]


def test_equal_compute_by_cost_ratios_reads_the_dearer_arm_earlier():
    reading = cost_reading(study(), ["none", "cag"], STEPS, PAIRS, {"none": 1.0, "cag": 1.5})
    assert reading["ratios"] == {"none": 1.0, "cag": 1.5} and reading["steps"] == {"none": 2400, "cag": 1600}
    assert reading["fd"]["cag"]["mean"] == pytest.approx(26.5) and reading["fd"]["none"]["mean"] == pytest.approx(25)
    far = cost_reading(study(), ["none", "cag"], STEPS, PAIRS, {"none": 1.0, "cag": 4.0})  # cag at step 600
    assert set(far["flagged"]) == {"cag-s0", "cag-s1"} and far["fd"]["cag"] is None
    assert far["paired"]["cag - none"] is None


def test_both_readings_and_how_far_apart_the_costs_are():
    result = equal_time(study(), ["none", "cag"], STEPS, PAIRS, {"values": {"none": 0.9, "cag": 1.35}, "source": "x"})
    recorded = result["recorded_ratios"]["cag"]
    assert recorded["mean"] == pytest.approx(40.5 / 25) and recorded["low"] == pytest.approx(39 / 25)
    assert result["cost"]["source"] == "x" and result["cost"]["ratios"]["cag"] == pytest.approx(1.5)
    assert equal_time(study(), ["none", "cag"], STEPS, PAIRS)["cost"] is None


def test_costs_from_the_command_line_or_a_json_file(tmp_path):
    assert read_costs(["none=0.94", "cag=1.284"])["values"] == {"none": 0.94, "cag": 1.284}
    (tmp_path / "costs.json").write_text('{"none": 1, "cag": 1.37}')
    assert read_costs([str(tmp_path / "costs.json")]) == {"values": {"none": 1.0, "cag": 1.37},
                                                           "source": str(tmp_path / "costs.json")}
    table = {"name": "arms", "rows": [{"arm": "none", "seconds": 0.94, "ratio": 1.0}, {"arm": "cag", "seconds": 1.284}]}
    (tmp_path / "table.json").write_text(json.dumps(table))
    assert read_costs([str(tmp_path / "table.json")])["values"] == {"none": 0.94, "cag": 1.284}
    for bad in (["none"], ["none=x"], ["none=0"], [str(tmp_path / "absent.json")]):
        with pytest.raises(ValueError):
            read_costs(bad)
