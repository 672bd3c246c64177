"""What the training loop needs under FSDP2 (``configs/accelerate/fsdp.yaml``): one initial model on every
process, and the full weights of sharded parameters.

Under FSDP2 every parameter is a ``DTensor`` holding this process's shard. The EMA and the exported
pipeline are of the full weights, on every process alike, so the loop hands the EMA gathered copies.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

# What accelerate's save_state writes for a sharded (FSDP, SHARDED_STATE_DICT) model instead of model.safetensors.
SHARDED_MODEL_FOLDER = "pytorch_model_fsdp_0"


@torch.no_grad()
def full_parameters(parameters: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """``parameters`` with each FSDP2 shard gathered into the full weight; plain parameters as they are.

    A collective when any parameter is sharded: call it on every process, as ``ema.step`` is. The copies
    keep ``requires_grad``, which ``EMAModel.step`` reads (a frozen parameter is copied, not averaged).

    Example:
        >>> ema.step(full_parameters(accelerator.unwrap_model(model).parameters()))
    """
    return [
        torch.nn.Parameter(p.full_tensor(), requires_grad=p.requires_grad) if isinstance(p, DTensor) else p
        for p in parameters
    ]


def sync_initial_weights(model: torch.nn.Module, device: torch.device | str, src: int = 0) -> torch.nn.Module:
    """Give every process process ``src``'s weights and buffers, in place: a collective, before ``prepare``.

    The training scripts draw the model after seeding each process differently. DDP broadcasts process 0's
    weights when it wraps the model; FSDP2 does not (unless ``fsdp_cpu_ram_efficient_loading``), so each
    process would keep its shard of its own draw, and the EMA, built before ``prepare``, another start.
    Each tensor goes through ``device`` (NCCL broadcasts GPU tensors only); one process: nothing to do.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return model
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            on_device = tensor.to(device)  # the tensor itself when it is there already
            torch.distributed.broadcast(on_device, src)
            tensor.copy_(on_device)
    return model


def check_checkpoint_sharding(accelerator: Accelerator, checkpoint: str | Path) -> None:
    """Refuse to resume a sharded (FSDP) checkpoint in an unsharded launch, or the other way round, by name:
    accelerate would fail on a missing file of the other layout."""
    sharded = (Path(checkpoint) / SHARDED_MODEL_FOLDER).is_dir()
    if sharded != (accelerator.distributed_type == DistributedType.FSDP):
        written = "sharded (FSDP)" if sharded else "unsharded (one process, DDP)"
        running = accelerator.distributed_type.value
        raise ValueError(
            f"checkpoint {checkpoint} was written {written}, and this launch runs {running}: resume it with the "
            "launch configuration that wrote it (configs/accelerate/fsdp.yaml for FSDP)"
        )


__all__ = ["SHARDED_MODEL_FOLDER", "check_checkpoint_sharding", "full_parameters", "sync_initial_weights"]
