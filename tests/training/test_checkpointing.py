"""Atomic checkpoints, pruning, resume resolution, TrainState and the NaN guard on accelerate (CPU)."""

import os

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sdt_gen.training import (
    TrainState,
    check_finite,
    latest_checkpoint,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
    skip_consumed_batches,
)


def make_training(seed=0):
    """A prepared tiny model, optimizer and registered TrainState."""
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    return accelerator, model, optimizer, state


def train_step(model, optimizer, state):
    loss = model(torch.ones(4, 3)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    state.step += 1
    state.batch_in_epoch += 1


def test_train_state_round_trip(tmp_path):
    accelerator, model, optimizer, state = make_training()
    for _ in range(3):
        train_step(model, optimizer, state)
    state.epoch = 2
    saved_weights = model.weight.detach().clone()
    path = save_checkpoint(accelerator, tmp_path, state.step)
    assert path == tmp_path / "checkpoints" / "step-0000003"

    train_step(model, optimizer, state)
    state.epoch = 5
    accelerator.load_state(os.fspath(path))
    assert state == TrainState(step=3, epoch=2, batch_in_epoch=3)
    assert torch.equal(model.weight, saved_weights)
    assert TrainState(**state.state_dict()) == state
    with pytest.raises(KeyError, match="expected"):
        state.load_state_dict({"step": 1})


def test_keep_last_prunes_oldest(tmp_path):
    accelerator, model, optimizer, state = make_training()
    for _ in range(4):
        train_step(model, optimizer, state)
        save_checkpoint(accelerator, tmp_path, state.step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000003", "step-0000004"]
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        save_checkpoint(accelerator, tmp_path, 5, keep_last=0)


def test_killed_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    accelerator, model, optimizer, state = make_training()
    train_step(model, optimizer, state)
    good = save_checkpoint(accelerator, tmp_path, state.step)
    good_weights = model.weight.detach().clone()
    train_step(model, optimizer, state)

    def killed_save_state(output_dir, **kwargs):
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "model.safetensors"), "wb") as f:
            f.write(b"half written")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(accelerator, "save_state", killed_save_state)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, state.step)
    monkeypatch.undo()
    assert (tmp_path / "checkpoints" / ".tmp-step-0000002").is_dir()  # the leftover of the killed save

    # A new process resumes: "latest" ignores the leftover and the previous checkpoint loads.
    accelerator, model, optimizer, state = make_training(seed=1)
    resume = resolve_resume(tmp_path, "latest")
    assert resume == good
    accelerator.load_state(os.fspath(resume))
    assert torch.equal(model.weight, good_weights) and state.step == 1

    train_step(model, optimizer, state)
    save_checkpoint(accelerator, tmp_path, state.step)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-0000001", "step-0000002"]  # leftover cleaned


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    accelerator, model, optimizer, state = make_training()
    save_checkpoint(accelerator, tmp_path, 0)
    train_step(model, optimizer, state)
    save_checkpoint(accelerator, tmp_path, 0)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-0000000"]
    state.step = 99
    accelerator.load_state(os.fspath(tmp_path / "checkpoints" / "step-0000000"))
    assert state.step == 1


def test_resolve_resume(tmp_path):
    accelerator, model, optimizer, state = make_training()
    assert resolve_resume(tmp_path, None) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_resume(tmp_path, "latest")
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint.*expected 'latest' or a checkpoint folder"):
        resolve_resume(tmp_path, os.fspath(tmp_path / "no-such-checkpoint"))

    first = save_checkpoint(accelerator, tmp_path, 10)
    second = save_checkpoint(accelerator, tmp_path, 200)
    assert resolve_resume(tmp_path, "latest") == second
    assert resolve_resume(tmp_path / "checkpoints", "latest") == second
    assert resolve_resume(tmp_path, os.fspath(first)) == first  # an explicit checkpoint
    assert resolve_resume(tmp_path / "elsewhere", os.fspath(tmp_path)) == second  # a run folder: its newest
    assert latest_checkpoint(tmp_path) == second


def test_skip_consumed_batches_resumes_the_epoch_order():
    def loader_for(accelerator):
        dataset = TensorDataset(torch.arange(20))
        return accelerator.prepare(DataLoader(dataset, batch_size=4, shuffle=True))

    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    def epoch_batches(state):
        return [batch[0].tolist() for batch in skip_consumed_batches(accelerator, loader_for(accelerator), state)]

    full_epoch, other_epoch = epoch_batches(TrainState(epoch=3)), epoch_batches(TrainState(epoch=4))
    assert sorted(sum(full_epoch, [])) == list(range(20)) and other_epoch != full_epoch
    assert epoch_batches(TrainState(step=7, epoch=3, batch_in_epoch=2)) == full_epoch[2:]


def test_check_finite(tmp_path):
    check_finite(torch.tensor(0.5), step=3, run_dir=tmp_path)
    with pytest.raises(FloatingPointError, match="loss is nan at step 12; no checkpoint was saved"):
        check_finite(torch.tensor(float("nan")), step=12, run_dir=tmp_path)

    accelerator, *_ = make_training()
    save_checkpoint(accelerator, tmp_path, 10)
    with pytest.raises(FloatingPointError, match=r"loss is inf at step 13; the last good checkpoint is .*step-0000010"):
        check_finite(float("inf"), step=13, run_dir=tmp_path)
    with pytest.raises(FloatingPointError, match="loss is not finite at step 14"):
        check_finite(torch.tensor([1.0, float("nan")]), step=14, run_dir=tmp_path)


def test_automatic_checkpoint_naming_is_refused(tmp_path):
    from accelerate.utils import ProjectConfiguration

    accelerator = Accelerator(
        cpu=True, project_config=ProjectConfiguration(project_dir=os.fspath(tmp_path), automatic_checkpoint_naming=True)
    )
    with pytest.raises(ValueError, match="automatic_checkpoint_naming"):
        save_checkpoint(accelerator, tmp_path, 1)
