"""The Modbus addressing of the PLC contract: coding of every type, both vocabularies, and
the checks made when a map loads against its contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.plc.contract import ContractError, PlcContract, load_contract
from drivers.plc.regmap import RegisterMap, RegisterMapError, load_register_map
from station.image import StopRequest

RMAP = load_register_map()
OUT = RMAP.output_start

# A small contract and its addressing, for the checks.
CONTRACT_TEXT = """
version = "2.0"

[timing]
ctrl_heartbeat_period_ms = 100
ctrl_heartbeat_timeout_ms = 1000
plc_heartbeat_period_ms = 100
plc_heartbeat_timeout_ms = 1000
handshake_timeout_ms = 2000
sensor_grace_ms = 500
stop_cause_grace_ms = 250

[[signal]]
name = "a"
type = "int"
count = 3
direction = "in"
description = "test"

[[signal]]
name = "b"
type = "float"
direction = "in"
description = "test"

[[signal]]
name = "state"
type = "int"
enum = "state"
direction = "in"
description = "test"

[[signal]]
name = "c"
type = "int"
enum = "command"
direction = "out"
description = "test"

[[enum.state.value]]
name = "off"
code = 0
description = "off"

[[enum.state.value]]
name = "on"
code = 1
description = "on"

[[command]]
name = "NONE"
code = 0
description = "nothing"
"""

HEADER = """
contract_version = "2.0"

[device]
unit_id = 1
input_block_start = 0
input_block_length = 10
output_block_start = 10
output_block_length = 4
"""


def signal(name: str, address: int, type_: str = "u16", scale: float | None = None) -> str:
    text = f'\n[[signal]]\nname = "{name}"\naddress = {address}\ntype = "{type_}"\n'
    return text + (f"scale = {scale}\n" if scale is not None else "")


GOOD = signal("a", 0) + signal("b", 5, "i16", 0.5) + signal("state", 9) + signal("c", 10)


@pytest.fixture
def contract(tmp_path: Path) -> PlcContract:
    path = tmp_path / "contract.toml"
    path.write_text(CONTRACT_TEXT)
    return load_contract(path)


def load_text(tmp_path: Path, text: str, contract: PlcContract) -> RegisterMap:
    path = tmp_path / "map.toml"
    path.write_text(text)
    return load_register_map(path, contract=contract)


# ---------------------------------------------------------------------------- shipped map


def test_shipped_map_addresses_the_whole_contract() -> None:
    assert RMAP.unit_id == 1
    assert list(RMAP.signals) == list(RMAP.contract.signals)  # the contract's order
    assert {s.name for s in RMAP.outputs()} >= {"ctrl_heartbeat", "cmd_code", "cmd_seq",
                                               "stop_request"}
    assert RMAP.commands is RMAP.contract.commands
    assert RMAP.command_name(RMAP.command_code("FETCH")) == "FETCH"
    assert RMAP.command_name(999) is None
    for sig in RMAP.signals.values():
        assert sig.description and sig.spec is RMAP.contract.signals[sig.name]
    assert RMAP.signals["cmd_status"].enum is RMAP.contract.enums["cmd_status"]


def test_i16_negative_and_scale() -> None:
    sig = RMAP.signals["position_offset_x"]
    assert sig.encode(-12.3) == 0x10000 - 123
    assert sig.decode(0x10000 - 123) == pytest.approx(-12.3)
    assert sig.decode(0x8000) == pytest.approx(-3276.8)
    assert sig.decode(0x7FFF) == pytest.approx(3276.7)


def test_engineering_types_follow_the_contract() -> None:
    torque = RMAP.signals["bolt_torque"]
    assert torque.encode(45.5) == 455
    assert torque.decode(455) == pytest.approx(45.5)
    lift = RMAP.signals["lift_height"]  # float mm in the contract, u16 scale 1 on the wire
    assert lift.decode(480) == 480.0 and isinstance(lift.decode(480), float)
    count = RMAP.signals["bolts_tight"]  # int in the contract
    assert count.decode(7) == 7 and isinstance(count.decode(7), int)


def test_bool() -> None:
    sig = RMAP.signals["estop_ok"]
    assert sig.decode(1) is True and sig.decode(0) is False
    assert sig.decode(0xFFFF) is True  # any non-zero is true
    assert sig.encode(True) == 1 and sig.encode(False) == 0


def test_enumerated_signals_decode_to_names() -> None:
    assert RMAP.signals["cmd_status"].decode(1) == "busy"
    assert RMAP.signals["cmd_error_code"].decode(3) == "mechanism_fault"
    assert RMAP.signals["cmd_error_code"].decode(77) == "unknown_77"
    assert RMAP.signals["cmd_code"].decode(2) == "LIFT"
    assert RMAP.signals["stop_request"].decode(1) == "cat1"
    # codes are still there for the simulated PLC
    assert RMAP.signals["cmd_status"].from_register(1) == 1


def test_enumerated_signals_encode_from_names() -> None:
    assert RMAP.signals["cmd_code"].encode("LIFT") == 2
    assert RMAP.signals["stop_request"].encode("cat1") == 1
    assert RMAP.signals["stop_request"].encode(StopRequest.CAT2) == 2  # the core's StrEnum
    with pytest.raises(ValueError, match=r"cmd_code: 'FLY' is not a value of enumeration"):
        RMAP.signals["cmd_code"].encode("FLY")
    with pytest.raises(ValueError, match="stop_request"):
        RMAP.signals["stop_request"].encode(1)  # a code is not a name
    with pytest.raises(ValueError, match="lift_height"):
        RMAP.signals["lift_height"].encode("high")


@pytest.mark.parametrize(
    ("name", "value"),
    [("lift_height", -1), ("lift_height", 65536), ("position_offset_x", 3276.8),
     ("position_offset_x", -3276.9), ("bolt_torque", 6553.6)],
)
def test_out_of_range_encode_raises(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        RMAP.signals[name].encode(value)


def test_block_round_trip_with_arrays() -> None:
    values = {
        "plc_heartbeat": 65535,
        "position_offset_y": -0.5,
        "vehicle_ready": True,
        "cmd_status": 3,
        "bolt_angle": [12.5 * i for i in range(12)],
        "rack_slot_occupied": [i % 3 == 0 for i in range(30)],
    }
    regs = RMAP.encode_block(RMAP.input_start, RMAP.input_length, values)
    assert len(regs) == RMAP.input_length
    assert regs[RMAP.signals["bolt_angle"].address + 2] == 250
    decoded = RMAP.decode_block(RMAP.input_start, regs, "in")
    assert decoded["plc_heartbeat"] == 65535
    assert decoded["position_offset_y"] == pytest.approx(-0.5)
    assert decoded["vehicle_ready"] is True
    assert decoded["cmd_status"] == 3  # codes: the default vocabulary of the blocks
    assert decoded["bolt_angle"] == pytest.approx(values["bolt_angle"])
    assert decoded["rack_slot_occupied"] == values["rack_slot_occupied"]
    assert decoded["estop_ok"] is False  # absent from the encode: register 0
    assert "cmd_code" not in decoded  # outputs are not decoded from the input block

    named = RMAP.decode_inputs(regs)
    assert named["cmd_status"] == "error" and named["cmd_error_code"] == "none"
    assert set(named) == {s.name for s in RMAP.inputs()}
    assert named == RMAP.decode_block(RMAP.input_start, regs, "in", enums="names")


def test_decode_short_block_skips_signals_past_its_end() -> None:
    decoded = RMAP.decode_block(RMAP.input_start, [0] * 25, "in")
    assert "bolts_tight" in decoded and "bolt_torque" not in decoded


def test_output_block_encoding_in_both_vocabularies() -> None:
    regs = RMAP.encode_outputs({"ctrl_heartbeat": 7, "cmd_code": "FETCH", "cmd_param1": 12,
                                "cmd_seq": 3, "stop_request": "cat2"})
    assert regs[:6] == [7, 6, 12, 0, 3, 2]
    assert RMAP.encode_block(OUT, RMAP.output_length,
                             {"ctrl_heartbeat": 7, "cmd_code": 6, "cmd_param1": 12,
                              "cmd_seq": 3, "stop_request": 2}) == regs
    codes = RMAP.decode_block(OUT, regs, "out")
    assert (codes["cmd_code"], codes["stop_request"], codes["cmd_param1"]) == (6, 2, 12)
    names = RMAP.decode_block(OUT, regs, "out", enums="names")
    assert (names["cmd_code"], names["stop_request"]) == ("FETCH", "cat2")
    assert RMAP.encode_outputs({}) == [0] * RMAP.output_length  # NONE, none: code 0


def test_encode_block_rejects_unknown_names_and_signals_outside_the_block() -> None:
    with pytest.raises(ValueError, match=r"cmd_code: 'JUMP'"):
        RMAP.encode_outputs({"cmd_code": "JUMP"})
    with pytest.raises(ValueError, match="no_such is not a signal"):
        RMAP.encode_outputs({"no_such": 1})
    with pytest.raises(ValueError, match=r"estop_ok .* outside the block"):
        RMAP.encode_outputs({"estop_ok": True})


@given(st.integers(min_value=-32768, max_value=32767))
def test_i16_round_trip_property(raw_value: int) -> None:
    sig = RMAP.signals["position_offset_x"]
    value = raw_value * 0.1
    assert sig.decode(sig.encode(value)) == pytest.approx(value)


@given(st.sampled_from(RMAP.contract.enums["cmd_error"].names()))
def test_enum_round_trip_property(name: str) -> None:
    sig = RMAP.signals["cmd_error_code"]
    assert sig.decode(sig.encode(name)) == name


# ---------------------------------------------------------------------------- load checks


def test_small_valid_map_loads(tmp_path: Path, contract: PlcContract) -> None:
    rmap = load_text(tmp_path, HEADER + GOOD, contract)
    assert [s.name for s in rmap.inputs()] == ["a", "b", "state"]
    assert [s.name for s in rmap.outputs()] == ["c"]
    assert rmap.signals["b"].scale == 0.5 and rmap.signals["a"].count == 3
    assert rmap.decode_inputs([0, 0, 0, 0, 0, 0xFFFF, 0, 0, 0, 1])["state"] == "on"
    assert rmap.decode_inputs([0] * 5 + [0xFFFF] + [0] * 4)["b"] == -0.5


def test_unknown_signal_name_in_the_addressing(tmp_path: Path, contract: PlcContract) -> None:
    with pytest.raises(RegisterMapError,
                       match=r"map\.toml: signal x is not a signal of the contract"):
        load_text(tmp_path, HEADER + GOOD + signal("x", 8), contract)


def test_missing_signal(tmp_path: Path, contract: PlcContract) -> None:
    text = HEADER + signal("a", 0) + signal("state", 9) + signal("c", 10)
    with pytest.raises(RegisterMapError, match=r"map\.toml: contract signal\(s\) b not addressed"):
        load_text(tmp_path, text, contract)


def test_signal_addressed_twice(tmp_path: Path, contract: PlcContract) -> None:
    with pytest.raises(RegisterMapError, match="signal b defined twice"):
        load_text(tmp_path, HEADER + GOOD + signal("b", 7), contract)


def test_overlap_rejected(tmp_path: Path, contract: PlcContract) -> None:
    text = HEADER + signal("a", 2) + signal("b", 4, "i16") + signal("state", 9) + signal("c", 10)
    with pytest.raises(RegisterMapError, match=r"map\.toml: b overlaps a at 4"):
        load_text(tmp_path, text, contract)


def test_signal_outside_its_block_rejected(tmp_path: Path, contract: PlcContract) -> None:
    late = HEADER + signal("a", 8) + signal("b", 5, "i16") + signal("state", 4) + signal("c", 10)
    with pytest.raises(RegisterMapError, match="a address 10 outside its block"):
        load_text(tmp_path, late, contract)  # the array runs into the outputs
    wrong = HEADER + signal("a", 0) + signal("b", 5, "i16") + signal("state", 9) + signal("c", 3)
    with pytest.raises(RegisterMapError, match="c address 3 outside its block"):
        load_text(tmp_path, wrong, contract)  # an output among the inputs


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (signal("b", 5, "bool"), "register type bool does not carry the contract's float"),
        (signal("state", 9, "u16", 2), "enumerated signal takes no scale"),
        (signal("state", 9, "i16"), "enumerated signal is a u16"),
        (signal("a", 0, "u16", 0.1), "would make the contract's int a fraction"),
        (signal("b", 5, "f32"), "type 'f32'"),
        (signal("b", 5, "u16", 0), "scale 0 must be a number above 0"),
        ('\n[[signal]]\nname = "b"\naddress = 5\ntype = "u16"\nunit = "mm"\n',
         r"unknown keys \['unit'\]"),
    ],
)
def test_bad_signal_entries(
    tmp_path: Path, contract: PlcContract, bad: str, match: str
) -> None:
    name = bad.split('name = "')[1].split('"')[0]
    rest = {"a": signal("a", 0), "b": signal("b", 5, "i16", 0.5), "state": signal("state", 9),
            "c": signal("c", 10)}
    rest[name] = bad
    with pytest.raises(RegisterMapError, match=match):
        load_text(tmp_path, HEADER + "".join(rest.values()), contract)


def test_device_and_version_checks(tmp_path: Path, contract: PlcContract) -> None:
    with pytest.raises(RegisterMapError, match=r"map\.toml: \[device\] must have"):
        load_text(tmp_path, HEADER.replace("unit_id = 1\n", "") + GOOD, contract)
    with pytest.raises(RegisterMapError, match=r"contract_version '1\.0' does not match"):
        load_text(tmp_path, HEADER.replace('"2.0"', '"1.0"') + GOOD, contract)
    overlapping = HEADER.replace("output_block_start = 10", "output_block_start = 8")
    with pytest.raises(RegisterMapError, match="blocks overlap"):
        load_text(tmp_path, overlapping + GOOD, contract)
    with pytest.raises(RegisterMapError, match="not valid TOML"):
        load_text(tmp_path, HEADER + "[[signal]\n", contract)
    with pytest.raises(RegisterMapError, match="cannot read"):
        load_register_map(tmp_path / "none.toml", contract=contract)


def test_bad_enum_reference_in_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "contract.toml"
    path.write_text(CONTRACT_TEXT.replace('enum = "state"', 'enum = "status"'))
    with pytest.raises(ContractError, match="signal state: enum 'status' is not defined"):
        load_contract(path)


def test_shipped_map_against_a_changed_contract(tmp_path: Path) -> None:
    # A contract signal the Modbus map does not address: the map no longer loads.
    shipped = Path(__file__).resolve().parents[2] / "drivers" / "plc" / "contract.toml"
    path = tmp_path / "contract.toml"
    path.write_text(shipped.read_text() + '\n[[signal]]\nname = "door_lock"\ntype = "bool"\n'
                    'direction = "out"\ndescription = "new"\n')
    with pytest.raises(RegisterMapError,
                       match=r"modbus_map\.toml: contract signal\(s\) door_lock not addressed"):
        load_register_map(contract=load_contract(path))
