"""sdt_gen.studies.protocol: arms, their comparisons and the recipe the protocol records."""

import sys
from pathlib import Path

import pytest

from sdt_gen.studies.protocol import arm_name, comparisons, parse_arm
from sdt_gen.training import recipes


@pytest.mark.parametrize(
    "arm, settings",
    [("none", ("sincos", "none")), ("cag", ("sincos", "cag")), ("rope", ("rope", "none")),
     ("rope+cag", ("rope", "cag")), ("sincos+rope+fixed", ("sincos+rope", "fixed")), ("sincos+rope", ("sincos+rope", "none"))],
)
def test_arms_parse(arm, settings):
    assert parse_arm(arm) == {"position_embedding": settings[0], "decay_mode": settings[1]}
    assert arm_name(*settings) == arm


def test_each_decayed_arm_is_compared_with_its_positions_without_decay_first():
    assert comparisons(["none", "cag", "rope", "rope+cag"]) == [
        ("cag", "none", True), ("rope", "none", False), ("rope+cag", "rope", True), ("rope+cag", "none", False)]


def test_the_recorded_recipe_is_the_one_train_dit_trains_with():
    """The protocol records ``sdt_gen.training.recipes``; train_dit.py must train with the same defaults."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import train_dit

    assert (train_dit.MNIST_DEFAULTS, train_dit.IMAGENET_DEFAULTS) == (recipes.MNIST_DEFAULTS, recipes.IMAGENET_DEFAULTS)
