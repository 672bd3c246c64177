"""benchmarks/bench_sampling.py: every pipeline against DiTPipeline on the same batch, published with --out."""

import pytest


def test_out_writes_the_printed_table_one_row_per_pipeline_against_dit(publish):
    _, tables = publish("bench_sampling.py", "--preset", "SDT-Ti/2", "--latent-size", "4", "--batch", "1",
                        "--steps", "1", "--repeats", "1", "--threads", "1", "--clock", "process")
    table = tables["sampling"]
    assert [row["pipeline"] for row in table.rows] == ["DiTPipeline", "SDT none", "SDT fixed", "SDT cag"]
    assert table.rows[0]["time_ratio"] == table.rows[0]["best_time_ratio"] == 1
    assert all(row["images_per_s"] == pytest.approx(1 / row["seconds"]) for row in table.rows)
    assert "batch 1, 1 ddim steps, guidance 4.0, 1 interleaved runs, process time" in table.notes
