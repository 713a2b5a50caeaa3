"""The Modbus register map: coding of every type, and the checks made when a map loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.plc.regmap import RegisterMap, RegisterMapError, load_register_map

RMAP = load_register_map()

HEADER = """
[device]
unit_id = 1
input_block_start = 0
input_block_length = 10
output_block_start = 10
output_block_length = 4
"""


def load_text(tmp_path: Path, text: str) -> RegisterMap:
    path = tmp_path / "map.toml"
    path.write_text(text)
    return load_register_map(path)


def signal(name: str, address: int, direction: str = "in", count: int = 1) -> str:
    return (f'\n[[signal]]\nname = "{name}"\naddress = {address}\ntype = "u16"\n'
            f'direction = "{direction}"\ncount = {count}\ndescription = "test"\n')


def test_shipped_map_is_consistent() -> None:
    assert RMAP.unit_id == 1
    assert {s.name for s in RMAP.outputs()} >= {"ctrl_heartbeat", "cmd_code", "cmd_seq",
                                               "stop_request"}
    codes = [c.code for c in RMAP.commands.values()]
    assert len(codes) == len(set(codes))
    assert RMAP.command_name(RMAP.command_code("FETCH")) == "FETCH"
    assert RMAP.command_name(999) is None
    for sig in RMAP.signals.values():
        assert sig.description


def test_i16_negative_and_scale() -> None:
    sig = RMAP.signals["position_offset_x"]
    assert sig.encode(-12.3) == 0x10000 - 123
    assert sig.decode(0x10000 - 123) == pytest.approx(-12.3)
    assert sig.decode(0x8000) == pytest.approx(-3276.8)
    assert sig.decode(0x7FFF) == pytest.approx(3276.7)


def test_u16_scale_and_plain() -> None:
    torque = RMAP.signals["bolt_torque"]
    assert torque.encode(45.5) == 455
    assert torque.decode(455) == pytest.approx(45.5)
    lift = RMAP.signals["lift_height"]
    assert lift.decode(480) == 480 and isinstance(lift.decode(480), int)


def test_bool() -> None:
    sig = RMAP.signals["estop_ok"]
    assert sig.decode(1) is True and sig.decode(0) is False
    assert sig.decode(0xFFFF) is True  # any non-zero is true
    assert sig.encode(True) == 1 and sig.encode(False) == 0


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
    assert decoded["bolt_angle"] == pytest.approx(values["bolt_angle"])
    assert decoded["rack_slot_occupied"] == values["rack_slot_occupied"]
    assert decoded["estop_ok"] is False  # absent from the encode: register 0
    assert "cmd_code" not in decoded  # outputs are not decoded from the input block


def test_decode_short_block_skips_signals_past_its_end() -> None:
    decoded = RMAP.decode_block(RMAP.input_start, [0] * 25, "in")
    assert "bolts_tight" in decoded and "bolt_torque" not in decoded


def test_output_block_encoding() -> None:
    regs = RMAP.encode_block(RMAP.output_start, RMAP.output_length,
                             {"ctrl_heartbeat": 7, "cmd_code": 6, "cmd_param1": 12, "cmd_seq": 3})
    assert regs[:5] == [7, 6, 12, 0, 3]
    assert RMAP.decode_block(RMAP.output_start, regs, "out")["cmd_param1"] == 12


@given(st.integers(min_value=-32768, max_value=32767))
def test_i16_round_trip_property(raw_value: int) -> None:
    sig = RMAP.signals["position_offset_x"]
    value = raw_value * 0.1
    assert sig.decode(sig.encode(value)) == pytest.approx(value)


def test_overlap_rejected(tmp_path: Path) -> None:
    text = HEADER + signal("a", 2, count=3) + signal("b", 4)
    with pytest.raises(RegisterMapError, match="b overlaps a at 4"):
        load_text(tmp_path, text)


def test_signal_outside_its_block_rejected(tmp_path: Path) -> None:
    with pytest.raises(RegisterMapError, match="outside its block"):
        load_text(tmp_path, HEADER + signal("late", 8, count=3))  # runs into the outputs
    with pytest.raises(RegisterMapError, match="outside its block"):
        load_text(tmp_path, HEADER + signal("cmd", 3, direction="out"))  # output among inputs


def test_duplicate_and_malformed_rejected(tmp_path: Path) -> None:
    with pytest.raises(RegisterMapError, match="defined twice"):
        load_text(tmp_path, HEADER + signal("a", 1) + signal("a", 2))
    with pytest.raises(RegisterMapError, match=r"map\.toml"):
        load_text(tmp_path, HEADER.replace("unit_id = 1\n", ""))
    with pytest.raises(RegisterMapError):
        load_text(tmp_path, HEADER + "[[signal]]\nname = 'x'\n")


def test_small_valid_map_loads(tmp_path: Path) -> None:
    rmap = load_text(tmp_path, HEADER + signal("a", 0) + signal("b", 9) + signal("c", 10, "out"))
    assert [s.name for s in rmap.inputs()] == ["a", "b"]
    assert [s.name for s in rmap.outputs()] == ["c"]
