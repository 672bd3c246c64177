"""Original DiT checkpoints (DiT's own key layout) against a direct re-implementation of DiT's forward."""

import argparse

import pytest
import torch

from sdt_gen import SDTTransformer2DModel
from sdt_gen.models.dit_conversion import DIT_NUM_HEADS

from dit_reference import CHANNELS, CLASSES, DEPTH, HEADS, HIDDEN, INPUT, PATCH, original_dit
from helpers import perturbed, tiny_vae


def inputs(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, CHANNELS, INPUT, INPUT, generator=g), torch.tensor([0, 17, 999])[:batch],
            torch.tensor([0, 9, CLASSES])[:batch])


def assert_same_function(sdt, dit):
    x, t, y = inputs()
    with torch.no_grad():
        expected = dit(x, t, y)
        got = sdt(x, t, y).sample
    assert (got - expected).abs().max().item() <= 1e-5


def test_state_dict_file_converts_to_dits_function(tmp_path):
    dit = original_dit()
    path = tmp_path / "DiT-tiny.pt"
    torch.save(dit.state_dict(), path)
    sdt = SDTTransformer2DModel.from_dit(path, num_heads=HEADS, decay_mode="none", attention_backend="sdpa").eval()
    cfg = sdt.config
    assert (cfg.sample_size, cfg.patch_size, cfg.in_channels, cfg.hidden_size, cfg.depth, cfg.num_classes) == (
        INPUT, PATCH, CHANNELS, HIDDEN, DEPTH, CLASSES)
    assert cfg.learn_sigma and cfg.timestep_freq_shift == 0.0 and cfg.mlp_norm_eps == 1e-6
    assert_same_function(sdt, dit)


def test_train_checkpoint_picks_ema_by_default_and_model_on_request(tmp_path):
    ema, raw = original_dit(seed=0), original_dit(seed=1)
    optimizer = torch.optim.AdamW(raw.parameters())
    checkpoint = {"model": raw.state_dict(), "ema": ema.state_dict(), "opt": optimizer.state_dict(),
                  "args": argparse.Namespace(model="DiT-XL/2", image_size=256)}
    path = tmp_path / "0400000.pt"
    torch.save(checkpoint, path)
    kwargs = dict(num_heads=HEADS, attention_backend="sdpa")
    assert_same_function(SDTTransformer2DModel.from_dit(path, decay_mode="none", **kwargs).eval(), ema)
    assert_same_function(SDTTransformer2DModel.from_dit(path, weights="model", decay_mode="none", **kwargs).eval(), raw)
    # In memory too, and SDT starting from it: cag with zero decay computes the same function.
    sdt = SDTTransformer2DModel.from_dit(checkpoint, decay_mode="cag", decay_init="zero", **kwargs).eval()
    assert_same_function(sdt, ema)


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    dit = original_dit()
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, tmp_path / "dit.safetensors")
    sdt = SDTTransformer2DModel.from_dit(tmp_path / "dit.safetensors", num_heads=HEADS, decay_mode="none").eval()
    assert_same_function(sdt, dit)


def test_dits_widths_give_the_head_count_and_others_require_it():
    assert DIT_NUM_HEADS == {384: 6, 768: 12, 1024: 16, 1152: 16}
    state = original_dit().state_dict()
    with pytest.raises(ValueError, match="pass --num-heads to sdt_gen.convert"):
        SDTTransformer2DModel.from_dit(state)
    dit = original_dit(scale=0.01, hidden=384, depth=1, heads=6)
    assert SDTTransformer2DModel.from_dit(dit.state_dict(), decay_mode="none").config.num_heads == 6


def test_overrides_that_contradict_the_tensors_are_refused():
    state = original_dit().state_dict()
    with pytest.raises(ValueError, match=r"depth=3 does not match the DiT checkpoint, whose tensors give 2"):
        SDTTransformer2DModel.from_dit(state, num_heads=HEADS, depth=3)


def test_missing_and_misshaped_keys_are_named(tmp_path):
    state = original_dit().state_dict()
    missing = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"key 'blocks.1.mlp.fc2.bias' is missing"):
        SDTTransformer2DModel.from_dit(missing, num_heads=HEADS)
    misshaped = {**state, "blocks.0.attn.proj.weight": torch.zeros(HIDDEN, HIDDEN + 1)}
    with pytest.raises(ValueError, match=r"blocks.0.attn.proj.weight.*shape \(32, 33\).*expects \(32, 32\)"):
        SDTTransformer2DModel.from_dit(misshaped, num_heads=HEADS)
    with pytest.raises(ValueError, match=r"not an original DiT checkpoint: key 'x_embedder.proj.weight' is missing.*"
                                         r"first key found is 'encoder.weight'"):
        SDTTransformer2DModel.from_dit({"encoder.weight": torch.zeros(2)})


class NotATensor:
    pass


def test_a_pickle_that_needs_more_than_weights_only_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": NotATensor()}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        SDTTransformer2DModel.from_dit(path)
    with pytest.raises(FileNotFoundError, match="DiT-XL-2-256x256.pt"):
        SDTTransformer2DModel.from_dit(tmp_path / "absent.pt")


def test_diffusers_dit_under_both_timestep_conventions():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    dit = perturbed(DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=1,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10,
    ).eval(), scale=0.1)
    as_diffusers = SDTTransformer2DModel.from_dit(dit, decay_mode="none").eval()
    as_original = SDTTransformer2DModel.from_dit(dit, timestep_convention="original", decay_mode="none").eval()
    assert (as_diffusers.config.timestep_freq_shift, as_diffusers.config.mlp_norm_eps) == (1.0, 1e-5)
    assert (as_original.config.timestep_freq_shift, as_original.config.mlp_norm_eps) == (0.0, 1e-6)
    x, t, y = inputs()
    with torch.no_grad():
        reference = dit(x, timestep=t, class_labels=y).sample
        assert (as_diffusers(x, t, y).sample - reference).abs().max() <= 1e-5
        assert (as_original(x, t, y).sample - reference).abs().max() > 1e-3
    with pytest.raises(ValueError, match="unknown timestep_convention 'dit'"):
        SDTTransformer2DModel.from_dit(dit, timestep_convention="dit")


def test_convert_refuses_a_dit_without_its_vae_unless_told_it_is_pixel_space(tmp_path):
    from sdt_gen.convert import build_parser, main as convert

    torch.save(original_dit(classes=10).state_dict(), tmp_path / "DiT-tiny.pt")
    argv = [str(tmp_path / "DiT-tiny.pt"), "--out", str(tmp_path / "pipe"), "--num-heads", "2"]
    with pytest.raises(ValueError, match=r"DiT-tiny.pt: a DiT denoises VAE latents; pass its VAE \(--vae"):
        convert(build_parser().parse_args(argv))
    assert not (tmp_path / "pipe").exists()
    pipe = convert(build_parser().parse_args([*argv, "--pixel-space"]))
    assert pipe.vae is None and (tmp_path / "pipe" / "model_index.json").is_file()


def test_convert_writes_a_pipeline_folder_that_loads_and_samples(tmp_path):
    from sdt_gen.convert import build_parser, main as convert
    from sdt_gen.pipelines import SDTPipeline

    dit = original_dit(classes=1000)
    torch.save(dit.state_dict(), tmp_path / "DiT-tiny.pt")
    tiny_vae().save_pretrained(tmp_path / "vae")
    out = tmp_path / "pipe"
    convert(build_parser().parse_args([str(tmp_path / "DiT-tiny.pt"), "--vae", str(tmp_path / "vae"), "--out", str(out),
                        "--num-heads", "2"]))

    pipe = SDTPipeline.from_pretrained(out)
    assert pipe.id2label[207] == "golden retriever" and len(pipe.id2label) == 1000
    assert pipe.scheduler.config.variance_type == "learned_range" and pipe.vae is not None
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    x, t, y = inputs()
    with torch.no_grad():
        assert (pipe.transformer(x, t, y).sample - dit(x, t, y)).abs().max() <= 1e-5
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=["otter", 0], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 3)
