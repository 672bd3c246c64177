"""The training scripts' setup: the accelerator the launch configuration decides, and the batch each process takes."""

import pytest
from accelerate.state import AcceleratorState

import train_classifier
import train_dit
from sdt_gen.training import batch_per_process, create_accelerator


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


@pytest.mark.parametrize("processes, accumulation, expected", [(1, 1, 12), (2, 1, 6), (2, 3, 2), (4, 3, 1)])
def test_the_batch_is_shared_out_over_processes_and_accumulation(processes, accumulation, expected):
    assert batch_per_process(12, "--global-batch-size", processes, accumulation) == expected


@pytest.mark.parametrize("batch, processes, accumulation", [(7, 2, 1), (12, 8, 1), (12, 2, 4), (2, 4, 1)])
def test_a_batch_that_does_not_divide_is_refused_by_flag_and_value(batch, processes, accumulation):
    # A floored share would silently train on a smaller batch than the one the learning rate was chosen for.
    with pytest.raises(ValueError, match=f"--batch-size {batch} is not divisible by {processes} processes x "
                                         f"{accumulation} accumulation steps"):
        batch_per_process(batch, "--batch-size", processes, accumulation)
