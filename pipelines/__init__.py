"""Diffusers pipelines for SDT models, installed as ``sdt_gen.pipelines``."""

from .class_names import ClassNames, label_slug
from .folders import EXPORT_RECORD, check_pipeline_folder, exported_step, stale_export_note
from .pipeline_sdt import SDTPipeline, check_guidance_interval
from .seeding import image_seed
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
