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


def test_a_checkpoint_resumes_only_under_the_sharding_that_wrote_it(tmp_path):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from sdt_gen.training import check_checkpoint_sharding

    sharded, plain = tmp_path / "sharded", tmp_path / "plain"
    (sharded / "pytorch_model_fsdp_0").mkdir(parents=True)
    plain.mkdir()
    fsdp, ddp = (SimpleNamespace(distributed_type=kind) for kind in (DistributedType.FSDP, DistributedType.MULTI_CPU))
    check_checkpoint_sharding(fsdp, sharded)
    check_checkpoint_sharding(ddp, plain)
    with pytest.raises(ValueError, match=r"was written sharded \(FSDP\), and this launch runs MULTI_CPU: resume it"):
        check_checkpoint_sharding(ddp, sharded)
    with pytest.raises(ValueError, match=r"was written unsharded .*, and this launch runs FSDP"):
        check_checkpoint_sharding(fsdp, plain)


def test_asking_for_fsdp_on_cpu_warns_that_it_runs_unsharded(monkeypatch, fresh_accelerate_state):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.warns(RuntimeWarning, match="asks for FSDP, but accelerate shards on GPUs only: this runs NO on cpu"):
        create_accelerator("no", cpu=True)
