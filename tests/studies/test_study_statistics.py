"""sdt_gen.studies.statistics: runs paired by seed, and the primary and secondary Holm families."""

import pytest

from sdt_gen.metrics import holm, paired_difference
from sdt_gen.studies.protocol import comparisons
from sdt_gen.studies.statistics import paired_by_seed, statistics

STEPS = [800, 1600, 2400]


def runs_of(fd: dict[str, list[float]]) -> dict:
    """One run per arm and seed; FD ``fd[arm][seed]`` at every point (plus 1 per earlier point)."""
    return {f"{arm}-s{seed}": {"arm": arm, "seed": seed, "evals": {
        str(step): {"fd": value + (2 - i), "accuracy": 0.9} for i, step in enumerate(STEPS)}}
        for arm, values in fd.items() for seed, value in enumerate(values)}


def test_pairs_are_matched_by_seed_not_by_order():
    runs = runs_of({"none": [20, 22, 21], "cag": [18, 21, 19]})
    shuffled = dict(reversed(list(runs.items())))
    d = paired_by_seed(shuffled, "cag", "none", lambda r: r["evals"]["2400"]["fd"])
    assert d == paired_difference([18, 21, 19], [20, 22, 21])
    missing = {k: v for k, v in runs.items() if k != "none-s1"}
    assert paired_by_seed(missing, "cag", "none", lambda r: r["evals"]["2400"]["fd"])["n"] == 2
    assert paired_by_seed(runs, "cag", "rope", lambda r: 0.0) is None


def test_primary_comparisons_are_one_holm_family_and_the_rest_another():
    arms = ["none", "cag", "rope", "rope+cag"]
    runs = runs_of({"none": [20, 22, 21], "cag": [18, 21, 19], "rope": [12, 13, 11], "rope+cag": [11, 13, 9]})
    result = statistics(runs, arms, STEPS, comparisons(arms))
    assert result["primary"] == ["cag - none", "rope+cag - rope"]
    p = [result["paired"][c]["fd_last2"]["p"] for c in result["primary"]]
    assert [result["paired"][c]["fd_last2"]["p_holm"] for c in result["primary"]] == pytest.approx(holm(p))
    secondary = [result["paired"][c][k] for c in result["paired"] for k in ("fd", "accuracy")]
    secondary += [result["paired"][c]["fd_last2"] for c in ("rope - none", "rope+cag - none")]
    assert [d["p_holm"] for d in secondary] == pytest.approx(holm([d["p"] for d in secondary]), nan_ok=True)
    assert result["summary"]["cag"]["fd"]["mean"] == pytest.approx(58 / 3)


def test_a_study_without_a_primary_metric_has_only_secondary_tests():
    runs = runs_of({"none": [20, 22, 21], "cag": [18, 21, 19]})
    result = statistics(runs, ["none", "cag"], STEPS, [("cag", "none", False)])
    assert result["primary"] == [] and "p_holm" in result["paired"]["cag - none"]["fd_last2"]
