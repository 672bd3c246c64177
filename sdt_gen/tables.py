"""Measurement tables: the scripts that measure write them as JSON, and the docs show them rendered by code.

A benchmark builds a ``Table`` (columns with their number formats, rows of raw values), prints it as Markdown and,
given an output folder, writes ``<folder>/<name>.json`` with the provenance of the run that measured it
(``sdt_gen.provenance``). A doc shows a table between two marker lines::

    <!-- table: compile-regions -->
    ...rendered here...
    <!-- end table -->

and ``python -m sdt_gen.tables docs/measurements.md`` re-renders every marked table from
``docs/measurements/<name>.json``; ``--check`` only reports the tables that differ (a test runs it), so no figure
in the docs is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_file, write_json_atomically

TABLES_FOLDER = "measurements"  # beside the doc: docs/measurements/<name>.json
_MARKED = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


@dataclass
class Column:
    """A column: its heading, the row key it shows, and the format of its values (``"{:.2f}x"``)."""

    heading: str
    key: str
    format: str = "{}"


@dataclass
class Table:
    """A measurement table: columns and rows of raw values (JSON numbers and strings), with its provenance.

    Args:
        name: the file name (``<name>.json``) and the docs' marker.
        columns: what is shown, in order.
        rows: one dict per row, keyed by the columns' ``key`` (more keys are kept in the JSON, not shown).
        provenance: ``RunRecord.finish()`` of the run that measured it.
        notes: one line shown under the table (the setting, what a ratio is against).
    """

    name: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] | None = None
    notes: str | None = None

    def markdown(self) -> str:
        """The table as Markdown, with a line saying where it came from."""
        lines = [
            "| " + " | ".join(column.heading for column in self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        for row in self.rows:
            cells = ["-" if row.get(c.key) is None else c.format.format(row[c.key]) for c in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        if self.notes:
            lines += ["", self.notes]
        if self.provenance is not None:
            lines += ["", provenance_line(self.provenance)]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": [vars(column) for column in self.columns],
            "rows": self.rows,
            "notes": self.notes,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Table":
        return cls(data["name"], [Column(**column) for column in data["columns"]], data["rows"],
                   data.get("provenance"), data.get("notes"))

    def publish(self, out_dir: str | os.PathLike | None) -> None:
        """Prints the table and, with ``out_dir``, writes ``out_dir/<name>.json``."""
        print(self.markdown(), flush=True)
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_json_atomically(Path(out_dir) / f"{self.name}.json", self.to_json())


def provenance_line(record: dict[str, Any]) -> str:
    """One sentence of a provenance record: command, commit, versions, threads, CPU, date."""
    if "command" not in record:  # measured before runs were recorded: the record says what is known
        return f"<sub>{record['note']}</sub>"
    commit = (record.get("commit") or "unknown")[:10] + (" with uncommitted changes" if record.get("dirty") else "")
    versions = record.get("versions", {})
    return (
        f"<sub>Measured by `{record['command']}` at commit {commit}, torch {versions.get('torch')}, "
        f"{record.get('threads')} thread(s), {record.get('cpu')}, {record.get('finished', '')[:10]}.</sub>"
    )


def render_marked_tables(text: str, tables_dir: Path) -> str:
    """``text`` with every marked table replaced by its rendering from ``tables_dir/<name>.json``."""
    def rendered(match: re.Match) -> str:
        path = tables_dir / f"{match['name']}.json"
        if not path.is_file():
            raise FileNotFoundError(f"the table {match['name']!r} has no {path}; run the command above it with --out")
        return match.group(1) + Table.from_json(json.loads(path.read_text())).markdown() + match.group(4)

    return _MARKED.sub(rendered, text)


def stale_tables(doc: str | os.PathLike) -> list[str]:
    """The names of the marked tables of ``doc`` that differ from what their JSON renders, or have no JSON."""
    doc = Path(doc)
    tables_dir = doc.parent / TABLES_FOLDER
    return [
        match["name"] for match in _MARKED.finditer(doc.read_text())
        if not (tables_dir / f"{match['name']}.json").is_file()
        or render_marked_tables(match.group(0), tables_dir) != match.group(0)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the marked tables of Markdown docs from their JSON.")
    parser.add_argument("docs", nargs="+", help="Markdown files with <!-- table: NAME --> markers")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming the stale tables")
    args = parser.parse_args(argv)
    stale = {doc: stale_tables(doc) for doc in args.docs}
    if args.check:
        for doc, names in stale.items():
            for name in names:
                source = Path(doc).parent / TABLES_FOLDER / f"{name}.json"
                problem = "differs from" if source.is_file() else "has no"
                print(f"{doc}: table {name!r} {problem} {source}", file=sys.stderr)
        return 1 if any(stale.values()) else 0
    for doc, names in stale.items():
        if names:
            path = Path(doc)
            with atomic_file(path) as partial:
                Path(partial).write_text(render_marked_tables(path.read_text(), path.parent / TABLES_FOLDER))
            print(f"{doc}: re-rendered {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
