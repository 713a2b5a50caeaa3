"""Which pack frames wake swapd's scan at once (station/scan_wake.py, issue 11 CAN ingest
cost): every frame is folded into the image and stamped; only one that can change a decision
now (over-temperature, a fault flag, a new identity, the first of its kind) wakes the scan,
a routine reading waits for the next tick or PLC read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.bms.protocol import VEHICLE_PACK_SA, PackProtocol, rack_sa
from station.config import JournalSection, StationConfig
from station.daemon import Daemon
from station.image import BAY, Location, PackData, PackFault, PackReport, PackState
from station.scan_wake import ScanWake
from tests.unit.test_daemon_apply import LinkDouble

STATUS = {"SOC": 55.0, "PackVoltage": 380.0, "PackCurrent": 12.0, "MinCellTemp": 24,
          "MaxCellTemp": 27}
CELLS = {"MaxCellVoltage": 3.91, "MinCellVoltage": 3.89, "InsulationResistance": 2000,
         "FaultOverTemp": 0, "FaultOverVoltage": 0, "FaultUnderVoltage": 0,
         "FaultInsulation": 0, "ThermalAlarm": 0, "FaultInternal": 0, "PackState": 0}
IDENTITY = {"PackSerial": 4242, "PackFamily": 1, "Chemistry": 1, "RatedEnergy": 60.0}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(StationConfig(journal=JournalSection(path=tmp_path / "j.sqlite")),
               link=LinkDouble([]))
    d.image.plc = {"rack_slot_count": 4, "rack_slot_occupied": [True, True, False, False],
                   "vehicle_present": True, "vehicle_pack_present": True, "vehicle_token": 7}
    d.image.plc_read_at = 0.0
    yield d
    d.journal.close()


def feed(d: Daemon, name: str, values: dict[str, Any], sa: int, t: float = 1.0) -> bool:
    """One frame through the daemon's CAN callback: did it wake the scan?"""
    proto: PackProtocol = d.protocol
    d._wake.clear()
    d._on_message(proto.decode(*proto.encode(name, values, sa=sa)), t)
    return d._wake.is_set()


def test_a_routine_reading_is_stamped_but_does_not_wake_the_scan(daemon: Daemon) -> None:
    slot1 = Location.rack(1)
    assert feed(daemon, "PackStatus", STATUS, rack_sa(1), t=1.0)  # the first: at once
    for i, t in enumerate((1.1, 1.2, 1.3)):
        moved = {**STATUS, "PackCurrent": 12.0 + i, "PackVoltage": 380.5 + i,
                 "SOC": 55.1 + i / 10, "MinCellTemp": 23 + i % 2, "MaxCellTemp": 28}
        assert not feed(daemon, "PackStatus", moved, rack_sa(1), t=t)
        rep = daemon.image.packs[slot1]
        assert rep.last_seen[PackData.STATUS] == t  # stamped per frame all the same
        assert rep.current_a == 12.0 + i  # and folded in
    assert feed(daemon, "PackCells", CELLS, rack_sa(1))
    assert not feed(daemon, "PackCells", {**CELLS, "MaxCellVoltage": 3.92}, rack_sa(1))


def test_an_over_temperature_frame_wakes_the_scan_at_once(daemon: Daemon) -> None:
    feed(daemon, "PackStatus", STATUS, VEHICLE_PACK_SA)
    assert not feed(daemon, "PackStatus", {**STATUS, "PackCurrent": 3.0}, VEHICLE_PACK_SA)
    assert feed(daemon, "PackStatus", {**STATUS, "MaxCellTemp": 75}, VEHICLE_PACK_SA)
    assert daemon.image.packs[BAY].peak_cell_temp_c == 75  # latched for the scan
    # still hot: the scan has it latched; back below the limit: a change again
    assert not feed(daemon, "PackStatus", {**STATUS, "MaxCellTemp": 76}, VEHICLE_PACK_SA)
    assert feed(daemon, "PackStatus", STATUS, VEHICLE_PACK_SA)


def test_a_fault_flag_or_state_change_wakes_the_scan(daemon: Daemon) -> None:
    feed(daemon, "PackCells", CELLS, rack_sa(2))
    assert feed(daemon, "PackCells", {**CELLS, "ThermalAlarm": 1}, rack_sa(2))
    assert not feed(daemon, "PackCells", {**CELLS, "ThermalAlarm": 1,
                                          "InsulationResistance": 1990}, rack_sa(2))
    assert feed(daemon, "PackCells", CELLS, rack_sa(2))
    charging = daemon.protocol.codes("PackCells", "PackState")["charging"]
    assert feed(daemon, "PackCells", {**CELLS, "PackState": charging}, rack_sa(2))
    assert feed(daemon, "PackCells", {**CELLS, "PackState": charging,
                                      "InsulationResistance": 50}, rack_sa(2))


def test_a_rare_kind_wakes_when_it_changes_and_the_bay_identity_always(
        daemon: Daemon) -> None:
    assert feed(daemon, "PackIdentity", IDENTITY, rack_sa(1))
    assert not feed(daemon, "PackIdentity", IDENTITY, rack_sa(1))  # the same pack again
    assert feed(daemon, "PackIdentity", {**IDENTITY, "PackSerial": 9}, rack_sa(1))
    assert feed(daemon, "PackIdentity", IDENTITY, VEHICLE_PACK_SA)
    assert feed(daemon, "PackIdentity", IDENTITY, VEHICLE_PACK_SA)  # identify waits for it
    limits = {"MaxChargeVoltage": 400.0, "MaxChargeCurrent": 150.0, "CellCount": 96,
              "MaxCellChargeVoltage": 4.15}
    assert feed(daemon, "PackLimits", limits, rack_sa(2))
    assert not feed(daemon, "PackLimits", limits, rack_sa(2))
    assert feed(daemon, "PackLimits", {**limits, "CellCount": 108}, rack_sa(2))
    health = {"CycleCount": 120, "SOH": 95.0, "RatedVoltage": 350.0, "RatedCapacity": 150.0}
    assert feed(daemon, "PackHealth", health, rack_sa(2))
    assert not feed(daemon, "PackHealth", health, rack_sa(2))
    assert feed(daemon, "PackHealth", {**health, "RatedCapacity": 120.0}, rack_sa(2))


def test_a_frame_from_an_empty_location_wakes_nothing(daemon: Daemon) -> None:
    assert not feed(daemon, "PackStatus", {**STATUS, "MaxCellTemp": 90}, rack_sa(3))
    assert Location.rack(3) not in daemon.image.packs


def test_another_pack_at_the_location_is_a_change() -> None:
    wake = ScanWake(StationConfig())
    loc = Location.rack(5)
    old = PackReport(location=loc, soc_pct=50.0, max_cell_temp_c=25.0, min_cell_temp_c=20.0)
    assert wake.wakes(loc, PackData.STATUS, old)
    assert not wake.wakes(loc, PackData.STATUS, old)
    new = PackReport(location=loc, soc_pct=50.0, max_cell_temp_c=25.0, min_cell_temp_c=20.0)
    assert wake.wakes(loc, PackData.STATUS, new)  # a new report: a pack arrived


def test_the_strictest_chemistry_alarm_and_implausible_readings_wake() -> None:
    cfg = StationConfig()
    wake = ScanWake(cfg)
    assert wake.alarm_c == min(c.alarm_temp_c for c in cfg.chemistry.values())
    loc = Location.rack(1)
    rep = PackReport(location=loc, soc_pct=50.0, max_cell_temp_c=wake.alarm_c - 1,
                     min_cell_temp_c=20.0)
    assert wake.wakes(loc, PackData.STATUS, rep)
    rep.max_cell_temp_c = wake.alarm_c
    assert wake.wakes(loc, PackData.STATUS, rep)
    rep.max_cell_temp_c, rep.min_cell_temp_c = 30.0, 31.0  # lowest above the highest
    assert wake.wakes(loc, PackData.STATUS, rep)
    rep.min_cell_temp_c, rep.soc_pct = 20.0, 101.0
    assert wake.wakes(loc, PackData.STATUS, rep)
    rep.faults = frozenset({PackFault.INTERNAL})
    assert wake.wakes(loc, PackData.CELLS, rep)
    rep.state = PackState.ISOLATED
    assert wake.wakes(loc, PackData.CELLS, rep)
    assert not wake.wakes(loc, PackData.CELLS, rep)
    assert wake.wakes(loc, None, rep)  # the car's VIN


def test_crossing_a_less_strict_chemistry_limit_wakes_too() -> None:
    """An identified LFP pack alarms at its own limit (65 C), above the strictest (NMC,
    60 C): a reading going from 61 C to 66 C crosses it and must wake the scan at once."""
    cfg = StationConfig()
    wake = ScanWake(cfg)
    lfp = cfg.chemistry["lfp"].alarm_temp_c
    assert lfp > wake.alarm_c  # the case exists in the defaults
    loc = Location.rack(1)
    rep = PackReport(location=loc, soc_pct=50.0, max_cell_temp_c=wake.alarm_c + 1,
                     min_cell_temp_c=20.0)
    assert wake.wakes(loc, PackData.STATUS, rep)  # over the strictest
    rep.max_cell_temp_c = lfp - 1
    assert not wake.wakes(loc, PackData.STATUS, rep)  # no limit crossed
    rep.max_cell_temp_c = lfp + 1
    assert wake.wakes(loc, PackData.STATUS, rep)  # over LFP's own
