"""Helpers shared by the test modules (on the path through pytest's ``pythonpath = ["tests"]``)."""

import contextlib
import copy
import logging
import warnings

import pytest
import torch


def perturbed(model, scale=0.05, seed=0):
    """Random offsets on every parameter, so zero-initialised paths (adaLN-Zero, CAG W_g, output layers) are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


# What a stored output is compared within. Its numbers came from another machine: other CPUs sum matmuls in another
# order and vectorise exp / erf / tanh differently, which moves float32 results by a few ulps (eps 1.2e-7).
# One forward pass: 1e-5 of the output's largest magnitude, ~80 ulps at that scale. Cross-CPU differences
# measured (AMD EPYC against the Intel Xeon that wrote the *_v0 fixtures) are at most 1.6e-7 of it.
ONE_PASS = 1e-5


# Four guided sampler steps, images in [0, 1]. DDPM: the step that predicts x0 divides the model's output by
# sqrt(alphas_cumprod) (by 156 at t = 999), so rounding grows; 1e-4 is 1/40 of an 8-bit level (measured across
# CPUs: 6.4e-6). Flow (Euler): each step adds dt times the velocity, nothing grows: 1e-5 (measured: 1.2e-7).
SAMPLED = {"ddpm": 1e-4, "flow": 1e-5}


def assert_as_saved(actual: torch.Tensor, saved: torch.Tensor, relative: float = ONE_PASS, atol: float = 0.0):
    """``actual`` equals ``saved`` within ``relative`` times the saved output's largest magnitude (plus ``atol``)."""
    torch.testing.assert_close(actual, saved, rtol=0, atol=atol + relative * saved.abs().max().item())


def assert_not_as_saved(actual: torch.Tensor, saved: torch.Tensor, relative: float = ONE_PASS, atol: float = 0.0):
    """The same tolerance misses a real change: a test that cannot fail would prove nothing."""
    with pytest.raises(AssertionError):
        assert_as_saved(actual, saved, relative, atol)


def nudged(model, name: str, delta: float = 1e-3):
    """A copy of ``model`` with the first entry of parameter ``name`` moved by ``delta``: the smallest real change
    (a changed default, a swapped weight changes far more) that a comparison with a saved output must notice."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.get_parameter(name).view(-1)[0] += delta
    return model


def assert_pipeline_samples_as_saved(folder, objective: str) -> torch.Tensor:
    """A saved pipeline fixture draws its ``io.safetensors`` images (2 images, 4 guided steps) within ``SAMPLED``,
    and a ``nudged`` patch embedding falls outside it; returns the saved images."""
    from safetensors.torch import load_file

    from sdt_gen import SDTPipeline

    pipe = SDTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe(class_labels=[0, "two"], num_inference_steps=4, guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images

    saved = load_file(folder / "io.safetensors")["images"]
    assert_as_saved(sample(), saved, relative=0, atol=SAMPLED[objective])  # written on another CPU: see SAMPLED
    pipe.transformer = nudged(pipe.transformer, "x_embedder.proj.weight")
    assert_not_as_saved(sample(), saved, relative=0, atol=SAMPLED[objective])
    return saved


def tiny_vae(seed=0, levels=2, sample_size=16):
    """A random ``AutoencoderKL`` of ``levels`` levels: images <-> 4-channel latents ``2 ** (levels - 1)`` times smaller.

    Two levels (the default): 16x16x3 images <-> 8x8x4 latents; four: SD's factor of 8.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * levels, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        sample_size=sample_size,
    ).eval()


def tiny_dit(seed=0, sample_size=8):
    """A diffusers DiT with ImageNet's 1000 classes (DiTPipeline hard-codes the null class 1000)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        sample_size=sample_size, patch_size=2, num_embeds_ada_norm=1000,
    ).eval()
    perturbed(dit, seed=seed)
    with torch.no_grad():
        state = dit.state_dict()  # one shared timestep/label embedder, as in converted DiT checkpoints
        for key, value in state.items():
            if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    return dit


def cache_in_hub(folder, hf_home, repo_id, commit="0123456789abcdef0123456789abcdef01234567"):
    """Copy a saved ``folder`` into ``hf_home``'s hub cache as ``repo_id`` at ``commit``, as huggingface_hub lays it out."""
    import shutil
    from pathlib import Path

    repo = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def random_inception_weights(path):
    """A state_dict of torch-fidelity's own Inception class with random weights, saved at ``path``.

    torch-fidelity loads it through its real code path (``feature_extractor_weights_path``,
    strict ``load_state_dict``), so a key or shape mismatch would fail there.
    """
    from pathlib import Path

    from torch_fidelity import FeatureExtractorInceptionV3

    class InceptionWithoutLoading(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    empty = path.with_name(path.name + ".empty")
    torch.save({}, empty)
    torch.manual_seed(0)
    model = InceptionWithoutLoading("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    # PyTorch's default init shrinks activations to ~1e-8 a hundred layers deep; He init keeps
    # features of order 1, so distances between image sets are not trivially zero.
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(model.state_dict(), path)
    return path


def random_vgg16_weights(path):
    """A random-weights state_dict of torchvision's VGG16 (torch-fidelity's ``vgg16`` extractor), saved at ``path``."""
    from pathlib import Path

    import torchvision

    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in torchvision.models.vgg16().state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    # He-scaled Gaussians, drawn directly: torchvision's own init of the 100M-weight fc layer is slow.
    state_dict = {
        name: torch.randn(shape, generator=generator) * (2 / shape[1:].numel()) ** 0.5
        if len(shape) > 1
        else torch.zeros(shape)
        for name, shape in shapes.items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path


def tiny_classifier_config(architecture: str = "hierarchical", **overrides):
    """A CPU-sized classifier config: 64px SDT-H (grids 16, 8, 4, 2) or 32px isotropic (8x8), 5 labels."""
    from sdt_gen import SDTConfig

    if architecture == "hierarchical":
        config = dict(
            architecture="hierarchical", image_size=64, dims=[16, 32, 48, 64], depths=[1, 1, 2, 1], heads=[2, 2, 4, 4],
            mlp_ratios=[2.0, 2.0, 2.0, 2.0], head_hidden_size=32, layer_scale_init_values=[0.0, 0.0, 0.1, 0.1],
        )
    else:
        config = dict(architecture="isotropic", image_size=32, patch_size=4, hidden_size=32, depth=2, num_heads=2,
                      layer_scale_init_value=0.1)
    return SDTConfig(**{**config, "num_labels": 5, **overrides})


def refuse_network(monkeypatch):
    """Make any internet connection fail loudly for the rest of ``monkeypatch``'s scope (local sockets still work)."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("a test tried to reach the network")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        # DataLoader workers hand tensors over AF_UNIX sockets: those stay usable.
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse()
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse()
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


LIBRARY_LOGGERS = ("", "diffusers", "transformers", "accelerate", "torch", "huggingface_hub")
PROJECT_LOGGERS = ("sdt_gen", "eval_fid", "__main__")


@contextlib.contextmanager
def library_warnings():
    """The warnings a user would see raised (``warnings``) and logged (diffusers and transformers log theirs to their
    own handlers) while the block runs, as messages; the project's own loggers (``sdt_gen``, the scripts') are not
    listened to."""
    caught = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = lambda record: (
        None if record.name.split(".")[0] in PROJECT_LOGGERS else caught.append(f"{record.name}: {record.getMessage()}")
    )
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for logger in loggers:
        logger.addHandler(catcher)
    try:
        with warnings.catch_warnings(record=True) as raised:
            # What a user sees: Python's default filters, which show deprecations only from __main__ (a library's
            # use of a deprecated numpy path is the library's to fix, and hidden from its users).
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            yield caught
    finally:
        for logger in loggers:
            logger.removeHandler(catcher)
        caught += [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in raised
                   if "site-packages" in w.filename or "dist-packages" in w.filename]  # raised by a library
