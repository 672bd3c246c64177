"""experiments/decay_study.py end to end on MNIST, in a temporary folder: results, pictures, caching, protocol,
provenance (the machinery: sdt_gen.studies)."""

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import PartialState

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))
import decay_study  # noqa: E402

from sdt_gen import SDTConfig, SDTForImageClassification, save_classifier  # noqa: E402
from sdt_gen.studies import driver, evaluation, protocol, runs  # noqa: E402

PICTURES = ("fd_vs_step.png", "fd_vs_time.png", "samples.png", "decay_maps.png", "gates_vs_timestep.png")
ARMS = ["none", "cag", "rope", "rope+cag"]
# Smaller than --quick: 4 steps, 2 evaluation points, 12 samples of 2 sampling steps, small reference sets.
TINY = [
    "--quick", "--steps", "4", "--num-samples", "12", "--sample-steps", "2", "--batch-size", "64", "--heldout-images", "20",
    "--reference-images", "100", "--bootstrap-replicates", "5", "--arms", *ARMS,
    "--cost-ratios", "none=1", "cag=1.4", "rope=1.2", "rope+cag=1.5",
]


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Path:
    """A random-weights 1-channel SDT classifier of MNIST's 32x32 digits: an evaluator with no training."""
    torch.manual_seed(0)
    config = SDTConfig.from_preset(
        "SDT-H-XT", num_labels=10, id2label={i: str(i) for i in range(10)}, image_size=32, num_channels=1,
        decay_mode="none",
    )
    return save_classifier(SDTForImageClassification(config).eval(), tmp_path_factory.mktemp("evaluator") / "model")


@pytest.fixture(scope="module")
def study(tmp_path_factory, evaluator):
    out = tmp_path_factory.mktemp("study") / "mnist"
    start = time.perf_counter()
    results = decay_study.main(decay_study.build_parser().parse_args([*TINY, "--classifier", str(evaluator), "--out", str(out)]))
    return out, results, time.perf_counter() - start


def test_every_run_and_evaluation_is_in_the_results(study):
    out, results, _ = study
    saved = json.loads((out / "results.json").read_text())
    assert saved["arms"] == ARMS and saved["seeds"] == [0, 1]
    assert set(saved["runs"]) == {f"{arm}-s{s}" for arm in ARMS for s in (0, 1)}
    for run in saved["runs"].values():
        assert list(run["evals"]) == ["2", "4"]
        for metrics in run["evals"].values():
            assert {"fd", "fd_heldout", "fd_bootstrap", "accuracy", "precision", "recall", "heldout_mse"} <= set(metrics)
            assert 0 <= metrics["accuracy"] <= 1 and metrics["fd"] > 0
            assert metrics["fd_bootstrap"]["low"] < metrics["fd"] < metrics["fd_bootstrap"]["high"]
        assert set(run["evals"]["4"]["guidance_sweep"]) == {"1.5", "5"} and "guidance_sweep" not in run["evals"]["2"]
        assert run["training_seconds"] > 0 and run["steps_per_second"] > 0
        assert run["times"]["cpu"][0] < run["times"]["cpu"][1] and run["machines"]
    # Each decayed arm against the same positions without decay (primary), and everything against none.
    assert saved["primary"] == ["cag - none", "rope+cag - rope"]
    assert set(saved["paired"]) == {"cag - none", "rope - none", "rope+cag - rope", "rope+cag - none"}
    for comparison in saved["primary"]:
        assert 0 <= saved["paired"][comparison]["fd_last2"]["p_holm"] <= 1
    assert saved["protocol"]["sampling"]["num_samples"] == 12
    assert saved["protocol"]["threads"] == 1 and saved["protocol"]["arms"] == ARMS
    assert saved["protocol"]["primary"]["metric"] == "fd_last2"
    assert set(saved["equal_time"]["clock"]["fd"]) == set(ARMS) and saved["equal_time"]["clock"]["flagged"] == {}
    assert saved["equal_time"]["cost"]["ratios"]["rope+cag"] == pytest.approx(1.5)
    # Real digits on the same scale: the 500 held-out digits against the (reference subset of the) train split.
    real = saved["real_data"]
    assert real["images"] == 500 and real["fd"]["low"] < real["fd"]["fd"] < real["fd"]["high"]
    strength = saved["gates_vs_timestep"]["strength"]
    assert set(strength) == {"cag-s0", "cag-s1", "rope+cag-s0", "rope+cag-s1"}
    assert len(strength["cag-s0"]) == len(protocol.GATE_TIMESTEPS)
    # The rope arms trained with rotary positions, the others with DiT's sin-cos table.
    for arm, position in (("rope+cag", "rope"), ("none", "sincos")):
        config = json.loads((runs.final_pipeline(out, f"{arm}-s0") / "transformer" / "config.json").read_text())
        assert config["position_embedding"] == position


def saved_real_fd(out: Path) -> float:
    return json.loads((out / "results.json").read_text())["real_data"]["fd"]["fd"]


def test_summary_and_pictures_are_written(study):
    out, _, _ = study
    summary = (out / "summary.md").read_text()
    assert "**Primary metric**" in summary and "| rope+cag - rope |" in summary
    assert "| arm | FD | FD s.e. within run | FD held-out |" in summary and "Guidance sweep" in summary and "At equal training time" in summary
    assert f"Real digits: the 500 held-out digits score FD {saved_real_fd(out):.3g}" in summary
    assert "cag - none" in summary and ("no measurable difference" in summary or "interval excludes 0" in summary
                                        or "Holm adjustment" in summary)
    for name in PICTURES:
        assert (out / name).stat().st_size > 1000, name


def test_the_results_and_summary_carry_their_provenance(study):
    out, _, _ = study
    record = json.loads((out / "results.json").read_text())["provenance"]["study"]
    assert {"command", "commit", "dirty", "versions", "threads", "cpu", "started", "finished", "wall_seconds",
            "cpu_seconds"} <= set(record)
    assert torch.__version__.startswith(record["versions"]["torch"]) and record["wall_seconds"] > 0
    summary = (out / "summary.md").read_text()
    assert "## Provenance" in summary and f"at commit {record['commit']}" in summary and record["cpu"] in summary


def test_a_second_call_retrains_nothing(study, evaluator, monkeypatch):
    out, results, first_seconds = study
    calls = []
    monkeypatch.setattr(runs, "run_script", lambda script, argv: calls.append(argv))
    start = time.perf_counter()
    again = decay_study.main(decay_study.build_parser().parse_args([*TINY, "--classifier", str(evaluator), "--out", str(out)]))
    assert calls == []
    assert time.perf_counter() - start < first_seconds / 2
    assert again["summary"] == results["summary"]


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch):
    started = tmp_path / "runs" / "cag-s0" / "000-SDT-Ti-4-mnist32-flow"
    (started / "checkpoints").mkdir(parents=True)
    (started / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(runs, "run_script", lambda script, argv: calls.append((script, argv)))
    args = decay_study.build_parser().parse_args(TINY)
    decay_study.apply_study_defaults(args)
    runs.train_to(args, tmp_path, "cag", 0, 4, decay_study.TRAINERS.denoiser)
    assert not started.exists() and "--resume" not in calls[0][1]
    assert calls[0][0] == ROOT / "train_dit.py" and calls[0][1][-2:] == ["--results-dir", str(tmp_path / "runs" / "cag-s0")]
    (started / "checkpoints" / "step-0000002").mkdir(parents=True)
    runs.train_to(args, tmp_path, "cag", 0, 4, decay_study.TRAINERS.denoiser)
    assert calls[1][1][-2:] == ["--resume", "latest"]


def test_workers_split_the_runs_and_only_a_complete_study_is_analysed(study, evaluator, tmp_path, monkeypatch, capsys):
    out, _, _ = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "results.json").unlink()
    for name in ("rope-s0", "cag-s1"):  # runs 2 and 5 of (s0: none cag rope rope+cag, s1: ...): one per worker
        (copy / "evals" / name / "step-0000004" / "metrics.json").unlink()
    trained = []
    monkeypatch.setattr(driver, "train_to", lambda args, out, arm, seed, step, trainer: trained.append((arm, seed)))
    monkeypatch.setattr(driver, "evaluate", lambda *args: None)
    argv = [*TINY, "--classifier", str(evaluator), "--out", str(copy)]
    assert decay_study.main(decay_study.build_parser().parse_args([*argv, "--worker", "0/2"])) is None
    assert trained == [("rope", 0)] and not (copy / "results.json").exists()  # cag-s1 belongs to worker 1
    with pytest.raises(SystemExit):
        decay_study.build_parser().parse_args([*argv, "--worker", "2/2"])
    assert "argument --worker: expected I/N with 0 <= I < N (e.g. 0/2), got '2/2'" in capsys.readouterr().err


def test_a_study_carried_to_another_machine_is_analysed_the_same(study, evaluator, tmp_path):
    """What another machine needs to finish a study: the records, not the checkpoints, pipelines or samples."""
    out, results, _ = study
    carried = tmp_path / "carried"
    argv = [*TINY, "--classifier", str(evaluator), "--out", str(out)]
    assert decay_study.main(decay_study.build_parser().parse_args([*argv, "--carry-to", str(carried)])) is None
    assert sorted(p.name for p in (carried / "runs").iterdir()) == sorted(results["runs"])
    assert {p.name for p in carried.rglob("*.safetensors")} == {"decay_maps.safetensors"}  # no weights
    size = sum(f.stat().st_size for f in carried.rglob("*") if f.is_file())
    assert size < 3_000_000
    again = decay_study.main(decay_study.build_parser().parse_args([*TINY, "--classifier", str(evaluator), "--out", str(carried)]))
    assert again["summary"] == results["summary"] and again["gates_vs_timestep"] == results["gates_vs_timestep"]
    assert (carried / "decay_maps.png").stat().st_size > 1000 and (carried / "samples.png").stat().st_size > 1000


def test_a_carried_study_retrains_its_evaluator_and_refuses_another(tmp_path):
    args = decay_study.build_parser().parse_args(["--quick", "--evaluator-epochs", "1", "--out", str(tmp_path)])
    decay_study.apply_study_defaults(args)
    processes = PartialState(cpu=True)
    trainer = decay_study.TRAINERS.classifier
    _, first = evaluation.prepare_evaluator(args, tmp_path, processes, trainer)
    shutil.rmtree(Path(first["path"]).parent)  # carried without the weights
    _, again = evaluation.prepare_evaluator(args, tmp_path, processes, trainer)
    assert again["weights_sha256"] == first["weights_sha256"] and Path(again["path"]).is_dir()
    record = json.loads((tmp_path / "evaluator" / "evaluator.json").read_text())
    (tmp_path / "evaluator" / "evaluator.json").write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
    shutil.rmtree(Path(first["path"]).parent)
    with pytest.raises(SystemExit, match=r"is not the one this study was scored with \(sha256 000000000000\)"):
        evaluation.prepare_evaluator(args, tmp_path, processes, trainer)


def test_another_protocol_in_the_same_folder_is_refused(study, evaluator):
    out, _, _ = study
    with pytest.raises(SystemExit, match=r"another protocol \(sampling: .*'ddpm'"):
        decay_study.main(decay_study.build_parser().parse_args(
            [*TINY, "--classifier", str(evaluator), "--out", str(out), "--scheduler", "ddpm"]
        ))


def test_other_arms_in_the_same_folder_are_refused(study, evaluator):
    out, _, _ = study
    with pytest.raises(SystemExit, match=r"another protocol \(arms: \['none', 'cag', 'rope', 'rope\+cag'\] there"):
        decay_study.main(decay_study.build_parser().parse_args(
            [*TINY, "--classifier", str(evaluator), "--out", str(out), "--arms", "none", "fixed"]
        ))


@pytest.mark.parametrize("arm", ["rope+gag", "alibi", "sincos+cag", "rope+none", "cag+rope", ""])
def test_a_bad_arm_fails_clearly(arm, tmp_path):
    with pytest.raises(SystemExit, match=r"--arms: unknown arm .*; an arm is a decay mode"):
        decay_study.main(decay_study.build_parser().parse_args(["--quick", "--arms", arm, "--out", str(tmp_path)]))
    assert not any(tmp_path.iterdir())


def test_the_token_count_picks_the_default_set():
    args = decay_study.build_parser().parse_args(["--tokens", "256"])
    decay_study.apply_study_defaults(args)
    assert (args.model, args.arms, args.seeds, args.threads) == ("SDT-Ti/2", ["none", "cag", "rope", "rope+cag"], [0, 1, 2], 1)
    assert args.out == "studies/mnist-decay-256" and args.compare_with.endswith("docs/decay_study/results.json")
    args = decay_study.build_parser().parse_args([])
    decay_study.apply_study_defaults(args)
    assert (args.model, args.arms, args.out) == ("SDT-Ti/4", ["none", "fixed", "cag"], "studies/mnist-decay")


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    results = decay_study.main(decay_study.build_parser().parse_args(
        ["--quick", "--arms", "none", "rope+cag", "--out", str(tmp_path / "quick")]
    ))
    assert results["evaluator"]["heldout_top1"] > 0.5
    for name in PICTURES:
        assert (tmp_path / "quick" / name).is_file()
