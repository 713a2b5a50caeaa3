"""The simulated pack: ratings, cell voltages, charging and the PackControl commands."""

from __future__ import annotations

import itertools
import math

import pytest

from sim_hw.packs import (
    CELL_V,
    CHEMISTRIES,
    CMD_CHARGE_DISABLE,
    CMD_CHARGE_ENABLE,
    CMD_CLEAR_ISOLATION,
    CMD_ISOLATE,
    CMD_KEEP,
    RATED_VOLTAGE_V,
    SimPack,
)


def charge(pack: SimPack, seconds: float, *, in_rack: bool = True, t0: float = 0.0) -> float:
    """Run `seconds` sim = real seconds, refreshing PackControl every second like a station:
    keep, with the limits in force and the next counter."""
    t = t0
    while t < t0 + seconds:
        t += 1.0
        pack.apply_control(CMD_KEEP, pack.charge_current_limit_a, pack.charge_voltage_limit_v,
                           (pack.control_counter + 1) % 251, t)
        pack.advance(1.0, t, in_rack)
    return t


def enable(pack: SimPack, t: float = 0.0) -> None:
    pack.apply_control(CMD_CHARGE_ENABLE, 400.0, 800.0, 1, t)


@pytest.mark.parametrize(
    ("family", "chem", "kwh", "volts"),
    [(20, "nmc", 75, 400), (25, "lfp", 100, 384), (25, "sodium_ion", 100, 350)],
)
def test_ratings(family: int, chem: str, kwh: float, volts: float) -> None:
    p = SimPack(serial=1, family=family, chemistry=chem)  # type: ignore[arg-type]
    assert p.rated_energy_kwh == kwh and p.rated_voltage_v == volts
    assert p.rated_capacity_ah == pytest.approx(kwh * 1000 / volts)


@pytest.mark.parametrize(
    ("chem", "lo", "hi"), [("nmc", 3.3, 4.2), ("lfp", 3.0, 3.65), ("sodium_ion", 2.5, 3.95)]
)
def test_cell_voltages_stay_in_the_chemistry_window(chem: str, lo: float, hi: float) -> None:
    for soc in (0.0, 20.0, 50.0, 90.0, 100.0):
        p = SimPack(serial=1, family=20, chemistry=chem, soc_pct=soc)  # type: ignore[arg-type]
        assert lo <= p.min_cell_v <= p.max_cell_v <= hi
    low = SimPack(serial=1, family=20, chemistry=chem, soc_pct=10)  # type: ignore[arg-type]
    high = SimPack(serial=1, family=20, chemistry=chem, soc_pct=90)  # type: ignore[arg-type]
    assert high.pack_voltage_v > low.pack_voltage_v


def test_charges_about_1_5_percent_per_minute_then_tapers_and_stops_at_100() -> None:
    p = SimPack(serial=1, family=20, chemistry="nmc", soc_pct=50.0)
    enable(p)
    t = charge(p, 60)
    assert p.state == "charging" and p.current_a > 0
    assert p.soc_pct == pytest.approx(51.5, abs=0.05)
    assert p.max_cell_temp_c > 25.0
    p.soc_pct = 95.0
    t = charge(p, 1, t0=t)
    assert p.current_a < p.nominal_current_a * 0.6  # tapering above 90 %
    charge(p, 3600, t0=t)
    assert p.soc_pct == pytest.approx(100.0)
    assert p.state == "idle" and p.current_a == 0.0


def test_only_a_rack_pack_charges() -> None:
    p = SimPack(serial=1, family=20, chemistry="lfp", soc_pct=20.0)
    enable(p)
    charge(p, 30, in_rack=False)
    assert p.soc_pct == 20.0 and p.state == "idle"


def test_charging_stops_without_packcontrol_for_3_real_seconds() -> None:
    p = SimPack(serial=1, family=25, chemistry="sodium_ion", soc_pct=40.0)
    enable(p, t=0.0)
    p.advance(1.0, 2.9, True)
    assert p.state == "charging"
    p.advance(1.0, 3.2, True)
    assert p.state == "idle" and not p.charge_enabled and p.current_a == 0.0


def test_current_limit_and_disable() -> None:
    p = SimPack(serial=1, family=20, chemistry="nmc", soc_pct=30.0)
    p.apply_control(CMD_CHARGE_ENABLE, 50.0, 800.0, 1, 0.0)
    p.advance(1.0, 0.5, True)
    assert p.current_a == pytest.approx(50.0)
    p.apply_control(CMD_CHARGE_DISABLE, 0, 0, 2, 0.6)
    p.advance(1.0, 0.7, True)
    assert p.state == "idle" and p.current_a == 0.0


def test_isolate_blocks_charging_until_cleared() -> None:
    p = SimPack(serial=1, family=20, chemistry="nmc", soc_pct=30.0)
    p.apply_control(CMD_ISOLATE, 0, 0, 1, 0.0)
    enable(p, t=0.1)
    p.advance(1.0, 0.2, True)
    assert p.state == "isolated" and p.current_a == 0.0
    p.apply_control(CMD_CLEAR_ISOLATION, 0, 0, 2, 0.3)
    enable(p, t=0.4)
    p.advance(1.0, 0.5, True)
    assert p.state == "charging"


@pytest.mark.parametrize(
    ("family", "chem", "cells", "cell_v", "pack_v", "amps"),
    [(20, "nmc", 108, 4.2, 453.6, 187.5),  # 400 V / 3.7 V; 75 kWh / 400 V = 187.5 Ah, 1 C
     (25, "lfp", 120, 3.65, 438.0, 260.42),  # 384 V / 3.2 V; 100 kWh / 384 V
     (20, "sodium_ion", 113, 3.95, 446.35, 214.29)],  # 350 V / 3.1 V = 112.9
)
def test_own_charge_limits_follow_the_model(
    family: int, chem: str, cells: int, cell_v: float, pack_v: float, amps: float
) -> None:
    p = SimPack(serial=1, family=family, chemistry=chem)  # type: ignore[arg-type]
    assert p.series_cells == cells
    assert p.max_cell_charge_v == cell_v
    assert p.max_charge_voltage_v == pytest.approx(pack_v)
    assert p.max_charge_current_a == pytest.approx(amps, abs=0.01)


def test_every_simulated_chemistry_is_named_in_the_dbc() -> None:
    from drivers.bms.protocol import PackProtocol

    names = set(PackProtocol().codes("PackIdentity", "Chemistry"))
    assert set(CHEMISTRIES) <= names
    assert set(CHEMISTRIES) == set(RATED_VOLTAGE_V) == set(CELL_V)


@pytest.mark.parametrize("chem", ["nmc", "lfp", "sodium_ion"])
def test_charge_holds_the_pack_voltage_limit_tapers_and_ends_full(chem: str) -> None:
    p = SimPack(serial=1, family=20, chemistry=chem, soc_pct=85.0)  # type: ignore[arg-type]
    enable(p)  # the station allows 800 V: the pack's own limit is what holds
    currents = []
    t = 0.0
    while p.soc_pct < 100.0 and t < 7200:
        t = charge(p, 1, t0=t)
        assert p.pack_voltage_v <= p.max_charge_voltage_v + 1e-6
        assert p.max_cell_v <= p.max_cell_charge_v
        assert p.current_a <= p.max_charge_current_a
        currents.append(p.current_a)
    assert p.soc_pct == 100.0 and p.current_a == 0.0 and p.state == "idle"
    charging = [c for c in currents if c > 0]
    assert charging[-1] < 0.2 * p.nominal_current_a  # tapered to a trickle
    assert charging[-1] >= p.termination_current_a
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(charging))
    charge(p, 60, t0=t)
    assert p.soc_pct == 100.0 and p.current_a == 0.0  # full stays full


def test_a_lower_station_voltage_limit_stops_the_charge_early() -> None:
    # A station that takes a 108-cell NMC pack for a 96-cell one: 96 x 4.2 V = 403.2 V.
    p = SimPack(serial=1, family=20, chemistry="nmc", soc_pct=30.0)
    p.apply_control(CMD_CHARGE_ENABLE, 400.0, 403.2, 1, 0.0)
    t = 0.0
    for _ in range(3600):
        t = charge(p, 1, t0=t)
        assert p.pack_voltage_v <= 403.2 + 1e-6
    assert p.current_a == 0.0 and p.state == "idle"
    assert 45.0 < p.soc_pct < 50.0  # 403.2 V / 108 = 3.733 V a cell: about 48 %, not full


@pytest.mark.parametrize("chem", ["nmc", "lfp", "sodium_ion"])
def test_a_station_granting_the_limit_as_sent_still_charges_to_full(chem: str) -> None:
    # PackLimits carries 0.1 V: 113 x 3.95 V = 446.35 V goes out as 446.3 V
    p = SimPack(serial=1, family=20, chemistry=chem, soc_pct=97.0)  # type: ignore[arg-type]
    granted = math.floor(p.max_charge_voltage_v * 10 + 1e-6) / 10
    p.apply_control(CMD_CHARGE_ENABLE, 400.0, granted, 1, 0.0)
    t = 0.0
    while p.soc_pct < 100.0 and t < 7200:
        t = charge(p, 1, t0=t)
        if p.current_a > 0:
            assert p.pack_voltage_v <= granted + 1e-6
    assert p.soc_pct == 100.0 and p.current_a == 0.0


def test_a_pack_without_identity_burst_is_an_option() -> None:
    assert SimPack(serial=1, family=20, chemistry="nmc").identity_burst
    assert not SimPack(serial=1, family=20, chemistry="nmc", identity_burst=False).identity_burst
