"""The GPU report: CUDA tests, attention cost, training and sampling throughput, in one run.

Written for one H100-class GPU and at most about 8 minutes. Each section runs in turn and the
report is rewritten after each, so a section that fails or a run that is stopped still leaves
everything measured before it:

1. the CUDA tests (``pytest -m cuda``): flex against sdpa for the layer and the whole model, bf16
   autocast training steps, ``torch.compile`` with flex, gradient checkpointing with flex;
2. attention forward + backward time and peak memory, decay ``none`` / ``fixed`` / ``cag`` x backend
   ``sdpa`` / ``flex``, N = 256, 1024, 4096, S/2 and XL/2 widths, as ratios to ``none``;
3. training images/s of SDT-XL/2 and SDT-B/2 on random 32x32x4 latents in bf16 autocast, with and
   without ``torch.compile``: ``cag`` and ``none`` against diffusers' ``DiTTransformer2DModel`` of the
   same shape;
4. sampling images/s of ``SDTPipeline`` against ``DiTPipeline`` (``bench_sampling.py``).

    python benchmarks/gpu_report.py --out gpu-report        # writes gpu-report/report.md and report.json

Both files carry the run's provenance (command, commit, versions, threads, CPU, times; ``sdt_gen.provenance``).
Without CUDA it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from sdt_gen.files import write_text_atomically
from sdt_gen.provenance import RunRecord
from sdt_gen.tables import provenance_line

ROOT = Path(__file__).resolve().parents[1]
TRAINING_PRESETS = {"SDT-XL/2": 32, "SDT-B/2": 64}  # preset: batch
TRAINING_MODELS = ("DiT", "none", "cag")


#################################################################################
#                                   Sections                                    #
#################################################################################

def cuda_tests(out: Path, timeout: float) -> dict:
    """Run ``pytest -m cuda`` and count its outcomes from the JUnit XML it writes."""
    junit = out / "cuda-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    outcomes = {"passed": [], "failed": [], "skipped": []}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes["failed"].append(name)
        elif case.find("skipped") is not None:
            outcomes["skipped"].append(name)
        else:
            outcomes["passed"].append(name)
    return {"exit_code": run.returncode, **outcomes, "output_tail": run.stdout[-3000:]}


def attention_section(iters: int) -> list[dict]:
    from bench_attention import attention_rows

    rows = []
    for backend in ("sdpa", "flex"):
        for row in attention_rows(torch.device("cuda"), backend, torch.float32, (256, 1024, 4096), iters=iters):
            rows.append({"backend": backend, **row})
    return rows


def training_model(kind: str, preset: str):
    from diffusers import DiTTransformer2DModel

    from sdt_gen import SDT_PRESETS, SDTTransformer2DModel

    shape = SDT_PRESETS[preset]
    if kind == "DiT":
        return DiTTransformer2DModel(
            num_attention_heads=shape["num_heads"], attention_head_dim=shape["hidden_size"] // shape["num_heads"],
            in_channels=4, out_channels=8, num_layers=shape["depth"], sample_size=32, patch_size=shape["patch_size"],
            num_embeds_ada_norm=1000,
        )
    return SDTTransformer2DModel.from_preset(preset, sample_size=32, decay_mode=kind, attention_backend="auto")


def training_section(steps: int) -> list[dict]:
    from bench_training import time_steps

    rows = []
    for preset, batch in TRAINING_PRESETS.items():
        latents = torch.randn(batch, 4, 32, 32, device="cuda")
        labels = torch.randint(0, 1000, (batch,), device="cuda")
        for compiled in (False, True):
            seconds = {}
            for kind in TRAINING_MODELS:
                torch.manual_seed(0)
                model = training_model(kind, preset).cuda().train()
                runner = torch.compile(model) if compiled else model
                seconds[kind] = time_steps(runner, lambda: (latents, labels), steps, warmup=3,
                                           autocast_dtype=torch.bfloat16)
                del model, runner
                torch.cuda.empty_cache()
            rows += [
                dict(preset=preset, compile=compiled, model=kind, batch=batch, images_per_s=batch / s,
                     time_vs_none=s / seconds["none"], time_vs_dit=s / seconds["DiT"])
                for kind, s in seconds.items()
            ]
    return rows


def sampling_section() -> list[dict]:
    from bench_sampling import build_parser, sampling_rows

    args = build_parser().parse_args(
        ["--preset", "SDT-XL/2", "--latent-size", "32", "--batch", "16", "--steps", "25", "--repeats", "3",
         "--device", "cuda", "--dtype", "float16"]
    )
    return sampling_rows(args)


#################################################################################
#                                    Report                                     #
#################################################################################

def markdown_table(rows: list[dict]) -> str:
    """A markdown table of ``rows`` (dicts with the same keys); floats with 3 significant digits."""
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])

    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    """``report.json`` (everything) and ``report.md`` (the tables), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# GPU report: {report['device']}", "", f"torch {report['torch']}, CUDA {report['cuda']}, "
             f"{report['seconds']:.0f} s in all.", ""]
    if "provenance" in report:
        lines += [provenance_line(report["provenance"]), ""]
    if "note" in report:
        lines += [report["note"][0].upper() + report["note"][1:] + ".", ""]
    tests = report["sections"].get("cuda_tests")
    if tests is not None:
        lines += ["## CUDA tests (`pytest -m cuda`)", ""]
        if "error" in tests:
            lines += [f"Did not run: {tests['error']}", ""]
        else:
            lines += [f"{len(tests['passed'])} passed, {len(tests['failed'])} failed, {len(tests['skipped'])} skipped.", ""]
            lines += [f"- FAILED {name}" for name in tests["failed"]] + [""]
    for key, title in (("attention", "Attention forward + backward (ratios to decay `none`)"),
                       ("training", "Training, bf16 autocast, random 32x32x4 latents"),
                       ("sampling", "Sampling, SDTPipeline against DiTPipeline")):
        section = report["sections"].get(key)
        if section is None:
            continue
        lines += [f"## {title}", ""]
        lines += [f"Did not run: {section['error']}", ""] if isinstance(section, dict) else [markdown_table(section)]
    for name, text in (("report.json", json.dumps(report, indent=2)), ("report.md", "\n".join(lines))):
        write_text_atomically(out / name, text)


def main(args) -> int:
    record = RunRecord.start()
    out = Path(args.out)
    if not torch.cuda.is_available():
        # Scripts that collect reports expect one: it says that nothing was measured, and why.
        note = "no CUDA device here; nothing measured (run it on a machine with a GPU)"
        write_report(out, {"device": "none (no CUDA)", "torch": torch.__version__, "cuda": torch.version.cuda,
                           "seconds": 0.0, "sections": {}, "note": note, "provenance": record.finish()})
        print(f"gpu_report: {note}; wrote {out / 'report.md'}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "seconds": 0.0, "sections": {}}
    sections = {
        "cuda_tests": lambda: cuda_tests(out, timeout=args.test_timeout),
        "attention": lambda: attention_section(args.iters),
        "training": lambda: training_section(args.train_steps),
        "sampling": sampling_section,
    }
    for name in args.sections:
        print(f"gpu_report: {name} ...", flush=True)
        try:
            report["sections"][name] = sections[name]()
        except Exception as error:  # one broken section must not cost the others their numbers
            report["sections"][name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        report["seconds"] = time.perf_counter() - start
        report["provenance"] = record.finish()  # renewed after each section: a stopped run's report is complete
        write_report(out, report)
    print(f"gpu_report: {out / 'report.md'} ({report['seconds']:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu-report", help="folder for report.md and report.json")
    parser.add_argument("--sections", nargs="+", default=["cuda_tests", "attention", "training", "sampling"],
                        choices=["cuda_tests", "attention", "training", "sampling"], help="what to run, in order")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per attention setting")
    parser.add_argument("--train-steps", type=int, default=10, help="timed optimizer steps per training setting")
    parser.add_argument("--test-timeout", type=float, default=240, help="seconds the CUDA tests may take")
    return parser


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
