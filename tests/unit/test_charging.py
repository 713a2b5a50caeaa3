"""Charging in the scan: limits from the pack and its chemistry, priority, station power cap."""

from __future__ import annotations

import random

import pytest

from station.charging import charge_limits, granted_power_kw, plan_charging
from station.config import ChargingSection, StationConfig
from station.image import Location, PackFault, PackState, ProcessImage
from station.pack_commands import PackCommandKind
from tests.unit.core_harness import make_run, new_image, pack

NOW = 5.0
ENABLE, DISABLE = PackCommandKind.CHARGE_ENABLE, PackCommandKind.CHARGE_DISABLE


def rack(packs: dict[int, dict], slots: int = 23) -> ProcessImage:
    img = new_image()
    occ = [False] * 30
    for slot, kw in packs.items():
        kw = dict(kw)
        chem = kw.pop("chem", "nmc")
        soc = kw.pop("soc", 50.0)
        img.packs[Location.rack(slot)] = pack(Location.rack(slot), 7000 + slot, 20, chem, soc,
                                              t=NOW, **kw)
        occ[slot - 1] = True
    img.plc = {"rack_slot_count": slots, "rack_slot_occupied": occ}
    img.plc_read_at = NOW
    return img


def test_voltage_limit_uses_the_cell_count_the_pack_reports() -> None:
    """Defect: a hard-coded 96 cells for NMC gave 403.2 V to a 108-cell pack, which then
    stopped charging at ~48 % SOC while still 'charging'."""
    rep = pack(Location.rack(1), 1, chem="nmc", soc=40.0, cell_count=108,
               max_charge_voltage_v=460.0)
    _, voltage = charge_limits(rep, StationConfig())  # type: ignore[misc]
    assert voltage == pytest.approx(4.20 * 108)


def test_the_lower_of_pack_and_profile_limits_wins() -> None:
    cfg = StationConfig()
    low_pack = pack(Location.rack(1), 1, chem="lfp", soc=40.0, cell_count=120,
                    max_charge_voltage_v=420.0, max_charge_current_a=80.0)
    current, voltage = charge_limits(low_pack, cfg)  # type: ignore[misc]
    assert voltage == 420.0 and current == 80.0  # the pack's own limits are lower
    high_pack = pack(Location.rack(1), 1, chem="lfp", soc=40.0, cell_count=120,
                     max_charge_voltage_v=600.0, max_charge_current_a=900.0)
    current, voltage = charge_limits(high_pack, cfg)  # type: ignore[misc]
    assert voltage == pytest.approx(3.65 * 120)  # the chemistry profile is lower
    assert current == pytest.approx(187.5)  # 1C of the rated 187.5 Ah


@pytest.mark.parametrize(("change", "why"), [
    ({"faults": frozenset({PackFault.INTERNAL})}, "faults"),
    ({"state": PackState.ISOLATED}, "isolated"),
    ({"soc": 100.0}, "full"),
    ({"chem": "lfp", "min_cell_temp_c": -5.0}, "too cold"),
    ({"max_cell_temp_c": 50.0}, "too warm"),
    ({"cell_count": None}, "not reported its charge limits"),
    ({"chem": "lto"}, "no limits for chemistry"),
])
def test_a_pack_that_must_not_charge_is_never_granted(change: dict, why: str) -> None:
    kw = {"soc": 40.0, **change}
    if kw.get("chem") == "lto":
        kw["chem"] = "nmc"
        img = rack({1: kw})
        img.packs[Location.rack(1)].chemistry = "lto"
    else:
        img = rack({1: kw})
    (g,) = plan_charging(img, StationConfig(), NOW)
    assert g.command == DISABLE and g.current_limit_a == 0.0 and why in g.reason


def test_sodium_ion_charges_in_the_cold_while_lfp_waits() -> None:
    img = rack({1: {"chem": "lfp", "min_cell_temp_c": -10.0, "max_cell_temp_c": -8.0},
                2: {"chem": "sodium_ion", "min_cell_temp_c": -10.0, "max_cell_temp_c": -8.0}})
    grants = {g.location.slot: g for g in plan_charging(img, StationConfig(), NOW)}
    assert grants[1].command == DISABLE and "too cold" in grants[1].reason
    assert grants[2].command == ENABLE


def test_excluded_slots_are_disabled_with_the_reason() -> None:
    img = rack({1: {}, 2: {}})
    grants = plan_charging(img, StationConfig(), NOW, excluded={2: "slot locked out"})
    assert [(g.location.slot, g.command) for g in grants] == [(1, ENABLE), (2, DISABLE)]
    assert grants[1].reason == "slot locked out"


def test_the_closest_to_ready_are_served_first_under_the_cap() -> None:
    # 75 kWh NMC packs: ~187.5 A at up to 453.6 V = ~85 kW each; a 100 kW cap serves one.
    cfg = StationConfig(charging=ChargingSection(station_power_cap_kw=100.0))
    img = rack({1: {"soc": 20.0}, 2: {"soc": 75.0}, 3: {"soc": 90.0}})
    grants = {g.location.slot: g for g in plan_charging(img, cfg, NOW)}
    assert grants[2].command == ENABLE and grants[2].reason == "charging"  # 5 points short
    assert grants[1].command == ENABLE and "power cap" in grants[1].reason  # what is left
    assert grants[3].command == DISABLE and "power cap" in grants[3].reason  # already ready
    assert granted_power_kw(list(grants.values())) <= 100.0


def test_the_cap_holds_with_23_packs_of_mixed_chemistry() -> None:
    rnd = random.Random(7)
    for cap in (50.0, 150.0, 333.0, 500.0, 2000.0):
        cfg = StationConfig(charging=ChargingSection(station_power_cap_kw=cap))
        for _ in range(20):
            packs = {}
            for slot in range(1, 24):
                chem = rnd.choice(["nmc", "lfp", "sodium_ion"])
                t = rnd.uniform(-25.0, 50.0)
                packs[slot] = {"chem": chem, "soc": rnd.uniform(0.0, 100.0),
                               "min_cell_temp_c": t, "max_cell_temp_c": t + 2,
                               "rated_energy_kwh": rnd.choice([60.0, 75.0, 100.0]),
                               "max_charge_current_a": rnd.uniform(50.0, 400.0)}
                if rnd.random() < 0.1:
                    packs[slot]["faults"] = frozenset({PackFault.INTERNAL})
            img = rack(packs)
            grants = plan_charging(img, cfg, NOW)
            assert len(grants) == 23
            assert granted_power_kw(grants) <= cap + 1e-9
            for g in grants:
                rep = img.packs[g.location]
                if isinstance(charge_limits(rep, cfg), str):
                    assert g.command == DISABLE and g.current_limit_a == 0.0
            if cap >= 2000.0:  # no cap binding: everyone allowed gets its full limits
                for g in grants:
                    lim = charge_limits(img.packs[g.location], cfg)
                    if not isinstance(lim, str):
                        assert (g.current_limit_a, g.voltage_limit_v) == lim


def test_the_core_sends_grants_every_period_and_journals_only_changes() -> None:
    run = make_run(prepare=lambda plc: plc.image.plc.update(vehicle_present=False))
    run.plc.image.packs[Location.rack(1)].soc_pct = 40.0
    sent = []
    for i in range(60):  # 3 s at 50 ms, the pack's voltage rising as it charges
        run.plc.image.packs[Location.rack(1)].voltage_v = 400.0 + i * 0.1
        run.now += 0.05
        d = run.core.update(run.plc.image, run.now)
        run._take(d)
        sent += [c for c in d.pack_commands if c.location == Location.rack(1)]
    assert 2 <= len(sent) <= 4 and all(c.command == ENABLE for c in sent)
    changes = [e for e in run.kinds("pack_command") if e["slot"] == 1]
    assert len(changes) == 1 and changes[0]["command"] == "charge_enable"
    assert changes[0]["voltage_limit_v"] == pytest.approx(453.6)


def test_a_pack_charging_without_current_is_an_alarm() -> None:
    run = make_run(prepare=lambda plc: plc.image.plc.update(vehicle_present=False))
    rep = run.plc.image.packs[Location.rack(1)]
    rep.soc_pct, rep.current_a = 40.0, 0.0  # granted, but draws nothing
    for slot in (2, 3):
        run.plc.image.packs[Location.rack(slot)].current_a = 50.0  # these draw
    run.step(n=int(70 / 0.05))  # stalled_after_s 60 s, speed 1
    alarms = [e for e in run.kinds("alarm") if e["alarm"] == "charge_stalled"]
    assert len(alarms) == 1 and alarms[0]["slot"] == 1
    assert "drawing 0.0 A" in alarms[0]["reason"]
    assert run.core.charging[Location.rack(1)].command == DISABLE
    assert run.core.charging[Location.rack(2)].command == ENABLE  # drawing: no alarm


def test_the_packs_own_cell_voltage_limit_is_honoured() -> None:
    rep = pack(Location.rack(1), 1, chem="nmc", soc=40.0, cell_count=108,
               max_charge_voltage_v=500.0, max_cell_charge_v=4.10)
    _, voltage = charge_limits(rep, StationConfig())  # type: ignore[misc]
    assert voltage == pytest.approx(4.10 * 108)


def test_the_family_a_waiting_car_needs_is_charged_first() -> None:
    """Found by the day benchmark: under a cap, the packs closest to ready were always those
    of the other family, and the car on the platform waited while they sat ready."""
    cfg = StationConfig(charging=ChargingSection(station_power_cap_kw=90.0))
    img = rack({1: {"soc": 75.0}, 2: {"soc": 60.0}})
    img.packs[Location.rack(2)].family = 25
    plain = {g.location.slot: g for g in plan_charging(img, cfg, NOW)}
    assert plain[1].reason == "charging" and "power cap" in plain[2].reason
    waiting = {g.location.slot: g for g in plan_charging(img, cfg, NOW, waiting_family=25)}
    assert waiting[2].reason == "charging" and "power cap" in waiting[1].reason


def test_the_core_tells_charging_which_family_waits() -> None:
    def no_charged_family_20(plc) -> None:  # type: ignore[no-untyped-def]
        for loc, rep in plc.image.packs.items():
            if loc.slot and rep.family == 20:
                rep.soc_pct = 50.0

    run = make_run(prepare=no_charged_family_20)
    run.step(n=40)
    assert "no charged pack for a family-20" in (run.core.status()["start_inhibited"] or "")
    assert run.core._waiting_family == 20


def test_the_cap_in_force_bounds_the_grants_and_never_passes_the_configured_one() -> None:
    img = rack({s: {"soc": 40.0} for s in range(1, 9)})
    cfg = StationConfig()
    assert granted_power_kw(plan_charging(img, cfg, NOW)) > 100.0
    assert granted_power_kw(plan_charging(img, cfg, NOW, cap_kw=100.0)) <= 100.0
    capped = plan_charging(img, cfg, NOW, cap_kw=20.0)
    assert any("station power cap 20 kW reached" in g.reason for g in capped)
    assert granted_power_kw(plan_charging(img, cfg, NOW, cap_kw=1e6)) <= \
        cfg.charging.station_power_cap_kw
