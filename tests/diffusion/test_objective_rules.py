"""Each rule of ``OBJECTIVE_RULES``, checked at every place that follows it: the model, the loss, training,
the pipeline, the demo and the decay study."""

import sys
from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
import decay_study  # noqa: E402
import train_dit  # noqa: E402

from sdt_gen import SDTPipeline, SDTTransformer2DModel  # noqa: E402
from sdt_gen.demo import DemoModel  # noqa: E402
from sdt_gen.diffusion import (  # noqa: E402
    OBJECTIVE_RULES,
    OBJECTIVES,
    TIME_SAMPLINGS,
    DenoisingObjective,
    make_objective,
    objective_rules,
)
from sdt_gen.pipelines import SCHEDULERS, default_scheduler, scheduler_by_name, scheduler_names  # noqa: E402

RULES = [OBJECTIVE_RULES[name] for name in OBJECTIVES]


def tiny_model(rules, learn_sigma: bool | None = None) -> SDTTransformer2DModel:
    torch.manual_seed(0)
    return SDTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=3,
        objective=rules.name, learn_sigma=rules.learned_sigma if learn_sigma is None else learn_sigma,
    ).eval()


def exported_pipeline(rules) -> SDTPipeline:
    model = tiny_model(rules)
    return SDTPipeline(transformer=model, scheduler=default_scheduler(model.config))


def test_every_objective_has_a_consistent_row():
    assert set(OBJECTIVES) == {"ddpm", "flow"}
    for rules in RULES:
        assert objective_rules(rules.name) is rules
        assert {rules.default_sampler, rules.exported_scheduler, *rules.few_step_samplers} <= set(rules.samplers)
        assert set(rules.samplers) <= set(SCHEDULERS) and set(rules.time_samplings) <= set(TIME_SAMPLINGS)
    with pytest.raises(ValueError, match="unknown objective 'edm'; expected one of ddpm, flow"):
        objective_rules("edm")


@pytest.mark.parametrize("rules", RULES, ids=OBJECTIVES)
def test_learned_variance_is_allowed_exactly_where_the_table_says(rules):
    if rules.learned_sigma:
        assert tiny_model(rules, learn_sigma=True).out_channels == 2
        assert set(make_objective(rules.name, learn_sigma=True)(tiny_model(rules), torch.randn(2, 1, 8, 8),
                                                                 torch.tensor([3, 500]), {"class_labels": torch.tensor([0, 1])})) == {"loss", "mse", "vb"}
    else:
        for refuse in (lambda: tiny_model(rules, learn_sigma=True), lambda: make_objective(rules.name, learn_sigma=True)):
            with pytest.raises(ValueError, match=f"a {rules.title} model predicts {rules.prediction} and no variance"):
                refuse()
    # train_dit.py's --learn-sigma is on by default: it applies where the objective allows it.
    args = train_dit.build_parser().parse_args(["--objective", rules.name, "--model", "SDT-Ti/2"])
    assert train_dit.build_model(args, (1, 8, 8), 3).config.learn_sigma == rules.learned_sigma


@pytest.mark.parametrize("rules", RULES, ids=OBJECTIVES)
def test_the_loss_has_the_interface_and_the_time_samplings_of_its_row(rules):
    for time_sampling in TIME_SAMPLINGS:
        if time_sampling not in rules.time_samplings:
            with pytest.raises(ValueError, match=f"time_sampling={time_sampling!r} is not one of the {rules.title}"):
                make_objective(rules.name, learn_sigma=False, time_sampling=time_sampling)
            continue
        loss_fn = make_objective(rules.name, learn_sigma=False, time_sampling=time_sampling)
        assert isinstance(loss_fn, DenoisingObjective) and loss_fn.name == rules.name and loss_fn.num_timesteps == 1000
        t = loss_fn.sample_timesteps(4, generator=torch.Generator().manual_seed(0))
        x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
        xt, target = loss_fn.noised(x0, t, noise)
        assert xt.shape == target.shape == x0.shape
        losses = loss_fn(tiny_model(rules, learn_sigma=False), x0, t, {"class_labels": torch.zeros(4, dtype=torch.long)}, noise)
        assert losses["loss"].shape == (4,)


@pytest.mark.parametrize("rules", RULES, ids=OBJECTIVES)
def test_the_pipeline_is_exported_with_and_accepts_the_samplers_of_its_row(rules):
    pipe = exported_pipeline(rules)
    assert isinstance(pipe.scheduler, SCHEDULERS[rules.exported_scheduler])
    assert scheduler_names(pipe.transformer.config) == list(rules.samplers)
    for name in SCHEDULERS:
        pipe.scheduler = scheduler_by_name(name, default_scheduler(pipe.transformer.config).config)
        if name in rules.samplers:
            assert pipe(class_labels=[0], num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 1)
        else:
            with pytest.raises(ValueError, match=f"trained with the {rules.title} objective .* cannot sample it: use"):
                pipe(class_labels=[0], num_inference_steps=2, output_type="np")


@pytest.mark.parametrize("rules", RULES, ids=OBJECTIVES)
def test_training_previews_the_demo_and_the_study_use_the_default_sampler(rules, tmp_path):
    args = train_dit.build_parser().parse_args(["--sample-steps", "1", "--samples-per-class", "1", "--sample-classes", "0"])
    pipe = exported_pipeline(rules)
    train_dit.save_sample_grid(pipe, args, tmp_path / "grid.png", torch.device("cpu"))
    assert isinstance(pipe.scheduler, SCHEDULERS[rules.default_sampler]) and (tmp_path / "grid.png").is_file()

    demo = DemoModel(exported_pipeline(rules), "tiny")
    assert demo.schedulers == list(rules.samplers)
    assert demo.default_scheduler == rules.exported_scheduler  # the pipeline's own sampler
    unnamed = exported_pipeline(rules)
    unnamed.scheduler = EulerDiscreteScheduler()  # not one of SCHEDULERS: the demo offers the objective's default
    assert DemoModel(unnamed, "tiny").default_scheduler == rules.default_sampler

    study = decay_study.build_parser().parse_args(["--quick", "--objective", rules.name])
    decay_study.apply_study_defaults(study)
    assert study.scheduler == rules.default_sampler and study.time_sampling in rules.time_samplings
