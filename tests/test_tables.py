"""Measurement tables in the docs are what their JSON renders: a figure changed by hand fails here."""

import json
from pathlib import Path

import pytest

from sdt_gen.provenance import RunRecord
from sdt_gen.tables import Column, Table, main, render_marked_tables, stale_tables

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_in_the_docs_is_what_its_json_renders(doc):
    assert stale_tables(doc) == [], f"re-render with: python -m sdt_gen.tables {doc.relative_to(ROOT)}"


def published(tmp_path: Path) -> Path:
    """A doc with one marked table and its JSON, as a benchmark's --out and the renderer leave them."""
    table = Table("speed", [Column("mode", "mode"), Column("time / none", "ratio", "{:.2f}x")],
                  [dict(mode="none", ratio=1.0), dict(mode="cag", ratio=1.3712)], RunRecord.start(["bench.py"]).finish(),
                  "CPU time, one thread.")
    table.publish(tmp_path / "measurements")
    doc = tmp_path / "measurements.md"
    doc.write_text("# Measurements\n\n<!-- table: speed -->\nold\n<!-- end table -->\n\nText after.\n")
    assert main([str(doc)]) == 0
    return doc


def test_rendering_fills_the_markers_and_a_hand_edit_is_caught(tmp_path, capsys):
    doc = published(tmp_path)
    text = doc.read_text()
    assert "| cag | 1.37x |" in text and "Measured by `python bench.py` at commit" in text and "Text after." in text
    assert stale_tables(doc) == [] and main([str(doc), "--check"]) == 0

    doc.write_text(text.replace("| cag | 1.37x |", "| cag | 1.20x |"))
    assert stale_tables(doc) == ["speed"]
    assert main([str(doc), "--check"]) == 1
    assert "table 'speed' differs" in capsys.readouterr().err
    main([str(doc)])
    assert doc.read_text() == text


def test_a_marker_without_its_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the table 'missing' has no .*missing.json"):
        render_marked_tables("<!-- table: missing -->\n<!-- end table -->", tmp_path)


def test_a_table_keeps_raw_values_and_shows_absent_ones_as_a_dash(tmp_path):
    table = Table("t", [Column("a", "a", "{:.1f}"), Column("b", "b")], [dict(a=0.25, b=None, extra=3)])
    table.publish(tmp_path)
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["rows"] == [{"a": 0.25, "b": None, "extra": 3}]
    assert "| 0.2 | - |" in Table.from_json(data).markdown()


def test_check_names_a_table_without_json_in_one_line(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- table: absent -->\n<!-- end table -->\n")
    assert stale_tables(doc) == ["absent"] and main([str(doc), "--check"]) == 1
    assert capsys.readouterr().err.strip() == f"{doc}: table 'absent' has no {tmp_path / 'measurements' / 'absent.json'}"
