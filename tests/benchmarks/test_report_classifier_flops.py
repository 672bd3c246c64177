"""benchmarks/report_classifier_flops.py: sizes of the presets and throughput per decay mode, published with --out."""

import pytest


def test_out_writes_both_printed_tables(publish):
    _, tables = publish("report_classifier_flops.py", "--presets", "SDT-H-XT", "SDT-ViT-Ti/16", "--image-size", "32",
                        "--throughput-preset", "SDT-H-XT", "--batch-size", "1", "--iters", "1", "--warmup", "0")
    assert sorted(tables) == ["classifier-throughput", "classifiers"]
    sizes = tables["classifiers"].rows
    assert [row["preset"] for row in sizes] == ["SDT-H-XT", "SDT-ViT-Ti/16"]
    assert all(row["gmacs"] == pytest.approx(row["flops"] / 2e9) and row["params"] > 0 for row in sizes)
    rates = tables["classifier-throughput"].rows
    assert [row["decay"] for row in rates] == ["none", "fixed", "cag"]
    assert rates[0]["ratio"] == 1 and all(row["images_per_s"] > 0 for row in rates)
