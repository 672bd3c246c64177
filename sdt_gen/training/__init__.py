"""What both training scripts share: run folder, logging, verified atomic checkpoints, exact resume, preemption."""

from .checkpoint import (
    CHECKPOINT_MANIFEST,
    TrainState,
    check_finite,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
    skip_consumed_batches,
    verify_checkpoint,
)
from .ema import DiTEMA
from .fsdp import check_checkpoint_sharding, full_parameters, sync_initial_weights
from .model_card import classifier_card, denoiser_card, push_folder_to_hub, save_card
from .preemption import PREEMPTED_EXIT_CODE, PreemptionHandler
from .resume import RESUMES_RECORD, restore_run_settings, warned_changes
from .setup import (
    REPORT_TO,
    apply_settings,
    batch_per_process,
    create_accelerator,
    find_run,
    open_run,
    resume_checkpoint,
    start_run,
    training_loader,
)
from .run_dir import create_logger, create_run_dir, latest_run_dir, run_tag, save_config

__all__ = [
    "CHECKPOINT_MANIFEST",
    "DiTEMA",
    "PREEMPTED_EXIT_CODE",
    "PreemptionHandler",
    "REPORT_TO",
    "RESUMES_RECORD",
    "TrainState",
    "apply_settings",
    "batch_per_process",
    "check_checkpoint_sharding",
    "check_finite",
    "classifier_card",
    "checkpoint_name",
    "create_accelerator",
    "create_logger",
    "create_run_dir",
    "denoiser_card",
    "latest_checkpoint",
    "latest_run_dir",
    "list_checkpoints",
    "find_run",
    "full_parameters",
    "open_run",
    "restore_run_settings",
    "resume_checkpoint",
    "push_folder_to_hub",
    "resolve_resume",
    "run_tag",
    "save_card",
    "save_checkpoint",
    "save_config",
    "skip_consumed_batches",
    "start_run",
    "sync_initial_weights",
    "training_loader",
    "verify_checkpoint",
    "warned_changes",
]
