"""The pack CAN protocol: J1939 identifiers and the DBC messages, coded with cantools."""

from __future__ import annotations

from typing import Any

import pytest
from cantools.database.can import Message
from cantools.database.errors import EncodeError
from hypothesis import given
from hypothesis import strategies as st

from drivers.bms.protocol import (
    STATION_SA,
    VEHICLE_PACK_SA,
    FrameError,
    PackProtocol,
    join_id,
    rack_sa,
    slot_of_sa,
    split_id,
)

PROTO = PackProtocol()
MESSAGES = [m.name for m in PROTO.db.messages]


def sample_values(msg: Message) -> dict[str, Any]:
    """A value for every signal, away from its limits, exactly representable."""
    values: dict[str, Any] = {}
    for i, sig in enumerate(msg.signals):
        if sig.dbc is not None and "TextEncoding" in sig.dbc.attributes:
            values[sig.name] = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"[:sig.length // 8]
            continue
        if sig.dbc is not None and "ArrayLength" in sig.dbc.attributes:
            n = PROTO.array_length(msg.name, sig.name)
            values[sig.name] = tuple(float(3 + i % 5) for i in range(n))
            continue
        lo = sig.minimum if sig.minimum is not None else 0
        hi = sig.maximum if sig.maximum is not None else lo + 1
        raw_lo = round((lo - sig.offset) / sig.scale)
        raw_hi = round((hi - sig.offset) / sig.scale)
        raw = raw_lo + (raw_hi - raw_lo) * (i + 1) // (len(msg.signals) + 2)
        values[sig.name] = raw * sig.scale + sig.offset
    return values


def is_pdu1(name: str) -> bool:
    return (PROTO.pgn_of(name) >> 8) & 0xFF < 0xF0


@pytest.mark.parametrize("name", MESSAGES)
def test_round_trip_every_message(name: str) -> None:
    msg = PROTO.message(name)
    values = sample_values(msg)
    sa, da = (STATION_SA, rack_sa(5)) if is_pdu1(name) else (rack_sa(5), None)
    can_id, data = PROTO.encode(name, values, sa, da)
    assert len(data) == msg.length
    if msg.length > 8:  # carried in a J1939-21 transport, never as one frame
        with pytest.raises(FrameError) as err:
            PROTO.decode(can_id, data)
        assert err.value.kind == "bad_length"
        decoded = PROTO.decode_transfer(PROTO.pgn_of(name), sa, data)
    else:
        decoded = PROTO.decode(can_id, data)
    assert decoded.name == name
    assert decoded.pgn == PROTO.pgn_of(name)
    assert decoded.source == sa and decoded.destination == da
    arrays = {k for k, v in values.items() if isinstance(v, tuple)}  # exact: whole numbers
    assert {k: decoded.signals[k] for k in arrays} == {k: values[k] for k in arrays}
    assert {k: v for k, v in decoded.signals.items() if k not in arrays} == \
        pytest.approx({k: v for k, v in values.items() if k not in arrays})


def test_every_message_is_eight_bytes_and_little_endian() -> None:
    for msg in PROTO.db.messages:
        # J1939-21 Request (PGN 0xEA00) is 3 bytes by definition; J1939-71 Vehicle
        # Identification (17-character VIN + '*'), the identity text and the cell arrays
        # travel in a J1939-21 transport; all the rest carry 8
        want = {"Request": 3, **LONG}.get(msg.name, 8)
        assert msg.length == want, msg.name
        assert all(s.byte_order == "little_endian" for s in msg.signals)
    assert PROTO.long_messages() == {PROTO.pgn_of(n): size for n, size in LONG.items()}


LONG = {"VehicleIdentification": 18, "PackIdentityText": 56, "PackCellVoltages": 241,
        "PackCellTemperatures": 121}


def test_arrays_and_padded_text() -> None:
    cells = [3.301, 3.302] + [3.3] * 118
    _, data = PROTO.encode("PackCellVoltages", {"CellCount": 120, "CellVoltages": cells},
                           rack_sa(1))
    assert data[:5] == bytes([120]) + (3301).to_bytes(2, "little") + (3302).to_bytes(2, "little")
    dec = PROTO.decode_transfer(0xFF16, rack_sa(1), data, da=STATION_SA)
    assert dec.signals["CellVoltages"] == tuple(cells) and dec.destination == STATION_SA
    _, data = PROTO.encode("PackCellVoltages", {"CellCount": 2, "CellVoltages": cells[:2]},
                           rack_sa(1))
    assert data[5:] == b"\xff" * 236  # elements not given: not available
    assert PROTO.decode_transfer(0xFF16, rack_sa(1), data).signals["CellVoltages"][2:] == \
        (None,) * 118
    _, data = PROTO.encode("PackCellTemperatures", {"SensorCount": 1,
                                                    "CellTemperatures": [-40, 25]}, 0x80)
    assert data[:3] == bytes([1, 0, 65])
    with pytest.raises(ValueError, match="outside"):
        PROTO.encode("PackCellTemperatures", {"SensorCount": 1, "CellTemperatures": [215]},
                     0x80)  # 255 would be "not available"
    with pytest.raises(ValueError, match="at most 120"):
        PROTO.encode("PackCellVoltages", {"CellCount": 1, "CellVoltages": [3.0] * 121}, 0x80)
    text = {"Manufacturer": "ACME Cells", "Model": "NMC-108", "SerialText": "AC-2026-0001"}
    _, data = PROTO.encode("PackIdentityText", text, 0x80)
    assert data[:16] == b"ACME Cells      "
    assert PROTO.decode_transfer(0xFF15, 0x80, data).signals == text


def test_unused_bits_are_sent_as_one() -> None:
    values = {"ControlCommand": 0, "ChargeCurrentLimit": 0, "ChargeVoltageLimit": 0,
              "ControlCounter": 0}
    _, data = PROTO.encode("PackControl", values, STATION_SA, VEHICLE_PACK_SA)
    assert data == bytes(6) + b"\xff\xff"  # bits 48-63 unused
    cells = {s.name: 0 for s in PROTO.message("PackCells").signals}
    _, data = PROTO.encode("PackCells", cells, VEHICLE_PACK_SA)
    assert data[6] == 0b1100_0000  # bits 54-55 unused, six fault flags clear
    assert data[7] == 0


def test_used_bits_are_not_forced_to_one() -> None:
    status = {"SOC": 0, "PackVoltage": 0, "PackCurrent": -3200, "MinCellTemp": -40,
              "MaxCellTemp": -40}
    _, data = PROTO.encode("PackStatus", status, VEHICLE_PACK_SA)
    assert data == bytes(8)  # every bit is used: nothing filled


def test_pdu1_id_join_and_split() -> None:
    can_id = join_id(6, 0xEF00, STATION_SA, VEHICLE_PACK_SA)
    assert can_id == 0x18EFF456
    assert split_id(can_id) == (6, 0xEF00, STATION_SA, VEHICLE_PACK_SA)
    with pytest.raises(ValueError, match="destination"):
        join_id(6, 0xEF00, STATION_SA)


def test_pdu2_id_join_and_split() -> None:
    can_id = join_id(6, 0xFF12, VEHICLE_PACK_SA)
    assert can_id == 0x18FF12F4
    assert split_id(can_id) == (6, 0xFF12, VEHICLE_PACK_SA, None)
    assert join_id(3, 0xFF12, 0x80, da=0x33) == 0x0CFF1280  # PDU2 ignores a destination


@given(
    priority=st.integers(0, 7),
    dp=st.integers(0, 1),
    pf=st.integers(0, 0xFF),
    ps=st.integers(0, 0xFF),
    sa=st.integers(0, 0xFF),
)
def test_id_split_join_property(priority: int, dp: int, pf: int, ps: int, sa: int) -> None:
    can_id = (priority << 26) | (dp << 24) | (pf << 16) | (ps << 8) | sa
    prio, pgn, src, da = split_id(can_id)
    assert (prio, src) == (priority, sa)
    assert (da is not None) == (pf < 0xF0)
    assert join_id(prio, pgn, src, da) == can_id


def test_addresses() -> None:
    assert rack_sa(1) == 0x80 and rack_sa(6) == 0x85
    assert slot_of_sa(0x85) == 6
    assert slot_of_sa(VEHICLE_PACK_SA) is None and slot_of_sa(STATION_SA) is None


def test_value_tables_come_from_the_dbc() -> None:
    chem = PROTO.choices("PackIdentity", "Chemistry")
    assert chem[0x20] == "sodium_ion" and chem[3] == "lfp" and chem[6] == "nmc"
    assert PROTO.codes("PackIdentity", "Chemistry")["lfp"] == 3
    assert PROTO.choices("PackCells", "PackState") == {
        0: "idle", 1: "charging", 2: "isolated", 3: "discharging"}
    assert PROTO.codes("PackControl", "ControlCommand") == {
        "keep": 0, "charge_enable": 1, "charge_disable": 2, "isolate": 3,
        "clear_isolation": 4}
    for msg in PROTO.db.messages:  # every VAL_ table of the DBC, and only those
        for sig in msg.signals:
            if sig.choices:
                table = PROTO.choices(msg.name, sig.name)
                assert table == {int(k): str(v) for k, v in sig.choices.items()}
                assert PROTO.codes(msg.name, sig.name) == {v: k for k, v in table.items()}


def test_a_value_table_is_a_copy() -> None:
    PROTO.choices("PackIdentity", "Chemistry")[0x20] = "tampered"
    assert PROTO.choices("PackIdentity", "Chemistry")[0x20] == "sodium_ion"


def test_no_value_table_or_unknown_names_raise_key_error() -> None:
    with pytest.raises(KeyError, match="no value table"):
        PROTO.choices("PackStatus", "SOC")
    with pytest.raises(KeyError):
        PROTO.choices("PackStatus", "NoSuchSignal")
    with pytest.raises(KeyError):
        PROTO.codes("NoSuchMessage", "Chemistry")


def test_periods_and_timeouts_come_from_the_dbc() -> None:
    assert PROTO.period_s("PackStatus") == pytest.approx(0.1)
    assert PROTO.period_s("PackLimits") == pytest.approx(1.0)
    assert PROTO.period_s("Request") is None  # on event
    assert PROTO.timeout_s("PackStatus") == pytest.approx(0.5)
    assert PROTO.timeout_s("PackIdentity") == pytest.approx(3.0)
    assert PROTO.timeout_s("PackLimits") == pytest.approx(3.0)
    assert PROTO.timeout_s("Request") == pytest.approx(1.25)


def test_pack_limits_message() -> None:
    msg = PROTO.message("PackLimits")
    assert PROTO.pgn_of("PackLimits") == 0xFF14 and msg.senders == ["BMS"]
    assert msg.comment and all(s.comment for s in msg.signals)
    values = {"MaxChargeVoltage": 453.6, "MaxChargeCurrent": 187.5, "CellCount": 108,
              "MaxCellChargeVoltage": 4.2}
    can_id, data = PROTO.encode("PackLimits", values, rack_sa(2))
    assert can_id == 0x18FF1481
    assert data == (4536).to_bytes(2, "little") + (1875).to_bytes(2, "little") + \
        (108).to_bytes(2, "little") + (4200).to_bytes(2, "little")
    assert PROTO.decode(can_id, data).signals == pytest.approx(values)


def test_pack_matched_by_pgn_whatever_its_address() -> None:
    values = sample_values(PROTO.message("PackIdentity"))
    for sa in (VEHICLE_PACK_SA, rack_sa(1), rack_sa(30)):
        can_id, data = PROTO.encode("PackIdentity", values, sa)
        assert PROTO.decode(can_id, data).source == sa


def test_unknown_id() -> None:
    with pytest.raises(FrameError) as err:
        PROTO.decode(join_id(6, 0xFF77, VEHICLE_PACK_SA), bytes(8))
    assert err.value.kind == "unknown_id"


@pytest.mark.parametrize("length", [0, 7, 9])
def test_bad_length(length: int) -> None:
    can_id, _ = PROTO.encode("PackStatus", sample_values(PROTO.message("PackStatus")),
                             VEHICLE_PACK_SA)
    with pytest.raises(FrameError) as err:
        PROTO.decode(can_id, bytes(length))
    assert err.value.kind == "bad_length"


def test_encode_out_of_range_raises() -> None:
    values = sample_values(PROTO.message("PackControl"))
    values["ControlCommand"] = 9
    with pytest.raises(EncodeError, match="ControlCommand"):
        PROTO.encode("PackControl", values, STATION_SA, VEHICLE_PACK_SA)


# ---- the VIN: J1939-71 Vehicle Identification in a J1939-21 BAM ------------------------

VIN = "LSJA24U61NG123456"


def test_vehicle_identification_is_ascii_vin_and_star() -> None:
    assert PROTO.pgn_of("VehicleIdentification") == 0xFEEC
    assert PROTO.message("VehicleIdentification").senders == ["VEHICLE"]
    assert PROTO.period_s("VehicleIdentification") == pytest.approx(5.0)
    assert PROTO.timeout_s("VehicleIdentification") is None  # the VIN does not go stale
    _, data = PROTO.encode("VehicleIdentification", {"Vin": VIN, "VinDelimiter": 42},
                           VEHICLE_PACK_SA)
    assert data == VIN.encode() + b"*"
    decoded = PROTO.decode_transfer(0xFEEC, VEHICLE_PACK_SA, data)
    assert decoded.signals == {"Vin": VIN, "VinDelimiter": 42}
    assert decoded.destination is None


def test_a_text_signal_takes_exactly_its_bytes_and_decodes_only_its_encoding() -> None:
    with pytest.raises(ValueError, match="16 bytes of ascii, needs 17"):
        PROTO.encode("VehicleIdentification", {"Vin": VIN[:16], "VinDelimiter": 42},
                     VEHICLE_PACK_SA)
    with pytest.raises(FrameError) as err:
        PROTO.decode_transfer(0xFEEC, VEHICLE_PACK_SA, b"\xc3" * 17 + b"*")
    assert err.value.kind == "bad_data"
    with pytest.raises(FrameError) as err:
        PROTO.decode_transfer(0xFEEC, VEHICLE_PACK_SA, VIN.encode() + b"*!")
    assert err.value.kind == "bad_length"


def test_encode_frames_sends_a_long_message_as_a_bam() -> None:
    frames = PROTO.encode_frames("VehicleIdentification", {"Vin": VIN, "VinDelimiter": 42},
                                 VEHICLE_PACK_SA)
    assert [hex(i) for i, _ in frames] == ["0x1cecfff4"] + ["0x1cebfff4"] * 3
    assert frames[0][1] == bytes([32, 18, 0, 3, 0xFF, 0xEC, 0xFE, 0x00])
    assert frames[1][1] == b"\x01LSJA24U"
    assert frames[3][1] == b"\x03456*\xff\xff\xff"
    # a short message is one frame, as encode() gives it
    values = sample_values(PROTO.message("PackStatus"))
    assert PROTO.encode_frames("PackStatus", values, rack_sa(1)) == \
        [PROTO.encode("PackStatus", values, rack_sa(1))]


def test_the_dbc_describes_the_transport_frames_the_code_sends() -> None:
    """TP_CM and TP_DT in the DBC (the documented layout) decode what j1939_tp sends."""
    frames = PROTO.encode_frames("VehicleIdentification", {"Vin": VIN, "VinDelimiter": 42},
                                 VEHICLE_PACK_SA)
    cm = PROTO.decode(*frames[0])
    assert cm.name == "TP_CM" and cm.destination == 0xFF
    assert cm.signals == {"Control": PROTO.codes("TP_CM", "Control")["bam"],
                          "TotalSize": 18, "PacketCount": 3, "Pgn": 0xFEEC}
    for seq, (can_id, data) in enumerate(frames[1:], start=1):
        dt = PROTO.decode(can_id, data)
        assert dt.name == "TP_DT" and dt.signals["Sequence"] == seq
        chunk = int(dt.signals["Data"]).to_bytes(7, "little")
        assert chunk == data[1:]
    assert PROTO.timeout_s("TP_DT") == pytest.approx(0.75)  # T1
    assert PROTO.timeout_s("TP_CM") == pytest.approx(0.75)
