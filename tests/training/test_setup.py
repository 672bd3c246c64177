"""The accelerator of the training scripts: the launch configuration decides unless a flag says otherwise."""

import pytest
from accelerate.state import AcceleratorState

import train_classifier
import train_dit
from sdt_gen.training import create_accelerator


@pytest.fixture
def fresh_accelerate_state():
    # accelerate keeps its state in a process-wide singleton, which would keep the first test's precision.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("script", [train_dit, train_classifier])
@pytest.mark.parametrize(
    "launch_config, flags, expected",
    [
        ("bf16", [], "bf16"),  # `accelerate launch` with a bf16 config sets ACCELERATE_MIXED_PRECISION
        ("bf16", ["--mixed-precision", "no"], "no"),  # the flag still overrides it
        (None, [], "no"),  # plain `python script.py`
        (None, ["--mixed-precision", "bf16"], "bf16"),
    ],
)
def test_mixed_precision_comes_from_the_launch_configuration(
    script, launch_config, flags, expected, monkeypatch, fresh_accelerate_state
):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    if launch_config is not None:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launch_config)
    args = script.build_parser().parse_args(flags)
    assert create_accelerator(args.mixed_precision, cpu=True).mixed_precision == expected
