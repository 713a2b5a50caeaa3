"""Fault injection on the mechanics model (fake clock): every fault set, seen, cleared."""

from __future__ import annotations

from typing import Any

import pytest
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest

from drivers.bms.protocol import VEHICLE_PACK_SA, rack_sa
from drivers.plc.regmap import load_register_map
from sim_hw.can_packs import CanPacks, pack_signals
from sim_hw.config import CanConfig
from sim_hw.faults import FAULT_NAMES, FaultError
from sim_hw.mechanics import ERR_STOPPED, STATUS_BUSY, STATUS_DONE, StationModel
from sim_hw.packs import AMBIENT_C, CMD_CHARGE_ENABLE
from sim_hw.plc_server import PlcServer
from tests.unit.test_sim_mechanics import DT, FREE_SLOT, swap_to
from tests.unit.test_sim_mechanics import station as make_station

STABLE_NAMES = (
    "estop", "safety_plc_fault", "light_curtain", "door_open", "smoke", "vehicle_moved",
    "lift_overtravel", "shuttle_misplaced", "bolt_torque_fail", "bolt_not_reported",
    "pack_present_ghost", "pack_missing_sensor", "pack_over_temp", "pack_temp_rise",
    "pack_fault", "pack_insulation_low", "plc_silent", "can_silent", "can_wrong_bus",
    "can_error_passive", "can_bus_off", "can_babble", "network_down",
    "safety_report_delay", "setpoint_mismatch",
)


def no_violations(m: StationModel) -> None:
    assert m.observer.violations == [], m.observer.violations


# ---------------------------------------------------------------- the registry
def test_the_fault_names_are_stable_and_listed_with_their_meaning() -> None:
    m, _ = make_station()
    assert FAULT_NAMES == STABLE_NAMES
    listed = m.faults.list()
    assert [f["name"] for f in listed] == list(STABLE_NAMES)
    keys = {"name", "description", "active", "value", "target", "value_meaning", "unit",
            "default_value", "choices", "target_meaning", "default_target", "kind", "set_at",
            "pack_serial"}
    for f in listed:
        assert set(f) == keys and f["description"] and not f["active"]
    by = {f["name"]: f for f in listed}
    assert (by["vehicle_moved"]["default_value"], by["vehicle_moved"]["unit"]) == (30.0, "mm")
    assert by["lift_overtravel"]["default_value"] == 40.0
    assert by["shuttle_misplaced"]["default_value"] == 200.0
    assert (by["bolt_torque_fail"]["default_value"], by["bolt_torque_fail"]["default_target"]) \
        == (60.0, 1)
    assert by["pack_over_temp"]["default_value"] == 75.0
    assert by["pack_over_temp"]["default_target"] == "vehicle"
    assert by["pack_temp_rise"]["default_value"] == 20.0
    assert by["pack_fault"]["default_value"] == "thermal_alarm"
    assert "insulation" in by["pack_fault"]["choices"]
    assert by["pack_insulation_low"]["default_value"] == 50.0
    assert by["estop"]["value_meaning"] is None and by["estop"]["target_meaning"] is None
    assert by["lift_overtravel"]["kind"] == "sensor" and by["estop"]["kind"] == "physical"


@pytest.mark.parametrize(
    ("name", "value", "target", "match"),
    [
        ("no_such_fault", None, None, "unknown fault 'no_such_fault'"),
        ("estop", "1", None, "estop: takes no value"),
        ("estop", None, 3, "estop: takes no target"),
        ("vehicle_moved", "far", None, "vehicle_moved: value must be a number of mm"),
        ("vehicle_moved", 5000, None, "outside -1000..1000"),
        ("vehicle_moved", "nan", None, "outside"),
        ("pack_over_temp", True, None, "must be a number"),
        ("pack_fault", "melting", None, "not one of"),
        ("bolt_torque_fail", None, 11, r"not a bolt index 1\.\.10"),
        ("bolt_not_reported", None, "left", "not a bolt index"),
        ("pack_present_ghost", None, "roof", "bad target 'roof'"),
        ("pack_over_temp", None, 14, r"target slot 14 outside 1\.\.13"),
        ("can_silent", None, "shuttle", "bad target 'shuttle'"),
        ("pack_over_temp", None, 2.5, "bad target"),
    ],
)
def test_bad_requests_are_clear_errors(name: str, value: Any, target: Any, match: str) -> None:
    m, _ = make_station()
    with pytest.raises(FaultError, match=match):
        m.faults.set(name, value, target)
    assert not any(f["active"] for f in m.faults.list())


def test_set_parses_strings_like_the_cli_and_clear_is_idempotent() -> None:
    m, c = make_station()
    c.step(5)
    info = m.faults.set("bolt_torque_fail", "75.5", "4")
    assert (info["active"], info["value"], info["target"], info["set_at"]) == (
        True, 75.5, 4, pytest.approx(0.5))
    info = m.faults.set("pack_fault", " Insulation ", "Shuttle")
    assert (info["value"], info["target"]) == ("insulation", "shuttle")
    assert m.faults.set("can_silent", target="all")["target"] is None
    assert m.faults.clear("estop")["was_active"] is False
    assert m.faults.clear("bolt_torque_fail")["was_active"] is True
    assert sorted(m.faults.clear_all()) == ["can_silent", "pack_fault"]
    assert not any(f["active"] for f in m.faults.list())
    with pytest.raises(FaultError, match="unknown fault"):
        m.faults.clear("nope")


# ------------------------------------------------------------ safety inputs
@pytest.mark.parametrize(
    ("fault", "signal"),
    [("estop", "estop_ok"), ("safety_plc_fault", "safety_plc_ok"),
     ("light_curtain", "light_curtain_clear"), ("door_open", "doors_closed"),
     ("smoke", "smoke_clear")],
)
def test_safety_faults_open_the_input_stop_motion_and_clear(fault: str, signal: str) -> None:
    m, c = make_station()
    c.arrive()
    rec = c.send("POSITION")
    c.step(5)
    m.faults.set(fault)
    assert m.inputs()[signal] is False and getattr(m, signal) is False
    assert m.truth()["safety"][signal] is False
    c.step()
    assert rec.error_code == ERR_STOPPED and "safety" in rec.reason
    x = m.inputs()["position_offset_x"]
    c.step(10)
    assert m.inputs()["position_offset_x"] == x  # stopped where it stood
    c.refused("POSITION")
    m.faults.clear(fault)
    assert m.inputs()[signal] is True
    c.ok("POSITION")
    # the plain attribute still works, and both must be OK for the input to read 1
    setattr(m, signal, False)
    m.faults.set(fault)
    m.faults.clear(fault)
    assert m.inputs()[signal] is False
    setattr(m, signal, True)
    assert m.inputs()[signal] is True
    no_violations(m)


# ---------------------------------------------------------------- the car
def test_vehicle_moved_drifts_the_true_position_and_blocks_lift() -> None:
    m, c = make_station()
    swap_to(c, "POSITION")
    x0 = m.inputs()["position_offset_x"]
    m.faults.set("vehicle_moved")
    assert m.inputs()["position_offset_x"] == pytest.approx(x0 + 30.0)
    assert m.truth()["offset_x_mm"] == pytest.approx(x0 + 30.0)
    c.refused("LIFT")  # the car is no longer within 5 mm
    m.faults.set("vehicle_moved", -12.5)  # re-aim: replaces the value
    assert m.inputs()["position_offset_x"] == pytest.approx(x0 - 12.5)
    m.faults.clear("vehicle_moved")
    assert m.inputs()["position_offset_x"] == pytest.approx(x0)
    c.ok("LIFT")
    m.faults.set("vehicle_moved", 40)  # while lifted: seen, and not counted as motion
    c.step(5)
    assert m.inputs()["position_offset_x"] == pytest.approx(x0 + 40.0)
    no_violations(m)


# --------------------------------------------------------- position sensors
def test_lift_overtravel_corrupts_the_reading_only() -> None:
    m, c = make_station()
    c.arrive()
    m.faults.set("lift_overtravel")
    assert m.inputs()["lift_height"] == 40 and m.truth()["lift_mm"] == 0.0
    c.ok("POSITION")  # the PLC's own interlocks judge the true lift
    c.ok("LIFT")
    assert m.inputs()["lift_height"] == 540 and m.truth()["lift_mm"] == 500.0
    m.faults.set("lift_overtravel", 15)
    assert m.inputs()["lift_height"] == 515
    m.faults.clear("lift_overtravel")
    assert m.inputs()["lift_height"] == 500
    no_violations(m)


def test_shuttle_misplaced_corrupts_the_reading_only() -> None:
    m, c = make_station()
    m.faults.set("shuttle_misplaced")
    assert m.inputs()["shuttle_position"] == 200 and m.truth()["shuttle_mm"] == 0.0
    m.faults.set("shuttle_misplaced", -500)
    assert m.inputs()["shuttle_position"] == 0  # clamped to the register's range
    swap_to(c, "UNLOCK")
    assert m.inputs()["shuttle_position"] == 2500
    m.faults.clear("shuttle_misplaced")
    assert m.inputs()["shuttle_position"] == 3000
    no_violations(m)


# -------------------------------------------------------------------- bolts
def test_bolt_torque_fail_on_unlock_and_lock() -> None:
    m, c = make_station()
    swap_to(c, "LIFT")
    m.faults.set("bolt_torque_fail", target=3)
    c.ok("UNLOCK")  # the PLC reports torques; judging the window is the controller's job
    inp = m.inputs()
    assert inp["bolt_torque"][2] == 60.0 and inp["bolts_tight"] == 1
    assert m.bolts.tight == [False, False, True] + [False] * 7  # the failed run: still tight
    assert all(85.0 <= t <= 95.0 for i, t in enumerate(inp["bolt_torque"][:10]) if i != 2)
    c.refused("REMOVE")  # the PLC will not pull a pack held by a bolt
    m.faults.clear("bolt_torque_fail")
    c.ok("UNLOCK")  # runs the bolt still tight, normally this time
    assert m.inputs()["bolts_tight"] == 0 and 85.0 <= m.inputs()["bolt_torque"][2] <= 95.0
    for name, p1 in (("REMOVE", 0), ("STORE", FREE_SLOT), ("FETCH", 1), ("INSTALL", 0)):
        c.ok(name, p1)
    m.faults.set("bolt_torque_fail", 118, 10)  # inside the lock window: a good run
    m.faults.set("bolt_torque_fail", target=10)  # re-aimed: 60 N*m
    c.ok("LOCK")
    inp = m.inputs()
    assert inp["bolt_torque"][9] == 60.0 and inp["bolts_tight"] == 9
    c.refused("LOWER")
    m.faults.clear("bolt_torque_fail")
    c.ok("LOCK")
    assert m.inputs()["bolts_tight"] == 10 and 117.0 <= m.inputs()["bolt_torque"][9] <= 123.0
    c.ok("LOWER")
    no_violations(m)


def test_bolt_not_reported_reads_zero_and_never_counts() -> None:
    m, c = make_station()
    swap_to(c, "LOCK")
    m.faults.set("bolt_not_reported", target=2)
    inp = m.inputs()
    assert inp["bolt_torque"][1] == 0.0 and inp["bolt_angle"][1] == 0.0
    assert inp["bolts_tight"] == 9 and m.truth()["bolts_tight"] == 10
    m.faults.clear("bolt_not_reported")
    inp = m.inputs()
    assert inp["bolts_tight"] == 10 and 117.0 <= inp["bolt_torque"][1] <= 123.0
    no_violations(m)


# ------------------------------------------------------- presence sensors
@pytest.mark.parametrize(
    ("target", "signal", "index"),
    [("shuttle", "shuttle_pack_present", None), ("vehicle", "vehicle_pack_present", None),
     ("stacker", "stacker_pack_present", None), (3, "rack_slot_occupied", 2),
     (FREE_SLOT, "rack_slot_occupied", FREE_SLOT - 1)],
)
def test_presence_sensor_faults(target: Any, signal: str, index: int | None) -> None:
    m, c = make_station()
    c.arrive()

    def read() -> bool:
        v = m.inputs()[signal]
        return bool(v if index is None else v[index])

    truth = read()
    m.faults.set("pack_present_ghost", target=target)
    assert read() is True
    m.faults.set("pack_missing_sensor", target=target)
    m.faults.clear("pack_present_ghost")
    assert read() is False
    m.faults.clear("pack_missing_sensor")
    assert read() is truth
    assert m.faults.set("pack_present_ghost")["target"] == "shuttle"  # the default


# --------------------------------------------------------------------- packs
def cells(pack: Any) -> dict[str, Any]:
    s = pack_signals(pack)
    return {**s["PackStatus"], **s["PackCells"]}


def test_pack_over_temp_on_the_vehicle_pack_then_cools_back() -> None:
    m, c = make_station()
    c.arrive()
    assert m.vehicle is not None and m.vehicle.pack is not None
    pack = m.vehicle.pack
    info = m.faults.set("pack_over_temp")
    assert info["pack_serial"] == pack.serial and info["target"] == "vehicle"
    assert cells(pack)["MaxCellTemp"] == 75
    c.step(100)  # held while active
    assert cells(m.can_packs()[VEHICLE_PACK_SA])["MaxCellTemp"] == 75
    assert cells(pack)["MinCellTemp"] <= 75
    m.faults.clear("pack_over_temp")
    c.step(int(30 / DT))  # back within ~30 simulated seconds
    assert pack.max_cell_temp_c < AMBIENT_C + 3.0
    c.step(int(30 / DT))
    assert pack.max_cell_temp_c == pytest.approx(AMBIENT_C, abs=0.6)


def test_vehicle_target_with_an_empty_bay_follows_the_pack_to_be_installed() -> None:
    m, c = make_station()
    swap_to(c, "STORE")
    info = m.faults.set("pack_over_temp", 90, "vehicle")
    assert info["pack_serial"] is None  # nothing to bind yet: pending
    stored = m.rack[FREE_SLOT]
    assert stored is not None and stored.max_cell_temp_c < 40
    new = m.rack[1]
    assert new is not None
    c.ok("FETCH", 1)
    c.step()
    assert m.faults.list()[12]["pack_serial"] == new.serial
    assert new.max_cell_temp_c == 90.0
    c.ok("INSTALL")
    c.ok("LOCK")
    c.until(lambda: VEHICLE_PACK_SA in m.can_packs())
    assert cells(m.can_packs()[VEHICLE_PACK_SA])["MaxCellTemp"] == 90
    m.faults.clear("pack_over_temp")


def test_a_slot_target_is_resolved_once_and_follows_the_pack() -> None:
    m, c = make_station()
    swap_to(c, "STORE")
    pack = m.rack[2]
    assert pack is not None
    m.faults.set("pack_fault", "over_voltage", 2)
    c.ok("FETCH", 2)  # the pack leaves slot 2: the fault goes with it
    c.step()
    assert "over_voltage" in pack.faults and m.shuttle_pack is pack
    m.faults.clear("pack_fault")
    assert "over_voltage" not in pack.faults


def test_pack_temp_rise_climbs_steadily() -> None:
    m, c = make_station()
    pack = m.rack[2]
    assert pack is not None
    t0 = pack.max_cell_temp_c
    m.faults.set("pack_temp_rise", target=2)
    c.step(int(60 / DT))
    assert pack.max_cell_temp_c == pytest.approx(t0 + 20.0, abs=0.5)
    c.step(int(30 / DT))
    assert pack.max_cell_temp_c == pytest.approx(t0 + 30.0, abs=0.5)
    assert cells(m.can_packs()[rack_sa(2)])["MaxCellTemp"] == round(pack.max_cell_temp_c)
    m.faults.clear("pack_temp_rise")
    c.step(int(60 / DT))
    assert pack.max_cell_temp_c < AMBIENT_C + 1.0


@pytest.mark.parametrize(
    ("flag", "signal"),
    [("over_temp", "FaultOverTemp"), ("over_voltage", "FaultOverVoltage"),
     ("under_voltage", "FaultUnderVoltage"), ("insulation", "FaultInsulation"),
     ("thermal_alarm", "ThermalAlarm"), ("internal", "FaultInternal")],
)
def test_pack_fault_flags(flag: str, signal: str) -> None:
    m, _ = make_station()
    pack = m.rack[4]
    assert pack is not None
    m.faults.set("pack_fault", flag, "4")
    assert cells(pack)[signal] == 1
    m.faults.clear("pack_fault")
    assert cells(pack)[signal] == 0


def test_pack_fault_defaults_to_a_thermal_alarm_on_the_vehicle_pack() -> None:
    m, c = make_station()
    c.arrive()
    m.faults.set("pack_fault")
    assert m.vehicle is not None and m.vehicle.pack is not None
    assert cells(m.vehicle.pack)["ThermalAlarm"] == 1


def test_pack_insulation_low() -> None:
    m, c = make_station()
    pack = m.rack[5]
    assert pack is not None
    m.faults.set("pack_insulation_low", target=5)
    c.step(3)
    assert cells(pack)["InsulationResistance"] == 50
    m.faults.set("pack_insulation_low", 120, 5)
    assert cells(pack)["InsulationResistance"] == 120
    m.faults.clear("pack_insulation_low")
    assert cells(pack)["InsulationResistance"] == 5000


# --------------------------------------------------------------------- wires
class FakeBus:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


def sources(cp: CanPacks, bus: FakeBus, real: float) -> set[int]:
    bus.sent.clear()
    cp.send_cycle(real)
    return {msg.arbitration_id & 0xFF for msg in bus.sent}


def test_can_silent_and_network_down_silence_the_packs() -> None:
    m, c = make_station()
    c.arrive()
    cp = CanPacks(m, CanConfig())
    bus = FakeBus()
    cp._bus = bus  # type: ignore[assignment]
    everyone = set(m.can_packs())
    assert sources(cp, bus, 1.0) == everyone
    m.faults.set("can_silent", target=2)
    assert sources(cp, bus, 1.1) == everyone - {rack_sa(2)}
    m.faults.set("can_silent", target="vehicle")
    assert sources(cp, bus, 1.2) == everyone - {VEHICLE_PACK_SA}
    m.faults.set("can_silent")
    assert sources(cp, bus, 1.3) == set()
    m.faults.clear("can_silent")
    assert sources(cp, bus, 1.4) == everyone
    # network_down: silent and deaf
    m.faults.set("network_down")
    assert sources(cp, bus, 1.5) == set()
    can_id, data = cp.protocol.encode(
        "PackControl", {"ControlCommand": cp.protocol.codes(
            "PackControl", "ControlCommand")[CMD_CHARGE_ENABLE], "ChargeCurrentLimit": 100.0,
                        "ChargeVoltageLimit": 500.0, "ControlCounter": 1},
        sa=0x56, da=rack_sa(2))
    cp.handle_frame(can_id, data, True, 1.5)
    assert cp.controls == 0
    m.faults.clear("network_down")
    cp.handle_frame(can_id, data, True, 1.6)
    assert cp.controls == 1
    assert sources(cp, bus, 1.7) == everyone


def test_plc_silent_and_network_down_silence_the_modbus_server() -> None:
    m, _ = make_station()
    plc = PlcServer(m, load_register_map(), lambda: (0.0, 0.0))
    pdu = ReadHoldingRegistersRequest(dev_id=1, address=0, count=1)

    def passed() -> bool:
        return plc._trace_pdu(False, pdu) is not None

    assert passed()
    for name in ("plc_silent", "network_down"):
        m.faults.set(name)
        assert plc.silent and not passed()
        assert not plc.paused  # pause() / resume() stay the manual switch
        m.faults.clear(name)
        assert not plc.silent and passed()


def test_a_silent_plc_gets_no_heartbeat_so_motion_stops() -> None:
    """What plc_silent means for the model: writes stop arriving, the heartbeat goes stale."""
    m, c = make_station()
    c.arrive()
    rec = c.send("POSITION")
    c.step(5)
    m.faults.set("plc_silent")
    c.beating = False  # the controller's writes are dropped on the wire
    c.until(lambda: rec.status != STATUS_BUSY, limit_s=3.0)
    assert rec.error_code == ERR_STOPPED and "heartbeat" in rec.reason
    m.faults.clear("plc_silent")
    c.beating = True
    c.step()
    assert c.run("POSITION").status == STATUS_DONE
    no_violations(m)


def test_sensor_faults_never_fool_the_plc_or_the_observer() -> None:
    """With every sensor fault set, a whole swap still runs and the observer sees no harm."""
    m, c = make_station(vehicles=1)
    m.faults.set("lift_overtravel")
    m.faults.set("shuttle_misplaced")
    m.faults.set("bolt_not_reported", target=1)
    m.faults.set("pack_present_ghost", target="shuttle")
    m.faults.set("pack_missing_sensor", target="vehicle")
    swap_to(c, "RELEASE")
    assert len(m.history) == 1
    no_violations(m)


def test_the_readme_lists_every_fault_and_invariant() -> None:
    from pathlib import Path

    from sim_hw.observer import INVARIANTS

    text = (Path(__file__).resolve().parents[2] / "sim_hw" / "README.md").read_text()
    for name in (*FAULT_NAMES, *INVARIANTS):
        assert f"| `{name}` |" in text, name
