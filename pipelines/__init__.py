"""Diffusers pipelines for SDT models, installed as ``sdt_gen.pipelines``."""
