"""docs/interlocks.md is the table in code; this test keeps them from drifting."""

from __future__ import annotations

from pathlib import Path

from station.interlock_doc import document
from station.interlocks import INTERLOCKS

DOC = Path(__file__).resolve().parents[2] / "docs" / "interlocks.md"


def test_interlock_doc_matches_table() -> None:
    assert DOC.read_text() == document(), "run: python -m station.interlock_doc"
    for il in INTERLOCKS:
        assert f"`{il.id}`" in DOC.read_text()
