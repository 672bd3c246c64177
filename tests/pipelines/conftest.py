import pytest
import torch

from sdt_gen import SDTPipeline, SDTTransformer2DModel

from helpers import perturbed, tiny_vae

NUM_CLASSES = 10
ID2LABEL = {i: f"class {i}, synonym{i}" for i in range(NUM_CLASSES)}
ID2LABEL[3] = "Golden Retriever, retriever"
ID2LABEL[4] = "otter"


def tiny_transformer(in_channels=4, learn_sigma=True, seed=0, **overrides):
    config = dict(
        sample_size=8, patch_size=2, in_channels=in_channels, hidden_size=32, depth=2, num_heads=2,
        num_classes=NUM_CLASSES, learn_sigma=learn_sigma, attention_backend="sdpa",
    )
    torch.manual_seed(seed)
    return perturbed(SDTTransformer2DModel(**{**config, **overrides}), seed=seed).eval()


def tiny_pipeline(pixel=False, learn_sigma=True, scheduler=None, id2label=ID2LABEL, **overrides):
    """A latent pipeline (8x8x4 latents -> 16x16 images) or a pixel one (8x8x3 images)."""
    transformer = tiny_transformer(in_channels=3 if pixel else 4, learn_sigma=learn_sigma, **overrides)
    scheduler = scheduler or SDTPipeline.dit_scheduler(learn_sigma)
    vae = None if pixel else tiny_vae()
    pipe = SDTPipeline(transformer=transformer, scheduler=scheduler, vae=vae, id2label=id2label)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def make_pipeline():
    return tiny_pipeline


@pytest.fixture
def make_transformer():
    return tiny_transformer


@pytest.fixture
def make_vae():
    return tiny_vae


@pytest.fixture
def id2label():
    return dict(ID2LABEL)
