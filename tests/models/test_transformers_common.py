"""transformers conformance of SDTConfig / SDTModel / SDTForImageClassification.

transformers' own common model tests (``ModelTesterMixin``, ``ConfigTester``) are not shipped with the
library; these tests re-state the checks that matter for our classes in our own words: a new label set
on a pretrained classifier, ``problem_type``, the standard config names, the input embeddings,
transformers' checkpointing API, save/load and Auto-class round trips, tuple/dict outputs.
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from transformers.modeling_layers import GradientCheckpointingLayer

from sdt_gen import SDTConfig, SDTForImageClassification, SDTModel, SDTTransformer2DModel
from sdt_gen.models import DerivedKeyError

from helpers import perturbed, tiny_classifier_config

ARCHITECTURES = ["hierarchical", "isotropic", "probe"]


def tiny_config(architecture: str = "hierarchical", **overrides) -> SDTConfig:
    """A CPU-sized config: 64px SDT-H with four stages, 32px isotropic, or a probe of a tiny denoiser."""
    if architecture == "probe":
        torch.manual_seed(0)
        denoiser = SDTTransformer2DModel(
            sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=3, num_heads=2, num_classes=10,
            attention_backend="sdpa", decay_layout="decomposed",
        )
        probe = SDTForImageClassification.from_denoiser(denoiser, timestep=10, layer=1, freeze=False, num_labels=5)
        config = probe.config.to_dict()
        if "num_labels" in overrides or "id2label" in overrides:  # a new label set, not one next to the old
            del config["id2label"], config["label2id"]
        return SDTConfig.from_dict({**config, **overrides})
    return tiny_classifier_config(architecture, **overrides)


def pixels(config: SDTConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    height, width = config.image_hw
    return torch.rand(batch, config.num_channels, height, width, generator=g) * 2 - 1


def blocks_of(model: SDTModel) -> list[torch.nn.Module]:
    if model.config.architecture == "hierarchical":
        return [block for stage in model.encoder.stages for block in stage.blocks]
    return list(model.encoder.blocks)


# ----------------------------------------------------------------------------- a new label set


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_from_pretrained_with_new_num_labels_reinitialises_only_the_head(tmp_path, architecture):
    torch.manual_seed(0)
    saved = perturbed(SDTForImageClassification(tiny_config(architecture, num_labels=None, id2label={
        i: f"class {i}" for i in range(10)
    })))
    saved.save_pretrained(tmp_path)

    model = SDTForImageClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True).eval()
    assert model.config.num_labels == 3 and len(model.config.label2id) == 3
    assert model.classifier.weight.shape == (3, saved.num_features)
    before, after = saved.state_dict(), model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        if not name.startswith("classifier."):
            assert torch.equal(after[name], tensor), name
    with torch.no_grad():
        assert model(pixels(model.config)).logits.shape == (2, 3)


def test_new_label_names_replace_the_saved_ones(tmp_path):
    SDTForImageClassification(tiny_config("isotropic", num_labels=10)).save_pretrained(tmp_path)
    names = {0: "cat", 1: "dog"}
    model = AutoModelForImageClassification.from_pretrained(tmp_path, id2label=names, ignore_mismatched_sizes=True)
    assert model.config.id2label == names and model.config.label2id == {"cat": 0, "dog": 1}
    assert model.classifier.out_features == 2
    config = AutoConfig.from_pretrained(tmp_path, num_labels=4)
    assert config.num_labels == 4 and list(config.label2id.values()) == [0, 1, 2, 3]


def test_new_num_labels_without_ignore_mismatched_sizes_is_an_error(tmp_path):
    SDTForImageClassification(tiny_config("isotropic", num_labels=10)).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        SDTForImageClassification.from_pretrained(tmp_path, num_labels=3)


# ----------------------------------------------------------------------------- problem_type


def _loss(model, x, labels):
    out = model(x, labels=labels)
    return out.loss, out.logits


@pytest.mark.parametrize("num_labels", [1, 3])
def test_regression_is_the_mse_loss(num_labels):
    model = SDTForImageClassification(tiny_config("isotropic", num_labels=num_labels, problem_type="regression"))
    x = pixels(model.config, batch=3)
    labels = torch.randn(3) if num_labels == 1 else torch.randn(3, num_labels)
    loss, logits = _loss(model.eval(), x, labels)
    # One output: transformers squeezes the (B, 1) logits against (B,) targets (no broadcasting to (B, B)).
    expected = F.mse_loss(logits.squeeze(), labels.squeeze()) if num_labels == 1 else F.mse_loss(logits, labels)
    torch.testing.assert_close(loss, expected)


def test_single_label_classification_is_the_cross_entropy():
    model = SDTForImageClassification(tiny_config(problem_type="single_label_classification")).eval()
    x, labels = pixels(model.config, batch=3), torch.tensor([0, 4, 2])
    loss, logits = _loss(model, x, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


def test_single_label_classification_takes_soft_targets():
    model = SDTForImageClassification(tiny_config(problem_type="single_label_classification")).eval()
    x, labels = pixels(model.config, batch=3), torch.tensor([0, 4, 2])
    hard, logits = _loss(model, x, labels)
    soft = torch.softmax(torch.randn(3, 5), dim=-1)
    torch.testing.assert_close(_loss(model, x, F.one_hot(labels, 5).float())[0], hard)
    torch.testing.assert_close(_loss(model, x, soft)[0], -(soft * logits.log_softmax(-1)).sum(-1).mean())


def test_multi_label_classification_is_the_bce_with_logits():
    model = SDTForImageClassification(tiny_config(problem_type="multi_label_classification")).eval()
    x = pixels(model.config, batch=3)
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.float)
    loss, logits = _loss(model, x, labels)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, labels))
    assert not torch.allclose(loss, F.cross_entropy(logits, labels))  # not a softmax loss


@pytest.mark.parametrize(
    "num_labels, labels, inferred",
    [
        (1, torch.tensor([0.5, -1.0]), "regression"),
        (5, torch.tensor([1, 3]), "single_label_classification"),
        (5, torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]]), "multi_label_classification"),
    ],
)
def test_problem_type_none_is_inferred_as_transformers_does(num_labels, labels, inferred):
    model = SDTForImageClassification(tiny_config("isotropic", num_labels=num_labels)).eval()
    assert model.config.problem_type is None
    loss, logits = _loss(model, pixels(model.config), labels)
    assert model.config.problem_type == inferred
    expected = {
        "regression": lambda: F.mse_loss(logits.squeeze(), labels),
        "single_label_classification": lambda: F.cross_entropy(logits, labels),
        "multi_label_classification": lambda: F.binary_cross_entropy_with_logits(logits, labels),
    }[inferred]()
    torch.testing.assert_close(loss, expected)


def test_problem_type_survives_save_and_load(tmp_path):
    SDTForImageClassification(tiny_config(problem_type="multi_label_classification")).save_pretrained(tmp_path)
    assert SDTForImageClassification.from_pretrained(tmp_path).config.problem_type == "multi_label_classification"


# ----------------------------------------------------------------------------- standard names


def test_standard_names_of_the_isotropic_config_are_its_keys():
    config = tiny_config("isotropic")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 2)
    config.num_hidden_layers, config.num_attention_heads, config.hidden_size = 3, 4, 64
    assert (config.depth, config.num_heads) == (3, 4)
    model = SDTModel(config)
    assert len(model.encoder.blocks) == 3 and model.encoder.blocks[0].attn.num_heads == 4
    assert model.encoder.patch_embed.proj.out_channels == 64
    built = SDTConfig(architecture="isotropic", image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=5,
                      num_attention_heads=4)
    assert (built.depth, built.num_heads) == (5, 4)


def test_standard_names_of_the_hierarchical_config_describe_its_last_stage():
    config = tiny_config(dims=[16, 32, 48, 96], heads=[2, 2, 4, 8])
    assert config.hidden_size == 96 and config.num_hidden_layers == 4 and config.num_attention_heads == 8
    assert tiny_config(dims=[16, 32, 48, 96], heads=[2, 2, 4, 8], hidden_size=96).hidden_size == 96  # as saved
    with pytest.raises(DerivedKeyError, match=r"num_hidden_layers=2 .* len\(depths\) = 4"):
        config.num_hidden_layers = 2
    with pytest.raises(DerivedKeyError, match=r"hidden_size=64 .* dims\[-1\] = 96"):
        config.hidden_size = 64
    assert config.hidden_size == 96
    assert SDTConfig.from_dict(config.to_dict()).hidden_size == 96


@pytest.mark.parametrize("name, value", [("hidden_size", 36), ("num_attention_heads", 3), ("num_hidden_layers", 2)])
def test_a_hierarchical_config_refuses_a_standard_name_it_derives(name, value):
    """Neither kept silently nor replaced: the error names the value given and the one the stages make. It is
    also a NotImplementedError, which transformers' ConfigTester reads as "this config cannot set that name"."""
    with pytest.raises(DerivedKeyError, match=rf"{name}={value} contradicts the hierarchical architecture") as error:
        SDTConfig(**{name: value})
    assert isinstance(error.value, ValueError) and isinstance(error.value, NotImplementedError)
    with pytest.raises(DerivedKeyError):
        SDTConfig.from_preset("SDT-H-T", **{name: value})
    assert getattr(SDTConfig(architecture="isotropic", **{name: value}), name) == value


@pytest.mark.parametrize("hidden_size, num_heads", [(36, 3), (20, 5), (4, 1)])
def test_isotropic_configs_of_odd_sizes_round_trip_unchanged(tmp_path, hidden_size, num_heads):
    config = SDTConfig(architecture="isotropic", image_size=12, patch_size=3, hidden_size=hidden_size,
                       num_heads=num_heads, depth=1, decay_layout="decomposed")
    config.save_pretrained(tmp_path)
    loaded = SDTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert (loaded.hidden_size, loaded.num_attention_heads, loaded.image_size) == (hidden_size, num_heads, 12)
    assert SDTModel(loaded)(torch.zeros(1, 3, 12, 12)).last_hidden_state.shape == (1, 16, hidden_size)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_hidden_states_are_num_hidden_layers_plus_one_of_hidden_size_at_the_end(architecture):
    config = tiny_config(architecture)
    model = SDTModel(config).eval()
    with torch.no_grad():
        out = model(pixels(config), output_hidden_states=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert out.last_hidden_state.shape[-1] == config.hidden_size == out.hidden_states[-1].shape[-1]
    config.output_hidden_states = True  # the config's default is honoured too
    with torch.no_grad():
        assert len(SDTModel(config).eval()(pixels(config)).hidden_states) == config.num_hidden_layers + 1


# ----------------------------------------------------------------------------- input embeddings


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_input_embeddings_are_the_stem_or_the_patch_embedding(architecture):
    config = tiny_config(architecture)
    model = SDTForImageClassification(config).eval()
    expected = model.sdt.encoder.stem if architecture == "hierarchical" else model.sdt.encoder.patch_embed
    assert model.get_input_embeddings() is expected and model.sdt.get_input_embeddings() is expected

    calls = []
    replacement = copy.deepcopy(expected)
    replacement.register_forward_hook(lambda *_: calls.append(1))
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement
    with torch.no_grad():
        model(pixels(config))
    assert calls == [1]


# ----------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_transformers_gradient_checkpointing_recomputes_blocks_with_the_same_gradients(architecture):
    torch.manual_seed(0)
    model = perturbed(SDTForImageClassification(tiny_config(architecture, drop_path_rate=0.0))).train()
    blocks = blocks_of(model.sdt)
    assert blocks and all(isinstance(block, GradientCheckpointingLayer) for block in blocks)
    attention_calls = []
    for block in blocks:
        block.attn.register_forward_pre_hook(lambda *_: attention_calls.append(1))
    x, labels = pixels(model.config), torch.tensor([0, 3])

    def step():
        model.zero_grad()
        attention_calls.clear()
        out = model(x, labels=labels)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(attention_calls)

    logits, grads, calls = step()
    assert calls == len(blocks)
    model.gradient_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in blocks)
    logits_ckpt, grads_ckpt, calls_ckpt = step()
    assert calls_ckpt == 2 * len(blocks)  # each block ran again in the backward: it was checkpointed
    torch.testing.assert_close(logits_ckpt, logits)
    assert grads_ckpt.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=lambda m: f"{name}: {m}")

    model.gradient_checkpointing_disable()
    assert not any(block.gradient_checkpointing for block in blocks)
    assert step()[2] == len(blocks)


# ----------------------------------------------------------------------------- round trips and outputs


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_load_round_trip_and_determinism(tmp_path, architecture):
    config = tiny_config(architecture)
    for model_class in (SDTModel, SDTForImageClassification):
        model = perturbed(model_class(config)).eval()
        x = pixels(config)
        with torch.no_grad():
            first, second = model(x)[0], model(x)[0]
        assert torch.equal(first, second)
        model.save_pretrained(tmp_path / model_class.__name__)
        loaded = model_class.from_pretrained(tmp_path / model_class.__name__).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x)[0], first, rtol=0, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tuple_output_equals_the_dict_output(architecture):
    config = tiny_config(architecture)
    x, labels = pixels(config), torch.tensor([1, 2])
    cases = [(SDTModel, {}), (SDTForImageClassification, {}), (SDTForImageClassification, {"labels": labels})]
    for model_class, extra in cases:
        model = perturbed(model_class(config)).eval()
        for hidden in (False, True):
            with torch.no_grad():
                as_dict = model(x, output_hidden_states=hidden, return_dict=True, **extra)
                as_tuple = model(x, output_hidden_states=hidden, return_dict=False, **extra)
            expected = as_dict.to_tuple()
            assert len(as_tuple) == len(expected)
            for got, want in zip(as_tuple, expected):
                if isinstance(want, tuple):
                    assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))
                else:
                    assert torch.equal(got, want)


def test_config_return_dict_false_gives_tuples():
    config = tiny_config("isotropic", return_dict=False)
    out = SDTForImageClassification(config).eval()(pixels(config))
    assert isinstance(out, tuple) and out[0].shape == (2, 5)


@pytest.mark.parametrize("architecture", ["hierarchical", "isotropic"])
def test_auto_classes_round_trip_and_base_weights_load_into_the_classifier(tmp_path, architecture):
    config = tiny_config(architecture)
    base = perturbed(SDTModel(config))
    base.save_pretrained(tmp_path)
    loaded_config = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded_config) is SDTConfig
    assert loaded_config.to_diff_dict() == {**config.to_diff_dict(), "architectures": ["SDTModel"]}
    assert type(AutoModel.from_pretrained(tmp_path)) is SDTModel

    classifier, info = AutoModelForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert type(classifier) is SDTForImageClassification
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}  # only the new head
    for name, tensor in base.state_dict().items():
        assert torch.equal(classifier.sdt.state_dict()[name], tensor), name

    classifier.save_pretrained(tmp_path / "classifier")  # and back: the classifier's backbone as an SDTModel
    backbone = AutoModel.from_pretrained(tmp_path / "classifier")
    for name, tensor in classifier.sdt.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], tensor), name


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_weights_built_on_meta_and_initialised_match_a_fresh_model(architecture):
    """What a load initialises (no checkpoint: everything) is what __init__ gives, where that is not random."""
    def tensors_of(model):  # non-persistent buffers (positions, gammas) included
        return {**dict(model.named_parameters()), **dict(model.named_buffers())}

    config = tiny_config(architecture)
    fresh = [tensors_of(SDTForImageClassification(config)) for _ in range(2)]
    tensors = tensors_of(SDTForImageClassification.from_pretrained(None, config=config, state_dict={}))
    assert not [name for name, tensor in tensors.items() if tensor.is_meta]
    assert tensors.keys() == fresh[0].keys()
    deterministic = [name for name, tensor in fresh[0].items() if torch.equal(tensor, fresh[1][name])]
    assert any("gammas" in name for name in deterministic)
    for name in deterministic:
        assert torch.equal(tensors[name], fresh[0][name]), name


def test_config_json_round_trip_and_num_labels_setter(tmp_path):
    for architecture in ARCHITECTURES:
        config = tiny_config(architecture, problem_type="regression")
        config.to_json_file(tmp_path / "config.json")
        assert SDTConfig.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()
    config.num_labels = 3
    assert len(config.id2label) == len(config.label2id) == 3


# ----------------------------------------------------------------------------- attention outputs and implementations


def attention_backends(model) -> set[str]:
    return {module.backend for module in model.modules() if hasattr(module, "backends_in_use")}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_output_attentions_are_each_blocks_probabilities(architecture):
    torch.manual_seed(0)
    model = perturbed(SDTForImageClassification(tiny_config(architecture))).eval()
    x = pixels(model.config)
    with torch.no_grad():
        plain = model(x)
        out = model(x, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=1e-5)
    assert plain.attentions is None
    blocks = blocks_of(model.sdt)
    assert len(out.attentions) == len(blocks)
    for weights, block in zip(out.attentions, blocks):
        heads = block.attn.num_heads
        assert weights.shape[:2] == (2, heads) and weights.shape[2] == weights.shape[3]
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:3]))
        assert (weights >= 0).all()
    as_tuple = model(x, output_attentions=True, output_hidden_states=True, return_dict=False)
    assert len(as_tuple) == 3 and len(as_tuple[2]) == len(blocks)  # logits, hidden states, attentions
    assert all(torch.equal(a, b) for a, b in zip(as_tuple[2], out.attentions))
    assert all(module.attention_recorder is None for module in model.modules() if hasattr(module, "attention_recorder"))


def test_the_config_output_attentions_flag_is_honoured():
    model = SDTModel(tiny_config("isotropic", output_attentions=True)).eval()
    assert len(model(pixels(model.config)).attentions) == model.config.depth


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_attn_implementation_at_load_and_at_run_time(tmp_path, architecture):
    torch.manual_seed(0)
    model = perturbed(SDTForImageClassification(tiny_config(architecture))).eval()
    assert model.config._attn_implementation == "sdpa" and attention_backends(model) == {"sdpa"}
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "attention_backend" not in saved and "_attn_implementation" not in saved
    x = pixels(model.config)
    with torch.no_grad():
        reference = model(x).logits
        for implementation, backend in [("eager", "eager"), ("flex_attention", "flex")]:
            loaded = SDTForImageClassification.from_pretrained(tmp_path, attn_implementation=implementation).eval()
            assert attention_backends(loaded) == {backend}
            torch.testing.assert_close(loaded(x).logits, reference, atol=1e-5, rtol=1e-5)
        loaded.set_attn_implementation("eager")
        assert attention_backends(loaded) == {"eager"}
        torch.testing.assert_close(loaded(x).logits, reference, atol=1e-5, rtol=1e-5)


def test_a_saved_attention_backend_key_is_dropped(tmp_path):
    SDTForImageClassification(tiny_config("isotropic")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attention_backend": "flex"}))  # as folders were saved
    loaded = SDTForImageClassification.from_pretrained(tmp_path)
    assert not hasattr(loaded.config, "attention_backend") and attention_backends(loaded) == {"sdpa"}
