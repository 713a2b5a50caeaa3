"""The BMS adapter: decoded DBC messages folded into the process image in the core's words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers.bms.adapter import FAULT_SIGNALS, MESSAGE_KINDS, BmsAdapter
from drivers.bms.protocol import (
    MAX_RACK_SLOTS,
    STATION_SA,
    VEHICLE_PACK_SA,
    PackProtocol,
    rack_sa,
)
from station.image import (
    BAY,
    Location,
    PackData,
    PackFault,
    PackState,
    PackTimeouts,
    ProcessImage,
)
from station.pack_commands import PackCommandKind

P = PackProtocol()
SLOT3 = Location.rack(3)

IDENTITY = {"PackSerial": 7, "PackFamily": 20, "Chemistry": 0x20, "RatedEnergy": 75.0}
HEALTH = {"CycleCount": 412, "SOH": 93.5, "RatedVoltage": 350.0, "RatedCapacity": 214.2}
STATUS = {"SOC": 81.25, "PackVoltage": 402.3, "PackCurrent": -12.5, "MinCellTemp": 21,
          "MaxCellTemp": 26}
CELLS = {"MaxCellVoltage": 3.412, "MinCellVoltage": 3.398, "InsulationResistance": 5000,
         **dict.fromkeys(FAULT_SIGNALS, 0), "PackState": 1}
LIMITS = {"MaxChargeVoltage": 446.3, "MaxChargeCurrent": 214.2, "CellCount": 113,
          "MaxCellChargeVoltage": 3.95}


@pytest.fixture
def adapter() -> BmsAdapter:
    return BmsAdapter(P)


def plc_showing_packs(slots: int = 4, occupied: tuple[int, ...] = (1, 2, 3, 4),
                      bay: bool = True) -> dict[str, Any]:
    """PLC inputs with a car (and its pack) on the platform and these rack slots full."""
    return {"vehicle_present": bay, "vehicle_pack_present": bay, "vehicle_token": 7 if bay else 0,
            "rack_slot_count": slots,
            "rack_slot_occupied": [i + 1 in occupied for i in range(30)]}


@pytest.fixture
def image(adapter: BmsAdapter) -> ProcessImage:
    img = ProcessImage(pack_timeouts=adapter.timeouts())
    img.plc, img.plc_read_at = plc_showing_packs(), 0.0
    return img


def feed(adapter: BmsAdapter, img: ProcessImage, name: str, values: dict[str, Any], t: float,
         sa: int = VEHICLE_PACK_SA, da: int | None = None) -> Location | None:
    can_id, data = P.encode(name, values, sa=sa, da=da)
    return adapter.apply(img, P.decode(can_id, data), t)


def test_timeouts_come_from_the_dbc(adapter: BmsAdapter) -> None:
    assert adapter.timeouts() == PackTimeouts(identity=3.0, health=3.0, status=0.5,
                                              cells=0.5, limits=3.0)
    for name, kind in MESSAGE_KINDS.items():
        assert adapter.timeouts().of(kind) == P.timeout_s(name)


def test_locations_and_addresses(adapter: BmsAdapter) -> None:
    assert adapter.location_of(VEHICLE_PACK_SA) == BAY
    assert adapter.location_of(0x80) == Location.rack(1)
    assert adapter.location_of(rack_sa(13)) == Location.rack(13)
    assert adapter.location_of(rack_sa(MAX_RACK_SLOTS)) == Location.rack(MAX_RACK_SLOTS)
    for sa in (STATION_SA, 0x00, 0x7F, 0x80 + MAX_RACK_SLOTS, 0xF3, 0xFE, 0xFF):
        assert adapter.location_of(sa) is None, hex(sa)
    assert adapter.address_of(BAY) == 0xF4
    assert adapter.address_of(Location.rack(1)) == 0x80
    for sa in [VEHICLE_PACK_SA, *range(0x80, 0x80 + MAX_RACK_SLOTS)]:
        loc = adapter.location_of(sa)
        assert loc is not None and adapter.address_of(loc) == sa
    with pytest.raises(ValueError, match="no address"):
        adapter.address_of(Location.rack(MAX_RACK_SLOTS + 1))


def test_each_kind_lands_in_its_location_and_fields(
    adapter: BmsAdapter, image: ProcessImage
) -> None:
    assert feed(adapter, image, "PackIdentity", IDENTITY, 1.0, sa=rack_sa(3)) == SLOT3
    assert feed(adapter, image, "PackHealth", HEALTH, 1.1, sa=rack_sa(3)) == SLOT3
    assert feed(adapter, image, "PackStatus", STATUS, 1.2, sa=rack_sa(3)) == SLOT3
    assert feed(adapter, image, "PackCells", CELLS, 1.3, sa=rack_sa(3)) == SLOT3
    assert feed(adapter, image, "PackLimits", LIMITS, 1.4, sa=rack_sa(3)) == SLOT3
    assert list(image.packs) == [SLOT3]
    rep = image.packs[SLOT3]
    assert rep.location == SLOT3 and rep.first_seen == 1.0
    assert (rep.serial, rep.family, rep.chemistry) == (7, 20, "sodium_ion")
    assert rep.rated_energy_kwh == pytest.approx(75.0)
    assert rep.cycle_count == 412 and rep.soh_pct == pytest.approx(93.5)
    assert rep.soc_pct == 81.2 or rep.soc_pct == 81.3  # 0.1 % resolution on the wire
    assert rep.voltage_v == pytest.approx(402.3) and rep.current_a == -12.5
    assert (rep.min_cell_temp_c, rep.max_cell_temp_c) == (21.0, 26.0)
    assert rep.max_cell_v == pytest.approx(3.412) and rep.min_cell_v == pytest.approx(3.398)
    assert rep.insulation_kohm == 5000.0
    assert rep.faults == frozenset() and rep.state is PackState.CHARGING
    assert rep.max_charge_voltage_v == pytest.approx(446.3)
    assert rep.max_charge_current_a == pytest.approx(214.2)
    assert rep.cell_count == 113
    assert rep.identified
    assert rep.last_seen == {PackData.IDENTITY: 1.0, PackData.HEALTH: 1.1,
                             PackData.STATUS: 1.2, PackData.CELLS: 1.3,
                             PackData.LIMITS: 1.4}
    assert adapter.stats["applied"] == 5


def test_freshness_stamps_follow_each_kind(adapter: BmsAdapter, image: ProcessImage) -> None:
    feed(adapter, image, "PackIdentity", IDENTITY, 1.0)
    feed(adapter, image, "PackStatus", STATUS, 1.0)
    feed(adapter, image, "PackStatus", STATUS, 2.0)
    rep = image.packs[BAY]
    assert rep.last_seen[PackData.STATUS] == 2.0 and rep.last_seen[PackData.IDENTITY] == 1.0
    assert PackData.LIMITS not in rep.last_seen
    assert image.fresh(rep, PackData.STATUS, 2.5)
    assert not image.fresh(rep, PackData.STATUS, 2.6)
    assert image.fresh(rep, PackData.IDENTITY, 4.0) and not image.fresh(rep, PackData.IDENTITY,
                                                                          4.1)
    assert not image.fresh(rep, PackData.LIMITS, 2.0)  # never heard
    assert rep.seen_since(1.5, PackData.STATUS) and not rep.seen_since(1.5, PackData.IDENTITY)


def test_unknown_chemistry_code_and_pack_state(adapter: BmsAdapter, image: ProcessImage) -> None:
    feed(adapter, image, "PackIdentity", {**IDENTITY, "Chemistry": 0x42}, 1.0)
    assert image.packs[BAY].chemistry == "code_0x42"
    feed(adapter, image, "PackIdentity", {**IDENTITY, "Chemistry": 6}, 1.1)
    assert image.packs[BAY].chemistry == "nmc"
    # PackState's range is 0..3; a BMS may still send a value the table does not name
    can_id, data = P.encode("PackCells", CELLS, sa=VEHICLE_PACK_SA)
    dec = P.decode(can_id, data[:7] + b"\x09")
    adapter.apply(image, dec, 1.2)
    assert image.packs[BAY].state is PackState.UNKNOWN


def test_every_dbc_pack_state_maps_to_the_core(adapter: BmsAdapter, image: ProcessImage) -> None:
    for code, name in P.choices("PackCells", "PackState").items():
        feed(adapter, image, "PackCells", {**CELLS, "PackState": code}, 1.0)
        assert image.packs[BAY].state is PackState(name)


def test_fault_mapping_covers_every_fault_bit_of_the_dbc() -> None:
    bits = {s.name for s in P.message("PackCells").signals if s.length == 1}
    assert set(FAULT_SIGNALS) == bits
    assert set(FAULT_SIGNALS.values()) == set(PackFault)  # and every core fault has its bit


@pytest.mark.parametrize(("signal", "fault"), sorted(FAULT_SIGNALS.items()))
def test_each_fault_bit_alone(adapter: BmsAdapter, image: ProcessImage, signal: str,
                              fault: PackFault) -> None:
    feed(adapter, image, "PackCells", {**CELLS, signal: 1}, 1.0)
    assert image.packs[BAY].faults == {fault}


def test_faults_and_peak_temperature_latch_until_the_core_has_scanned(
    adapter: BmsAdapter, image: ProcessImage
) -> None:
    feed(adapter, image, "PackIdentity", IDENTITY, 1.0)
    feed(adapter, image, "PackStatus", {**STATUS, "MaxCellTemp": 75}, 1.1)
    feed(adapter, image, "PackStatus", {**STATUS, "MaxCellTemp": 26}, 1.2)
    feed(adapter, image, "PackCells", {**CELLS, "ThermalAlarm": 1}, 1.1)
    feed(adapter, image, "PackCells", {**CELLS, "FaultInternal": 1}, 1.2)
    rep = image.packs[BAY]
    assert rep.max_cell_temp_c == 26.0 and rep.peak_cell_temp_c == 75.0
    assert rep.faults == {PackFault.INTERNAL}
    assert rep.faults_latched == {PackFault.THERMAL_ALARM, PackFault.INTERNAL}
    image.scanned()
    assert rep.peak_cell_temp_c is None and rep.faults_latched == frozenset()
    feed(adapter, image, "PackStatus", {**STATUS, "MinCellTemp": -20, "MaxCellTemp": -5}, 1.3)
    feed(adapter, image, "PackStatus", {**STATUS, "MinCellTemp": -20, "MaxCellTemp": -9}, 1.4)
    assert rep.peak_cell_temp_c == -5.0  # a peak below 0 C is a peak too
    feed(adapter, image, "PackCells", CELLS, 1.5)
    assert rep.faults == frozenset() and rep.faults_latched == frozenset()


def test_another_identity_never_starts_a_new_report_but_is_latched(
    adapter: BmsAdapter, image: ProcessImage
) -> None:
    """Issue 7, items 1 and 5: a second identity at an address used to replace the report
    (history, freshness and limits lost; the spoofed identity taken). Now what was heard
    stays, and every identity heard is latched for the core to judge."""
    feed(adapter, image, "PackIdentity", IDENTITY, 1.0)
    feed(adapter, image, "PackStatus", STATUS, 1.1)
    feed(adapter, image, "PackLimits", LIMITS, 1.1)
    rep = image.packs[BAY]
    assert rep.serial == 7 and rep.chemistry == "sodium_ion" and rep.max_cell_temp_c == 26
    feed(adapter, image, "PackIdentity", {"PackSerial": 8, "PackFamily": 25, "Chemistry": 3,
                                          "RatedEnergy": 100.0}, 2.0)
    assert image.packs[BAY] is rep and rep.first_seen == 1.0
    assert rep.last_seen[PackData.STATUS] == 1.1 and rep.max_charge_voltage_v == 446.3
    assert {(i.serial, i.family, i.chemistry) for i in rep.identities_latched} == {
        (7, 20, "sodium_ion"), (8, 25, "lfp")}
    feed(adapter, image, "PackLimits", {**LIMITS, "CellCount": 200}, 2.1)
    assert {r.cell_count for r in rep.ratings_latched} == {113, 200}
    feed(adapter, image, "PackStatus", {**STATUS, "SOC": 100.0}, 2.2)
    feed(adapter, image, "PackStatus", STATUS, 2.3)
    assert rep.soc_pct == 81.2 and rep.peak_soc_pct == 100.0
    image.scanned()
    assert rep.identities_latched == frozenset() and rep.ratings_latched == frozenset()
    assert rep.peak_soc_pct is None


def test_frames_from_empty_or_missing_locations_are_dropped_and_counted(
    adapter: BmsAdapter, image: ProcessImage
) -> None:
    """Issue 7, item 3: fault flags from an empty slot, or one that does not exist, locked
    real slots out. The PLC's presence decides where a pack can talk from."""
    image.plc = plc_showing_packs(slots=4, occupied=(1, 2))
    assert feed(adapter, image, "PackCells", {**CELLS, "ThermalAlarm": 1}, 1.0,
                sa=rack_sa(3)) is None  # exists, empty
    assert feed(adapter, image, "PackCells", {**CELLS, "ThermalAlarm": 1}, 1.0,
                sa=rack_sa(17)) is None  # no such slot on this station
    assert image.packs == {}
    assert adapter.stats["location_empty"] == 1 and adapter.stats["no_such_slot"] == 1
    assert feed(adapter, image, "PackStatus", STATUS, 1.0, sa=rack_sa(2)) == Location.rack(2)
    image.plc = plc_showing_packs(bay=False)  # the car left
    assert feed(adapter, image, "PackIdentity", IDENTITY, 1.1) is None
    assert adapter.stats["location_empty"] == 2
    image.plc_read_at = None
    assert feed(adapter, image, "PackStatus", STATUS, 1.2, sa=rack_sa(2)) is None  # no PLC yet
    image.plc_read_at = 1.2
    image.plc = plc_showing_packs(occupied=(1,))  # slot 2 emptied: its report goes with it
    assert feed(adapter, image, "PackStatus", STATUS, 1.3, sa=rack_sa(2)) is None
    assert Location.rack(2) not in image.packs


def test_data_before_identity_starts_an_unidentified_report(
    adapter: BmsAdapter, image: ProcessImage
) -> None:
    assert feed(adapter, image, "PackStatus", STATUS, 3.0, sa=rack_sa(2)) == Location.rack(2)
    rep = image.packs[Location.rack(2)]
    assert not rep.identified and rep.first_seen == 3.0 and rep.serial is None
    feed(adapter, image, "PackIdentity", IDENTITY, 3.1, sa=rack_sa(2))
    assert image.packs[Location.rack(2)] is rep and rep.identified


def test_a_frame_from_no_pack_address_is_ignored_and_counted(
    adapter: BmsAdapter, image: ProcessImage
) -> None:
    assert feed(adapter, image, "PackStatus", STATUS, 1.0, sa=0x42) is None
    assert feed(adapter, image, "PackIdentity", IDENTITY, 1.0, sa=0xFE) is None
    assert image.packs == {}
    assert adapter.stats["not_a_pack"] == 2 and adapter.stats["applied"] == 0


def test_a_message_without_pack_data_is_ignored_and_counted(
    adapter: BmsAdapter, image: ProcessImage
) -> None:
    # a pack address sending a station message (a misconfigured node): no report, no stamp
    control = {"ControlCommand": 1, "ChargeCurrentLimit": 10, "ChargeVoltageLimit": 400,
               "ControlCounter": 1}
    assert feed(adapter, image, "PackControl", control, 1.0, sa=rack_sa(1),
                da=STATION_SA) is None
    assert feed(adapter, image, "Request", {"RequestedPgn": 0xFF10}, 1.0,
                sa=VEHICLE_PACK_SA, da=0xFF) is None
    assert image.packs == {}
    assert adapter.stats["not_pack_data"] == 2


def test_message_of_kind_and_pgns(adapter: BmsAdapter) -> None:
    for kind in PackData:
        name = adapter.message_of(kind)
        assert adapter.kind_of(name) is kind
        assert adapter.pgn_of(kind) == P.pgn_of(name)
    assert adapter.pgn_of(PackData.LIMITS) == 0xFF14
    assert adapter.kind_of("PackControl") is None


def test_every_pack_command_has_its_dbc_code(adapter: BmsAdapter) -> None:
    codes = P.codes("PackControl", "ControlCommand")
    assert adapter.command_codes == {k: codes[k.value] for k in PackCommandKind}


def _dbc_variant(tmp_path: Path, old: str, new: str) -> PackProtocol:
    from importlib import resources

    text = resources.files("drivers.bms.dbc").joinpath("swap_pack.dbc").read_text()
    assert old in text
    path = tmp_path / "variant.dbc"
    path.write_text(text.replace(old, new))
    return PackProtocol(path)


def test_a_dbc_the_adapter_cannot_read_fails_at_start(tmp_path: Path) -> None:
    no_timeout = _dbc_variant(tmp_path, 'BA_ "RxTimeoutMs" BO_ 2566853760 3000;\n', "")
    with pytest.raises(ValueError, match="PackLimits: the DBC gives no RxTimeoutMs"):
        BmsAdapter(no_timeout)
    odd_state = _dbc_variant(tmp_path, '3 "discharging"', '3 "sleeping"')
    with pytest.raises(ValueError, match="sleeping"):
        BmsAdapter(odd_state)
    no_isolate = _dbc_variant(tmp_path, '3 "isolate"', '3 "open"')
    with pytest.raises(ValueError, match="isolate"):
        BmsAdapter(no_isolate)


def test_pack_control_period_and_timeout_come_from_the_dbc(adapter: BmsAdapter) -> None:
    assert adapter.control_period_s() == P.period_s("PackControl") == 1.0
    assert adapter.control_timeout_s() == P.timeout_s("PackControl") == 3.0


# ---- the vehicle's VIN (VehicleIdentification, reassembled from its BAM) ----------------

VIN = "LSJA24U61NG123456"


def feed_vin(adapter: BmsAdapter, img: ProcessImage, vin: str, t: float,
             sa: int = VEHICLE_PACK_SA, delimiter: int = 42) -> Location | None:
    _, payload = P.encode("VehicleIdentification", {"Vin": vin, "VinDelimiter": delimiter},
                          sa=sa)
    return adapter.apply(img, P.decode_transfer(0xFEEC, sa, payload), t)


def vin_stats(adapter: BmsAdapter) -> dict[str, int]:
    return {k: v for k, v in adapter.stats.items() if k.startswith("vin_") and v}


def test_a_vin_from_the_bay_sets_the_image(adapter: BmsAdapter, image: ProcessImage) -> None:
    assert feed_vin(adapter, image, VIN, 12.5) == BAY
    assert image.vehicle_vin == VIN and image.vehicle_vin_at == 12.5
    assert feed_vin(adapter, image, VIN, 17.5) == BAY  # heard again: the time moves on
    assert image.vehicle_vin_at == 17.5
    assert vin_stats(adapter) == {"vin_applied": 2}
    assert image.packs == {}  # a VIN is no pack data


def test_a_vin_while_the_bay_pack_is_out_counts(adapter: BmsAdapter,
                                                image: ProcessImage) -> None:
    image.plc["vehicle_pack_present"] = False  # mid-swap: the car is still there
    assert feed_vin(adapter, image, VIN, 1.0) == BAY
    assert image.vehicle_vin == VIN


@pytest.mark.parametrize("sa", [rack_sa(1), STATION_SA, 0x00, 0xF3, 0xFE])
def test_a_vin_from_another_address_is_dropped(adapter: BmsAdapter, image: ProcessImage,
                                              sa: int) -> None:
    assert feed_vin(adapter, image, VIN, 1.0, sa=sa) is None
    assert image.vehicle_vin is None and image.vehicle_vin_at is None
    assert vin_stats(adapter) == {"vin_wrong_address": 1}


@pytest.mark.parametrize("plc", [
    {"vehicle_present": False, "vehicle_token": 0},
    {"vehicle_present": True, "vehicle_token": 0},  # no reader token
    {"vehicle_present": False, "vehicle_token": 7},
])
def test_a_vin_while_the_plc_shows_no_vehicle_is_dropped(
    adapter: BmsAdapter, image: ProcessImage, plc: dict[str, Any]
) -> None:
    image.plc.update(plc)
    assert feed_vin(adapter, image, VIN, 1.0) is None
    assert image.vehicle_vin is None
    assert vin_stats(adapter) == {"vin_no_vehicle": 1}


def test_a_vin_before_the_plc_was_read_is_dropped(adapter: BmsAdapter) -> None:
    img = ProcessImage(pack_timeouts=adapter.timeouts())
    img.plc = plc_showing_packs()  # values, but never a good read
    assert feed_vin(adapter, img, VIN, 1.0) is None
    assert vin_stats(adapter) == {"vin_no_vehicle": 1}


@pytest.mark.parametrize("vin", [
    "LSJA24U61NG12345I",  # I, O and Q are not VIN characters (ISO 3779)
    "LSJA24U61NG12345O",
    "QSJA24U61NG123456",
    "lsja24u61ng123456",  # capitals only
    "LSJA24U61NG 23456",
    "LSJA24U61NG12345*",
    "LSJA24U61NG1234\x00\x00",
])
def test_a_vin_that_is_no_iso_3779_vin_is_dropped(adapter: BmsAdapter, image: ProcessImage,
                                                  vin: str) -> None:
    assert feed_vin(adapter, image, vin, 1.0) is None
    assert image.vehicle_vin is None
    assert vin_stats(adapter) == {"vin_invalid": 1}


def test_a_vin_without_its_delimiter_is_dropped(adapter: BmsAdapter,
                                                image: ProcessImage) -> None:
    assert feed_vin(adapter, image, VIN, 1.0, delimiter=0xFF) is None
    assert vin_stats(adapter) == {"vin_invalid": 1}


def test_a_dropped_vin_leaves_the_one_heard(adapter: BmsAdapter, image: ProcessImage) -> None:
    feed_vin(adapter, image, VIN, 1.0)
    feed_vin(adapter, image, "WVWZZZ1JZXW000001", 2.0, sa=rack_sa(2))
    feed_vin(adapter, image, "LSJA24U61NG12345O", 3.0)
    assert (image.vehicle_vin, image.vehicle_vin_at) == (VIN, 1.0)


def test_a_dbc_without_the_vin_message_fails_at_start(tmp_path: Path) -> None:
    renamed = _dbc_variant(tmp_path, " VehicleIdentification: ", " VehicleId: ")
    with pytest.raises(ValueError, match="no VehicleIdentification message"):
        BmsAdapter(renamed)
    no_delimiter = _dbc_variant(tmp_path, '42 "delimiter"', '42 "star"')
    with pytest.raises(ValueError, match="VinDelimiter: no value 'delimiter'"):
        BmsAdapter(no_delimiter)
