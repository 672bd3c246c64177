"""Data: bundled digits (scikit-learn's, MNIST's), image class folders (ADM crop), VAE latent shards."""

from .labeled_images import LabeledImages, train_val_split
from .digits import DIGITS_ID2LABEL, DigitsDataset
from .mnist import MNIST_ID2LABEL, MNISTDataset, load_mnist_5k
from .image_folder import ImageFolderDataset, center_crop_arr, collate_skip_none, imagenet_id2label, load_class_names
from .vae import decode_latents, encode_images, load_vae, vae_downsampling
from .latents import LatentDataset, extract_latents, shard_name, shard_ranges
from .subsets import SUBSET_FILE, BalancedSubset, balanced_indices

# The data sets that install with the project, by their command-line name (``--dataset``).
BUNDLED_DATASETS = {"digits": DigitsDataset, "mnist": MNISTDataset}

__all__ = [
    "BUNDLED_DATASETS",
    "BalancedSubset",
    "SUBSET_FILE",
    "DIGITS_ID2LABEL",
    "DigitsDataset",
    "ImageFolderDataset",
    "LabeledImages",
    "LatentDataset",
    "MNIST_ID2LABEL",
    "MNISTDataset",
    "center_crop_arr",
    "decode_latents",
    "encode_images",
    "collate_skip_none",
    "extract_latents",
    "imagenet_id2label",
    "load_class_names",
    "load_mnist_5k",
    "load_vae",
    "shard_name",
    "shard_ranges",
    "train_val_split",
    "balanced_indices",
    "vae_downsampling",
]
