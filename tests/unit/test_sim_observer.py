"""The independent observer: each invariant provoked on the model (forcing state past the
sim PLC's own interlocks where needed), and normal swaps that record nothing."""

from __future__ import annotations

import pytest

from sim_hw.config import SimConfig
from sim_hw.mechanics import StationModel
from sim_hw.observer import INVARIANTS
from sim_hw.packs import CMD_CHARGE_ENABLE, CMD_ISOLATE, CMD_KEEP
from tests.unit.test_sim_mechanics import DT, Controller, swap_to
from tests.unit.test_sim_mechanics import station as make_station


def only(m: StationModel, invariant: str) -> dict:
    got = [v["invariant"] for v in m.observer.violations]
    assert got == [invariant], m.observer.violations
    v = m.observer.violations[0]
    assert set(v) == {"t", "invariant", "text", "seq", "moved", "commands"}
    assert len(v["commands"]) <= 5
    assert v["text"]
    return v


def no_interlocks(m: StationModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sim PLC that no longer stops motion by itself (safety inputs, heartbeat)."""
    monkeypatch.setattr(m, "_motion_inhibit", lambda real: "")


def test_the_invariant_ids() -> None:
    assert set(INVARIANTS) == {
        "shuttle_travel_car_not_lifted", "unlock_not_lifted_or_docked",
        "lift_lowered_partly_locked", "motion_with_safety_open", "charging_isolated_pack",
        "motion_with_controller_heartbeat_lost",
    }


def test_a_normal_swap_records_nothing() -> None:
    m, c = make_station(vehicles=2)
    swap_to(c, "RELEASE")
    c.arrive()  # the next car: arrival (bolts reset, a new pack) is not motion
    assert len(m.history) == 1 and m.observer.violations == []


def test_a_swap_with_instant_commands_records_nothing() -> None:
    """Zero-duration commands play a whole motion in one step: judged on the end state."""
    timing = {k: 0.0 for k in SimConfig().timing.model_dump()}
    m = StationModel(SimConfig.model_validate({"vehicles": 1, "timing": timing}))
    swap_to(Controller(m), "RELEASE")
    assert len(m.history) == 1 and m.observer.violations == []


@pytest.mark.parametrize("frac", [0.2, 0.5, 0.9])
def test_safety_stops_and_restarts_record_nothing(frac: float) -> None:
    """The sim PLC's own interlocks: every command stopped part-way (by a safety fault, then
    a stale heartbeat) and commanded again finishes, and no invariant breaks."""
    m, c = make_station(vehicles=1)
    c.arrive()
    for name, p1 in (("POSITION", 0), ("LIFT", 0), ("UNLOCK", 0), ("REMOVE", 0),
                     ("STORE", 13), ("FETCH", 1), ("INSTALL", 0), ("LOCK", 0), ("LOWER", 0)):
        duration = getattr(m.config.timing, name.lower())
        rec = c.send(name, p1)
        c.step(int(frac * duration / DT))
        for fault in ("estop", "light_curtain", "door_open", "safety_plc_fault"):
            m.faults.set(fault)
            c.step(5)
            assert rec.error_code == 6
            m.faults.clear(fault)
            rec = c.send(name, p1)
            c.step(2)
        c.beating = False
        c.step(int(1.5 / DT))
        c.beating = True
        assert rec.error_code == 6
        c.ok(name, p1)  # commanded again: continues from where it stood
    c.ok("RELEASE")
    assert m.observer.violations == []
    assert len(m.history) == 1 and m.history[0]["fetched_slot"] == 1


def test_shuttle_travel_under_a_car_not_lifted(monkeypatch: pytest.MonkeyPatch) -> None:
    m, c = make_station()
    swap_to(c, "LIFT")
    rec = c.send("UNLOCK")  # accepted: the car is lifted
    m.lift_mm = 120.0  # forced: the platform sags while the shuttle goes under
    c.step(int(6 / DT))
    v = only(m, "shuttle_travel_car_not_lifted")
    assert v["seq"] == rec.seq and v["commands"][-1]["name"] == "UNLOCK"
    assert [c_["name"] for c_ in v["commands"]] == ["POSITION", "LIFT", "UNLOCK"]
    assert "lift at 120 mm" in v["text"] and v["moved"] == ["shuttle"]
    assert 34.0 < v["t"] < 40.0


def test_unlock_when_not_lifted_or_not_docked() -> None:
    m, c = make_station()
    swap_to(c, "LIFT")
    c.send("UNLOCK")
    c.until(lambda: m.shuttle_mm >= 3000.0)
    m.shuttle_mm = 2000.0  # forced: the shuttle slips back before the guns run
    c.step(int(3 / DT))
    v = only(m, "unlock_not_lifted_or_docked")
    assert "shuttle at 2000 mm" in v["text"]


def test_unlock_with_the_car_lowered() -> None:
    m, c = make_station()
    swap_to(c, "LIFT")
    c.send("UNLOCK")
    c.until(lambda: m.shuttle_mm >= 3000.0)
    m.lift_mm = 0.0
    c.step(int(3 / DT))
    assert [v["invariant"] for v in m.observer.violations] == ["unlock_not_lifted_or_docked"]


def test_lowering_partly_locked() -> None:
    m, c = make_station()
    swap_to(c, "LOCK")
    c.send("LOWER")  # accepted with all bolts tight
    c.step(10)
    m.bolts.tight[4] = False  # forced: a bolt lets go during the lowering
    c.step(10)
    v = only(m, "lift_lowered_partly_locked")
    assert "9 of 10 bolts tight" in v["text"]


def test_lowering_onto_the_shuttle() -> None:
    m, c = make_station()
    swap_to(c, "LOCK")
    c.send("LOWER")
    c.step(10)
    m.shuttle_mm = 3000.0  # forced: the shuttle is under the car
    c.step(10)
    v = only(m, "lift_lowered_partly_locked")
    assert "shuttle under the car" in v["text"]


@pytest.mark.parametrize("fault", ["estop", "safety_plc_fault", "light_curtain", "door_open"])
def test_motion_with_safety_open(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    m, c = make_station()
    swap_to(c, "POSITION")
    no_interlocks(m, monkeypatch)
    rec = c.send("LIFT")
    c.step(10)
    m.faults.set(fault)
    c.step(10)
    v = only(m, "motion_with_safety_open")
    assert v["seq"] == rec.seq and v["moved"] == ["lift"]
    c.step(10)  # the same command keeps moving: still one record (one episode)
    assert len(m.observer.violations) == 1


def test_motion_with_safety_open_via_the_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    m, c = make_station()
    c.arrive()
    no_interlocks(m, monkeypatch)
    m.estop_ok = False
    c.send("POSITION")  # taken despite the open chain; the guides move the car
    c.step(5)
    v = only(m, "motion_with_safety_open")
    assert v["moved"] == ["vehicle"] and "e-stop chain" in v["text"]


def test_smoke_alone_is_not_a_motion_with_safety_open(monkeypatch: pytest.MonkeyPatch) -> None:
    m, c = make_station()
    c.arrive()
    no_interlocks(m, monkeypatch)
    m.faults.set("smoke")
    c.ok("POSITION")
    assert m.observer.violations == []


def test_motion_with_the_controller_heartbeat_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    m, c = make_station()
    c.arrive()
    no_interlocks(m, monkeypatch)
    rec = c.send("POSITION")
    c.step(5)
    c.beating = False
    c.step(int(2 / DT))
    v = only(m, "motion_with_controller_heartbeat_lost")
    assert v["seq"] == rec.seq and "stale" in v["text"]


def test_charging_an_isolated_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    m, c = make_station()
    pack = m.rack[2]
    assert pack is not None
    pack.soc_pct = 50.0
    pack.apply_control(CMD_CHARGE_ENABLE, 400.0, 800.0, 1, c.t)
    c.step(10)
    assert pack.state == "charging" and m.observer.violations == []
    pack.apply_control(CMD_ISOLATE, 0, 0, 2, c.t)
    # a BMS that ignores it
    monkeypatch.setattr(pack, "_charge_current", lambda dt: (100.0, False))
    c.step(10)
    pack.apply_control(CMD_KEEP, 0, 0, 3, c.t)
    c.step(10)
    v = only(m, "charging_isolated_pack")
    assert str(pack.serial) in v["text"] and v["seq"] is None and v["commands"] == []
    pack.apply_control(CMD_ISOLATE, 0, 0, 4, c.t)
    c.step(10)
    assert len(m.observer.violations) == 1  # still the same episode


def test_clear_and_new_episodes() -> None:
    m, c = make_station()
    swap_to(c, "LIFT")
    c.send("UNLOCK")
    m.lift_mm = 0.0
    c.until(lambda: m.shuttle_mm >= 3000.0)
    assert {v["invariant"] for v in m.observer.violations} == {
        "shuttle_travel_car_not_lifted"}
    m.observer.clear()
    assert m.observer.violations == []
    c.step(int(3 / DT))  # bolts loosen: a new record after clear()
    assert [v["invariant"] for v in m.observer.violations] == ["unlock_not_lifted_or_docked"]


def test_one_record_per_command_and_invariant() -> None:
    m, c = make_station()
    swap_to(c, "LIFT")
    first = c.send("UNLOCK")
    m.lift_mm = 100.0
    c.step(int(4 / DT))
    m.faults.set("door_open")  # the PLC stops the UNLOCK
    c.step()
    m.faults.clear("door_open")
    m.lift_mm = 500.0
    second = c.send("UNLOCK")  # commanded again (accepted: lifted) ...
    m.lift_mm = 100.0  # ... and the car sags again while the shuttle goes on
    c.step(int(2 / DT))
    got = [(v["invariant"], v["seq"]) for v in m.observer.violations]
    assert got == [("shuttle_travel_car_not_lifted", first.seq),
                   ("shuttle_travel_car_not_lifted", second.seq)]
    assert m.observer.violations[1]["commands"][-2:] == [
        {**m.observer.violations[1]["commands"][-2], "name": "UNLOCK", "error_code": 6},
        {**m.observer.violations[1]["commands"][-1], "name": "UNLOCK", "status": 1},
    ]
