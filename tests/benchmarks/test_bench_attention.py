"""benchmarks/bench_attention.py: one layer per width and decay mode, ratios to `none`, published with --out."""


def test_out_writes_the_printed_table_one_row_per_width_and_mode_against_none(publish):
    _, tables = publish("bench_attention.py", "--tokens", "16", "--tokens-per-batch", "16", "--iters", "1",
                        "--clock", "process")
    assert list(tables) == ["attention-layer"]
    table = tables["attention-layer"]
    assert [column.heading for column in table.columns][4:6] == ["time / none", "saved-for-backward / none"]
    assert [(row["shape"], row["mode"]) for row in table.rows] == [
        (shape, mode) for shape in ("S/2", "XL/2") for mode in ("none", "fixed", "cag")
    ]
    nones = [row for row in table.rows if row["mode"] == "none"]
    assert all(row["time_ratio"] == row["memory_ratio"] == 1 for row in nones)
    assert all(row["ms"] > 0 and row["mib"] > 0 for row in table.rows) and "process time" in table.notes
