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


# ---------------------------------------------------------------------------- OPC UA


def _opcua_section(text: str) -> str:
    return text[text.index("## OPC UA addressing"):]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _opcua_map_file(tmp_path: Path, outputs: str, replace: dict[str, str]) -> Path:
    """The shipped node map with its [outputs] table replaced and some lines changed."""
    import re

    from drivers.plc.nodemap import DEFAULT_MAP

    text = (Path(docgen.__file__).parent / "plc" / "maps" / DEFAULT_MAP).read_text()
    text, n = re.subn(r"(?ms)^\[outputs\]\n.*?(?=^\[\[signal\]\])", outputs + "\n\n", text)
    assert n == 1
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "opcua_map.toml"
    path.write_text(text)
    return path


def test_plc_doc_intro_names_both_addressings_and_the_shared_part_is_protocol_neutral() -> None:
    text = GENERATED[docgen.PLC_DOC]
    titles = [a.title for a in docgen.PLC_ADDRESSINGS]
    assert titles == ["Modbus TCP addressing", "OPC UA addressing"]
    assert "one section per protocol:\nModbus TCP addressing and OPC UA addressing." in text
    for addressing in docgen.PLC_ADDRESSINGS:
        assert f"## {addressing.title}\n\nFrom `{addressing.source}`." in text
        assert f"`{addressing.source}`" in text.split("\n", 3)[2]  # the generated note
    shared = text[:text.index("## Modbus TCP addressing")]
    for word in ("register ", "registers", "fc3", "fc16", "poll", "subscri", "publish"):
        assert word not in shared.lower(), word


def test_opcua_section_lists_every_signal_with_its_node_and_data_type() -> None:
    from drivers.plc.nodemap import load_node_map

    section = _opcua_section(GENERATED[docgen.PLC_DOC])
    nmap = load_node_map()
    assert nmap.output_mode == "method"
    for sig in nmap.signals.values():
        assert sig.node is not None
        opc_type = sig.type if sig.count == 1 else f"{sig.type}[{sig.count}]"
        unit = f" {sig.unit} " if sig.unit else "  "
        row = f"| `{sig.node}` | `{sig.name}` | {opc_type} |"
        line = next((ln for ln in section.splitlines() if ln.startswith(row)), None)
        assert line is not None, sig.name
        assert line.endswith(f"|{unit}| {docgen._direction(sig.direction)} | CurrentRead |")
        if sig.enum is not None:
            assert "code of `" in line or "command code" in line, sig.name
    assert "`Float[12]` is one-dimensional: `ValueRank` 1,\n  `ArrayDimensions` [12]" in section
    assert f"namespace **`{nmap.namespace_uri}`**" in section
    assert f"`Objects/{'/'.join(nmap.root)}`" in section


def test_opcua_section_gives_the_method_and_its_arguments_in_order() -> None:
    from drivers.plc.nodemap import load_node_map

    section = _opcua_section(GENERATED[docgen.PLC_DOC])
    nmap = load_node_map()
    assert f"- object: `{nmap.method_object}`\n- method: `{nmap.method}`" in section
    table = section[section.index("| Argument | Signal | Data type |"):]
    rows = [ln.strip("| ").split(" | ") for ln in table.splitlines()[2:]
            if ln.startswith("| ")]
    assert rows == [[str(i), f"`{n}`", nmap.signals[n].type]
                    for i, n in enumerate(nmap.arguments, start=1)]
    assert "Write requests in order" not in section


def test_a_write_mode_map_renders_its_write_order_with_cmd_seq_last(tmp_path: Path) -> None:
    from drivers.plc.contract import load_contract
    from drivers.plc.nodemap import SEQ_SIGNAL, load_node_map

    order = [["stop_request", "ctrl_heartbeat"], ["cmd_code", "cmd_param1", "cmd_param2"],
             [SEQ_SIGNAL]]
    outputs = "[outputs]\nmode = \"write\"\nwrite_order = " + repr(order).replace("'", '"')
    path = _opcua_map_file(tmp_path, outputs, {
        'node = "s=SwapStation.Inputs.lift_height"': 'path = "Inputs/lift_height"'})
    contract = load_contract()
    nmap = load_node_map(path, contract=contract)
    section = docgen.render_opcua_addressing(contract, nmap)

    steps = [ln for ln in section.splitlines() if ln[:1].isdigit() and ". `" in ln]
    assert steps == [f"{i}. " + ", ".join(f"`{n}`" for n in step)
                     for i, step in enumerate(order, start=1)]
    assert steps[-1] == f"{len(order)}. `{SEQ_SIGNAL}`"
    assert f"`{SEQ_SIGNAL}` comes alone and last" in section
    assert "WriteOutputs" not in section and "| Argument |" not in section
    for sig in nmap.outputs():
        assert f"| `{sig.name}` | UInt16 |" in section
        line = next(ln for ln in section.splitlines() if f"| `{sig.name}` |" in ln)
        assert line.endswith("| CurrentRead, CurrentWrite |"), line
    assert "| browse path `SwapStation/Inputs/lift_height` | `lift_height` | Float |" in section
    assert "signals are given by string NodeIds and by browse paths" in _flat(section)


def test_lifetime_rule_is_the_configs() -> None:
    from station.config import OpcUaSection

    factor, floor = docgen.lifetime_rule()
    for k in range(1, 1001):
        assert OpcUaSection(keepalive_count=k).lifetime_count == max(factor * k, floor), k


def test_opcua_numbers_come_from_the_configuration_and_the_link() -> None:
    """Every figure of the section follows the settings it states: rendered with other
    settings, the other figures appear and the defaults are gone."""
    from drivers.plc.contract import load_contract
    from drivers.plc.opcua_link import STALL_MARGIN, silence_limit_s
    from station.config import OpcUaSection, PlcSection

    sec = OpcUaSection(publishing_interval_ms=4, keepalive_count=35, sampling_interval_ms=3,
                       queue_size=2, session_timeout_s=45, request_timeout_s=0.75,
                       connect_timeout_s=8, endpoint="opc.tcp://plc.example:4841/ua",
                       application_uri="urn:example:swapd", pki_dir=Path("/srv/pki"),
                       security_policy="Aes256Sha256RsaPss", security_mode="Sign")
    plc = PlcSection(protocol="opcua", opcua=sec, heartbeat_period_s=0.05, stale_after_s=0.9)
    varied = _flat(docgen.render_opcua_addressing(load_contract(), section=sec, plc=plc))
    default = _flat(_opcua_section(GENERATED[docgen.PLC_DOC]))
    d_sec, d_plc = OpcUaSection(), PlcSection(protocol="opcua")
    assert (sec.lifetime_count, sec.quiet_period_s) == (105, 0.14)
    def stall_ms(s: OpcUaSection, p: PlcSection) -> str:
        return docgen._num(round(silence_limit_s(s.quiet_period_s, p.stale_after_s) * 1000,
                                 6))

    stall = stall_ms(sec, plc)
    assert stall == "900"
    assert stall_ms(sec, PlcSection(protocol="opcua", opcua=sec, stale_after_s=0.3)) == "300"

    def phrases(s: OpcUaSection, p: PlcSection, stall_ms: str) -> list[str]:
        n = docgen._num
        return [f"sampling interval **{n(s.sampling_interval_ms)} ms**",
                f"queue size **{s.queue_size}**",
                f"publishing interval **{n(s.publishing_interval_ms)} ms**",
                f"max keep-alive count **{s.keepalive_count}**",
                f", 100) = {s.lifetime_count},",
                f"keep-alive count** ({n(round(s.quiet_period_s * 1000, 6))} ms by default)",
                f"{n(STALL_MARGIN)} x that and `[plc] stale_after_s` ({stall_ms} ms by",
                f"`[plc] stale_after_s` ({n(p.stale_after_s)} s by default)",
                f"`[plc] heartbeat_period_s` ({n(round(p.heartbeat_period_s * 1000))} ms by",
                f"session timeout of {n(s.session_timeout_s)} s",
                f"answered within {n(s.request_timeout_s)} s",
                f"complete within {n(s.connect_timeout_s)} s",
                f"(default `{s.endpoint}`;",
                f"default `{s.application_uri}`)",
                f"`pki_dir` default `{s.pki_dir}`",
                f"**{s.security_policy} with {s.security_mode}**"]

    default_phrases = phrases(d_sec, d_plc, stall_ms(d_sec, d_plc))
    for mine, theirs in zip(phrases(sec, plc, stall), default_phrases, strict=True):
        assert mine in varied, mine
        assert theirs in default, theirs
        assert theirs not in varied, theirs


def test_every_number_in_the_opcua_prose_is_from_the_code() -> None:
    import re

    from drivers.plc import opcua_link
    from drivers.plc.nodemap import load_node_map
    from station.config import OpcUaSection, PlcSection

    sec, plc, nmap = OpcUaSection(), PlcSection(protocol="opcua"), load_node_map()
    n = docgen._num
    allowed = {n(v) for v in (
        sec.sampling_interval_ms, sec.queue_size, sec.publishing_interval_ms,
        sec.keepalive_count, sec.lifetime_count, *docgen.lifetime_rule(),
        round(sec.quiet_period_s * 1000, 6), opcua_link.STALL_MARGIN,
        round(opcua_link.silence_limit_s(sec.quiet_period_s, plc.stale_after_s) * 1000, 6),
        plc.stale_after_s, round(plc.heartbeat_period_s * 1000, 6), sec.host_port[1],
        OpcUaSection(endpoint="opc.tcp://plc").host_port[1], sec.session_timeout_s,
        sec.request_timeout_s, sec.connect_timeout_s, opcua_link.CLOSE_TIMEOUT_S,
        opcua_link.BACKOFF_MIN_S, opcua_link.BACKOFF_MAX_S,
        *(s.count for s in nmap.signals.values()))}
    prose = "\n".join(ln for ln in _opcua_section(GENERATED[docgen.PLC_DOC]).splitlines()
                      if not ln.startswith("|"))
    # values quoted whole, and the standards' own numbers
    for known in (sec.endpoint, *opcua_link.POLICIES, "OPC UA Part 4", "OPC 30050",
                  "ISA-TR88.00.02", "`ValueRank` -1", "`ValueRank` 1", "namespace 0"):
        assert known in prose, known
        prose = prose.replace(known, "")
    numbers = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])", prose)
    assert numbers
    assert set(numbers) <= allowed, set(numbers) - allowed
