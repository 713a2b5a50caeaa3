"""docs/interlocks.md is the table in code; this test keeps them from drifting."""

from __future__ import annotations

from pathlib import Path

from station.interlocks import INTERLOCKS, table_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "interlocks.md"


def test_interlock_doc_matches_table() -> None:
    assert DOC.read_text() == table_markdown(), "run: python -m station.interlocks"
    for il in INTERLOCKS:
        assert f"`{il.id}`" in DOC.read_text()
