"""The PLC contract file, its checks, the core vocabulary against it, and the link registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drivers.plc import registry
from drivers.plc.contract import COMMAND_ENUM, ContractError, PlcContract, load_contract
from drivers.plc.link import PlcLink
from station.config import PLC_PROTOCOL_SECTIONS, ModbusSection, PlcSection
from station.image import NO_COMMAND, CmdStatus, StopRequest

CONTRACT = load_contract()
SHIPPED = Path(__file__).resolve().parents[2] / "drivers" / "plc" / "contract.toml"

MINIMAL = """
version = "9.9"

[timing]
ctrl_heartbeat_period_ms = 100
ctrl_heartbeat_timeout_ms = 1000
plc_heartbeat_period_ms = 100
plc_heartbeat_timeout_ms = 1000
handshake_timeout_ms = 2000
sensor_grace_ms = 500
stop_cause_grace_ms = 250

[[signal]]
name = "mode"
type = "int"
enum = "mode"
direction = "in"
description = "test"

[[signal]]
name = "cmd"
type = "int"
enum = "command"
direction = "out"
description = "test"

[[enum.mode.value]]
name = "off"
code = 0
description = "off"

[[enum.mode.value]]
name = "on"
code = 1
description = "on"

[[command]]
name = "NONE"
code = 0
description = "nothing"

[[command]]
name = "GO"
code = 1
description = "go"
"""


def load_text(tmp_path: Path, text: str) -> PlcContract:
    path = tmp_path / "contract.toml"
    path.write_text(text)
    return load_contract(path)


# ---------------------------------------------------------------------------- the core


def test_core_vocabulary_is_the_contracts() -> None:
    assert [s.value for s in CmdStatus] == CONTRACT.enums["cmd_status"].names()
    assert [s.value for s in StopRequest] == CONTRACT.enums["stop_request"].names()
    assert NO_COMMAND in CONTRACT.commands
    assert CONTRACT.command_code(NO_COMMAND) == 0  # outputs absent from a write read as 0
    assert CONTRACT.enum_of("cmd_status") is CONTRACT.enums["cmd_status"]
    assert CONTRACT.enum_of("stop_request") is CONTRACT.enums["stop_request"]


def test_sequence_steps_command_the_contracts_commands() -> None:
    from station.sequence import STEPS_BY_NAME

    for step in STEPS_BY_NAME.values():
        assert step.command is None or step.command in CONTRACT.commands, step.name


def test_core_enum_members_encode() -> None:
    # The core hands its StrEnum members to the link as they are.
    assert CONTRACT.encode_enum("stop_request", StopRequest.CAT2) == 2
    assert CONTRACT.encode_enum("cmd_status", CmdStatus.BUSY) == 1


# ---------------------------------------------------------------------------- shipped file


def test_shipped_contract() -> None:
    assert CONTRACT.version == "1.1"
    assert CONTRACT.origin == "contract.toml"
    assert load_contract(SHIPPED).signals == CONTRACT.signals
    enum_signals = {s.name: s.enum for s in CONTRACT.signals.values() if s.enum}
    assert enum_signals == {"cmd_status": "cmd_status", "cmd_error_code": "cmd_error",
                            "cmd_code": COMMAND_ENUM, "stop_request": "stop_request"}
    assert {s.name for s in CONTRACT.outputs()} == {
        "ctrl_heartbeat", "cmd_code", "cmd_param1", "cmd_param2", "cmd_seq", "stop_request"}
    assert CONTRACT.signals["cmd_status"].direction == "in"
    assert CONTRACT.signals["bolt_torque"].count == 12
    assert CONTRACT.signals["position_offset_x"].type == "float"
    assert CONTRACT.signals["position_offset_x"].unit == "mm"
    for sig in CONTRACT.signals.values():
        assert sig.description, sig.name
    assert CONTRACT.timing.ctrl_heartbeat_period_ms == 100
    assert CONTRACT.timing.ctrl_heartbeat_timeout_ms == 1000
    assert CONTRACT.timing.handshake_timeout_ms == 2000
    assert CONTRACT.timing.sensor_grace_ms == 500
    assert CONTRACT.signals["setpoint_unlock_torque"].count == 2


def test_shipped_enumerations_and_commands() -> None:
    def table(enum: str) -> dict[int, str]:
        return {v.code: v.name for v in CONTRACT.enums[enum].values}

    assert table("cmd_status") == {0: "idle", 1: "busy", 2: "done", 3: "error"}
    assert table("cmd_error") == {0: "none", 1: "unknown_command", 2: "refused",
                                  3: "mechanism_fault", 4: "plc_timeout", 5: "bad_parameter",
                                  6: "stopped"}
    assert table("stop_request") == {0: "none", 1: "cat1", 2: "cat2"}
    assert table(COMMAND_ENUM) == {
        0: "NONE", 1: "POSITION", 2: "LIFT", 3: "UNLOCK", 4: "REMOVE", 5: "STORE", 6: "FETCH",
        7: "INSTALL", 8: "LOCK", 9: "LOWER", 10: "RELEASE", 11: "HOME", 12: "NOOP"}
    assert {c.code: c.name for c in CONTRACT.commands.values()} == table(COMMAND_ENUM)
    for enum in CONTRACT.enums.values():
        for v in enum.values:
            assert v.description, (enum.name, v.name)


def test_encode_and_decode_enum() -> None:
    assert CONTRACT.encode_enum("cmd_code", "LIFT") == 2
    assert CONTRACT.encode_enum("stop_request", "cat1") == 1
    assert CONTRACT.decode_enum("cmd_status", 1) == "busy"
    assert CONTRACT.decode_enum("cmd_error_code", 3) == "mechanism_fault"
    assert CONTRACT.decode_enum("cmd_code", 10) == "RELEASE"
    assert CONTRACT.decode_enum("cmd_status", 9) == "unknown_9"
    assert CONTRACT.command_code("FETCH") == 6
    assert CONTRACT.command_name(6) == "FETCH"
    assert CONTRACT.command_name(999) is None


def test_encode_enum_errors_name_the_signal() -> None:
    with pytest.raises(ValueError, match=r"stop_request: 'cat3' is not a value"):
        CONTRACT.encode_enum("stop_request", "cat3")
    with pytest.raises(ValueError, match="cmd_code"):
        CONTRACT.encode_enum("cmd_code", "lift")  # names are exact
    with pytest.raises(ValueError, match="cmd_code"):
        CONTRACT.encode_enum("cmd_code", 2)  # type: ignore[arg-type]  # a code is no name
    with pytest.raises(ValueError, match="lift_height is not an enumerated"):
        CONTRACT.encode_enum("lift_height", "x")
    with pytest.raises(ValueError, match="no_such is not a signal"):
        CONTRACT.decode_enum("no_such", 0)
    with pytest.raises(ValueError, match="not a command"):
        CONTRACT.command_code("FLY")


# ---------------------------------------------------------------------------- checks


def test_minimal_contract_loads(tmp_path: Path) -> None:
    c = load_text(tmp_path, MINIMAL)
    assert c.version == "9.9" and list(c.signals) == ["mode", "cmd"]
    assert c.decode_enum("mode", 1) == "on" and c.encode_enum("cmd", "GO") == 1
    assert set(c.enums) == {"mode", COMMAND_ENUM}
    assert str(tmp_path) in c.origin


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('enum = "mode"', 'enum = "moods"', r"signal mode: enum 'moods' is not defined"),
        ('name = "cmd"', 'name = "mode"', "signal mode defined twice"),
        ('name = "on"\ncode = 1', 'name = "on"\ncode = 0', "on and off share code 0"),
        ('name = "GO"\ncode = 1', 'name = "GO"\ncode = 0', "GO and NONE share code 0"),
        ('name = "GO"', 'name = "NONE"', "command NONE defined twice"),
        ('name = "on"', 'name = "off"', "value off defined twice"),
        ('name = "on"', 'name = "unknown_1"', "reserved"),
        ('type = "int"\nenum = "mode"', 'type = "word"\nenum = "mode"', "type 'word'"),
        ('direction = "in"', 'direction = "up"', "direction 'up'"),
        ('direction = "in"', 'direction = "in"\naddress = 3', r"unknown keys \['address'\]"),
        ('type = "int"\nenum = "mode"', 'type = "float"\nenum = "mode"', "single int"),
        ('version = "9.9"', "", "version missing"),
        ("plc_heartbeat_timeout_ms = 1000", "", r"\[timing\]: missing"),
        ("plc_heartbeat_timeout_ms = 1000", "plc_heartbeat_timeout_ms = 0", "positive"),
        ('description = "test"', 'description = ""', "description missing"),
        ("[[enum.mode.value]]", "[[enum.command.value]]", "is the \\[\\[command\\]\\] table"),
    ],
)
def test_bad_contract_rejected(tmp_path: Path, old: str, new: str, match: str) -> None:
    assert old in MINIMAL
    with pytest.raises(ContractError, match=match) as info:
        load_text(tmp_path, MINIMAL.replace(old, new, 1))
    assert "contract.toml" in str(info.value)  # the file is named


def test_unreadable_or_malformed_contract(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="cannot read"):
        load_contract(tmp_path / "missing.toml")
    with pytest.raises(ContractError, match="not valid TOML"):
        load_text(tmp_path, "version = ")


# ---------------------------------------------------------------------------- registry


def test_registry_knows_every_configurable_protocol() -> None:
    assert registry.protocols() == sorted(PLC_PROTOCOL_SECTIONS)
    for name in registry.protocols():
        assert issubclass(registry.link_class(name), PlcLink)


def test_unknown_protocol_lists_the_known_ones() -> None:
    with pytest.raises(registry.UnknownProtocolError,
                       match=r"unknown PLC protocol 'profinet'; known protocols: modbus"):
        registry.link_class("profinet")
    plc = PlcSection.model_construct(protocol="profinet")  # type: ignore[arg-type]
    with pytest.raises(registry.UnknownProtocolError, match="known protocols: modbus"):
        registry.create_link(plc, clock=lambda: 0.0)


def test_implementations_are_imported_only_when_chosen() -> None:
    code = ("import sys; import drivers.plc.registry; "
            "assert 'drivers.plc.modbus_link' not in sys.modules; "
            "assert 'pymodbus' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_create_link_from_config() -> None:
    plc = PlcSection(heartbeat_period_s=0.05,
                     modbus=ModbusSection(host="10.0.0.7", port=1502, poll_period_s=0.03,
                                          timeout_s=0.4))
    t = [5.0]
    link = registry.create_link(plc, clock=lambda: t[0])
    from drivers.plc.modbus_link import ModbusPlcLink

    assert isinstance(link, ModbusPlcLink)
    assert (link.host, link.port) == ("10.0.0.7", 1502)
    assert (link.poll_period, link.heartbeat_period, link.timeout) == (0.03, 0.05, 0.4)
    assert link.rmap.contract.version == CONTRACT.version
    assert not link.connected


def test_create_link_section_defaults_and_contract_path(tmp_path: Path) -> None:
    link = registry.create_link(PlcSection(contract=SHIPPED), clock=lambda: 0.0)
    defaults = ModbusSection()
    from drivers.plc.modbus_link import ModbusPlcLink

    assert isinstance(link, ModbusPlcLink)
    assert (link.host, link.port, link.poll_period, link.timeout) == (
        defaults.host, defaults.port, defaults.poll_period_s, defaults.timeout_s)
    assert link.rmap.contract.origin == str(SHIPPED)


def test_create_link_bad_contract_or_map(tmp_path: Path) -> None:
    bad = tmp_path / "contract.toml"
    bad.write_text(SHIPPED.read_text().replace('enum = "cmd_error"', 'enum = "cmd_errors"'))
    with pytest.raises(ContractError, match="cmd_errors"):
        registry.create_link(PlcSection(contract=bad), clock=lambda: 0.0)
    with pytest.raises(ValueError, match=r"nowhere\.toml"):
        registry.create_link(PlcSection(modbus=ModbusSection(
            register_map=tmp_path / "nowhere.toml")), clock=lambda: 0.0)


def test_create_link_refuses_a_heartbeat_slower_than_the_contract() -> None:
    with pytest.raises(ValueError, match=r"heartbeat_period_s = 0.2 s breaks the PLC contract"):
        registry.create_link(PlcSection(heartbeat_period_s=0.2), clock=lambda: 0.0)
