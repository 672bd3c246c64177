"""Diffusers pipelines for SDT models, installed as ``sdt_gen.pipelines``."""

from .class_names import ClassNames, label_slug
from .pipeline_sdt import (
    EXPORT_RECORD,
    SDTPipeline,
    check_guidance_interval,
    check_pipeline_folder,
    exported_step,
    image_seed,
    stale_export_note,
)
from .schedulers import (
    SCHEDULERS,
    chosen_scheduler,
    default_scheduler,
    dit_scheduler,
    flow_scheduler,
    scheduler_by_name,
    scheduler_names,
)

__all__ = ["EXPORT_RECORD", "SCHEDULERS", "ClassNames", "SDTPipeline", "check_guidance_interval",
           "check_pipeline_folder", "chosen_scheduler", "default_scheduler", "dit_scheduler", "exported_step",
           "flow_scheduler", "image_seed", "label_slug", "scheduler_by_name", "scheduler_names", "stale_export_note"]
