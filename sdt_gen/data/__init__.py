"""Data: the bundled digits, image class folders (ADM crop), VAE latent shards and their extraction."""

from .digits import DIGITS_ID2LABEL, DigitsDataset, train_val_split
from .image_folder import ImageFolderDataset, center_crop_arr, collate_skip_none, load_class_names
from .vae import encode_images, load_vae, vae_downsampling
from .latents import LatentDataset, extract_latents, shard_name, shard_ranges

__all__ = [
    "DIGITS_ID2LABEL",
    "DigitsDataset",
    "ImageFolderDataset",
    "LatentDataset",
    "center_crop_arr",
    "encode_images",
    "collate_skip_none",
    "extract_latents",
    "load_class_names",
    "load_vae",
    "shard_name",
    "shard_ranges",
    "train_val_split",
    "vae_downsampling",
]
