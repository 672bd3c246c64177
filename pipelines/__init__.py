"""Diffusers pipelines for SDT models, installed as ``sdt_gen.pipelines``."""

from .class_names import ClassNames, label_slug
from .pipeline_sdt import SDTPipeline, check_pipeline_folder, image_seed
from .schedulers import SCHEDULERS, default_scheduler, dit_scheduler, flow_scheduler, scheduler_by_name, scheduler_names

__all__ = ["SCHEDULERS", "ClassNames", "SDTPipeline", "check_pipeline_folder", "default_scheduler", "dit_scheduler",
           "flow_scheduler", "image_seed", "label_slug", "scheduler_by_name", "scheduler_names"]
