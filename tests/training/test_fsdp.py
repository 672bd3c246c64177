"""FSDP2 training as ``configs/accelerate/fsdp.yaml`` sets it up, on 2 CPU processes (gloo), against DDP.

Every run is ``accelerate launch`` of this file (``__main__`` below): DDP as the README's CPU line
(``--multi_gpu``, ``cpu=True``), FSDP2 with the config file itself (its bf16 and 8 processes overridden).
Both train the tiny model with train_dit's own step, EMA, checkpoint and export, on the same data and seeds.

accelerate 1.16 selects FSDP only on GPU-like devices: on CPU processes it builds the plugin from the
config's ``FSDP_*`` variables, then drops it (``AcceleratorState``) and the run is silently DDP.
``select_fsdp_on_cpu`` keeps it; from there on it is accelerate's own FSDP2 code: ``fully_shard`` per
``SDTBlock`` and on the root, the DTensor-aware ``clip_grad_norm_``, sharded DCP ``save_state`` /
``load_state`` and ``get_state_dict``.
"""

import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # five 2-process launches: 50-80 s on 2 CPU cores

ROOT = Path(__file__).resolve().parents[2]
FSDP_CONFIG = ["--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml")]
DDP = ["--multi_gpu"]  # with cpu=True: gloo and DDP, as the README's CPU line
STEPS, CHECKPOINT_AT, BATCH = 4, 2, 8  # optimizer steps; the checkpoint a resume starts from; images per step


def tiny_model():
    from sdt_gen import SDTTransformer2DModel

    return SDTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10,
        decay_mode="cag", objective="flow", learn_sigma=False, attention_backend="sdpa",
    )


def batch(step, rank, world_size=2):
    """Process ``rank``'s part of step ``step``'s global batch: the same images in every run and resume."""
    generator = torch.Generator().manual_seed(step)
    x, y = torch.randn(BATCH, 1, 8, 8, generator=generator), torch.randint(0, 10, (BATCH,), generator=generator)
    return x[rank::world_size], y[rank::world_size]


def select_fsdp_on_cpu():
    """Make accelerate keep the FSDP plugin on CPU processes, as it does on GPUs (for this process)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.fsdp_plugin = fsdp_plugin
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = __init__


def train(out: Path, resume: str | None) -> None:
    """train_dit's loop on the tiny model: to ``STEPS``, a checkpoint at ``CHECKPOINT_AT``, then the outputs."""
    from argparse import Namespace

    import train_dit
    from sdt_gen.diffusion import make_objective
    from sdt_gen.training import DiTEMA, TrainState, create_accelerator, save_checkpoint, sync_initial_weights

    accelerator = create_accelerator("no", cpu=True, seed=0)
    # Drawn after create_accelerator's per-process seed, as train_dit does: only DDP would make it one model.
    model = sync_initial_weights(tiny_model(), accelerator.device)
    ema = DiTEMA(model.parameters(), decay=0.5)  # a short memory: a few steps move it far from the start
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.is_fsdp2:  # the config's units, one per SDTBlock and the root; every parameter a shard
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import Shard

        assert all(isinstance(module, FSDPModule) for module in [model, *model.blocks])
        assert all(p.placements == (Shard(0),) for p in model.parameters())
    else:  # the baseline
        assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    state = TrainState()
    accelerator.register_for_checkpointing(ema, state)
    if resume:
        accelerator.load_state(resume)
    loss_fn, args = make_objective("flow", learn_sigma=False), Namespace(max_grad_norm=1.0)
    while state.step < STEPS:
        x, y = batch(state.step, accelerator.process_index)
        train_dit.train_step(args, accelerator, model, optimizer, loss_fn, x, y)
        state.step += 1
        ema.step(accelerator.unwrap_model(model).parameters())  # DiTEMA gathers FSDP2's shards
        if state.step == CHECKPOINT_AT and not resume:
            save_checkpoint(accelerator, out, state.step)
    weights = accelerator.get_state_dict(model)  # the full weights, gathered on the main process
    torch.save(ema.shadow_params, out / f"ema-{accelerator.process_index}.pt")
    if accelerator.is_main_process:  # train_dit exports on the main process only: no collective allowed
        torch.save(weights, out / "weights.pt")
        train_dit.build_pipeline(accelerator.unwrap_model(model), ema, None, {}).save_pretrained(out / "pipeline")
    accelerator.wait_for_everyone()  # as train_dit's finish: no process leaves the group while another works
    accelerator.end_training()


def launch(launch_args, *script_args):
    """``accelerate launch`` of this file on 2 CPU processes with ``script_args``."""
    with socket.socket() as s:  # a free port: other launches may run at the same time
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
           __file__, *map(str, script_args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The DDP run, the FSDP run (which checkpoints at ``CHECKPOINT_AT``) and the FSDP run resumed from that."""
    out = {name: tmp_path_factory.mktemp(name) for name in ("ddp", "fsdp", "resumed")}
    out["checkpoint"] = out["fsdp"] / "checkpoints" / f"step-{CHECKPOINT_AT:07d}"
    launch(DDP, out["ddp"])
    launch(FSDP_CONFIG, out["fsdp"])
    launch(FSDP_CONFIG, out["resumed"], out["checkpoint"])
    return out


def max_difference(a, b) -> float:
    """The largest absolute difference of two state dicts (or lists) of the same tensors."""
    a, b = (dict(enumerate(x)) if isinstance(x, list) else x for x in (a, b))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_sharded_training_equals_ddp(runs):
    ddp, fsdp = (torch.load(runs[run] / "weights.pt") for run in ("ddp", "fsdp"))
    assert max_difference(fsdp, ddp) < 1e-5


def test_sharded_checkpoint_resumes_exactly(runs):
    shards = sorted(p.name for p in (runs["checkpoint"] / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # each process wrote its own (SHARDED_STATE_DICT)
    straight, resumed = (torch.load(runs[run] / "weights.pt") for run in ("fsdp", "resumed"))
    assert max_difference(resumed, straight) == 0
    assert max_difference(*(torch.load(runs[run] / "ema-0.pt") for run in ("fsdp", "resumed"))) == 0


def test_ema_tracks_the_full_weights_on_every_process(runs):
    ddp = torch.load(runs["ddp"] / "ema-0.pt")
    for rank in (0, 1):
        ema = torch.load(runs["fsdp"] / f"ema-{rank}.pt")
        assert all(type(shadow) is torch.Tensor for shadow in ema)  # not DTensors, not local shards
        assert [shadow.shape for shadow in ema] == [p.shape for p in tiny_model().parameters()]
        assert max_difference(ema, ddp) < 1e-5


def test_exported_pipeline_holds_the_full_ema_weights_of_ddp(runs):
    ddp, fsdp = (load_file(runs[run] / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
                 for run in ("ddp", "fsdp"))
    assert max_difference(fsdp, ddp) < 1e-5
    names = [name for name, _ in tiny_model().named_parameters()]
    assert max_difference({n: fsdp[n] for n in names}, dict(zip(names, torch.load(runs["fsdp"] / "ema-0.pt")))) == 0


# train_dit.py itself under the FSDP config. Before DiTEMA gathered the shards and train_dit synchronised the initial
# weights, this failed: "aten.sub.Tensor got mixed torch.Tensor and DTensor" at the first EMA step, and each process
# kept a shard of its own random start (0.66 from DDP's weights).
def test_train_dit_under_the_fsdp_config_exports_what_ddp_does(tmp_path):
    flags = ["--cpu", "--max-steps", "2", "--global-batch-size", "8", "--ckpt-every", "2", "--sample-steps", "2",
             "--samples-per-class", "1", "--sample-classes", "0", "--num-workers", "0"]
    for name, launch_args in (("ddp", DDP), ("fsdp", FSDP_CONFIG)):
        launch(launch_args, "train_dit.py", "--results-dir", tmp_path / name, *flags)
    ddp, fsdp = (load_file(tmp_path / name / "000-SDT-Ti-2-digits" / "pipeline" / "transformer"
                           / "diffusion_pytorch_model.safetensors") for name in ("ddp", "fsdp"))
    assert max_difference(fsdp, ddp) < 1e-5


if __name__ == "__main__":  # a process of a launch: `test_fsdp.py OUT [CHECKPOINT]` or `test_fsdp.py train_dit.py ...`
    select_fsdp_on_cpu()
    if sys.argv[1] == "train_dit.py":
        sys.argv = [str(ROOT / "train_dit.py"), *sys.argv[2:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        train(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
