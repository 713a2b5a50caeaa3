"""The committed interface docs are exactly what the generator writes from the data files."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import docgen
from drivers.bms.protocol import PackProtocol
from drivers.plc.regmap import load_register_map

GENERATED = docgen.generate()


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_committed_doc_is_up_to_date(name: str) -> None:
    path = docgen.DOCS_DIR / name
    assert path.exists(), f"{path} missing: run python -m drivers.docgen"
    assert path.read_text() == GENERATED[name], (
        f"{path} is out of date: run python -m drivers.docgen and commit the result"
    )


def test_plc_doc_names_every_signal_and_command() -> None:
    text = GENERATED[docgen.PLC_DOC]
    rmap = load_register_map()
    for sig in rmap.signals.values():
        assert f"`{sig.name}" in text, sig.name
        assert str(sig.address) in text
    for cmd in rmap.commands.values():
        assert f"| {cmd.code} | `{cmd.name}` |" in text
    for topic in ("exception 02", "stop_request", "plc_heartbeat", "skips 0", "category-2"):
        assert topic in text


def test_every_command_has_preconditions() -> None:
    assert set(load_register_map().commands) <= set(docgen.COMMAND_PRECONDITIONS)


def test_can_doc_names_every_message_and_signal() -> None:
    text = GENERATED[docgen.CAN_DOC]
    proto = PackProtocol()
    for msg in proto.db.messages:
        assert f"### {msg.name}" in text
        assert f"0x{proto.pgn_of(msg.name):04X}" in text
        assert msg.dbc is not None and "RxTimeoutMs" in msg.dbc.attributes, msg.name
        for sig in msg.signals:
            assert f"`{sig.name}`" in text, sig.name
            assert sig.comment, f"{msg.name}.{sig.name} has no meaning in the DBC"
    for topic in ("ip link add dev vcan0 type vcan", "TP.CM", "0x20", "little-endian"):
        assert topic in text


def test_check_mode_reports_stale_docs(tmp_path: Path) -> None:
    assert docgen.main(["--out", str(tmp_path), "--check"]) == 1
    assert docgen.main(["--out", str(tmp_path)]) == 0
    assert docgen.main(["--out", str(tmp_path), "--check"]) == 0


def test_can_doc_names_every_transport_drop_and_vin_rule() -> None:
    from drivers.bms.adapter import STAT_KEYS
    from drivers.bms.j1939_tp import DROP_REASONS

    text = GENERATED[docgen.CAN_DOC]
    for reason in DROP_REASONS:
        assert f"`tp_{reason}`" in text, reason
    for key in STAT_KEYS:
        if key.startswith("vin_") and key != "vin_applied":
            assert f"`{key}`" in text, key
    for topic in ("T1 = 750 ms", "50-200 ms apart", "ISO 3779", "9..1785 bytes"):
        assert topic in text, topic
