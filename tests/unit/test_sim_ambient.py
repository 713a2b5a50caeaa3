"""The simulator's set-up for a scenario: the ambient temperature every pack stands in, and
the rack packs' and arriving cars' SOH and temperature, up to the frames swapd reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.bms.protocol import PackProtocol
from sim_hw.can_packs import pack_signals
from sim_hw.config import (
    ArrivalsConfig,
    RackPackConfig,
    ScheduledArrival,
    SimConfig,
    SimConfigError,
    load_sim_config,
)
from sim_hw.mechanics import StationModel
from sim_hw.packs import AMBIENT_C, CMD_CHARGE_ENABLE, CMD_KEEP, SimPack
from sim_hw.vehicles import VehicleSource

PROTO = PackProtocol()  # cantools over drivers/bms/dbc/swap_pack.dbc
HOUR = 3600.0


def rack(*packs: RackPackConfig) -> list[RackPackConfig]:
    return list(packs)


def frame(pack: SimPack, name: str) -> dict[str, float]:
    """The pack's message `name` as it goes on the wire, decoded through the DBC."""
    can_id, data = PROTO.encode(name, pack_signals(pack, PROTO)[name], sa=0x80)
    return dict(PROTO.decode(can_id, data).signals)


def test_ambient_default_is_unchanged() -> None:
    assert AMBIENT_C == 25.0
    assert SimConfig().ambient_c == 25.0
    model = StationModel(SimConfig())
    for pack in model.rack.values():
        if pack is not None:
            assert pack.ambient_c == 25.0
            assert pack.min_cell_temp_c == pack.max_cell_temp_c == 25.0
    bare = SimPack(serial=1, family=20, chemistry="nmc")
    assert bare.min_cell_temp_c == bare.max_cell_temp_c == bare.ambient_c == 25.0


@pytest.mark.parametrize("chem", ["sodium_ion", "lfp"])
def test_an_idle_rack_pack_at_minus_20_stays_at_minus_20_for_hours(chem: str) -> None:
    cfg = SimConfig(ambient_c=-20.0, vehicles=1, rack_pack=rack(
        RackPackConfig(slot=1, serial=11, family=20, chemistry=chem, soc=40.0)))
    model = StationModel(cfg)
    pack = model.rack[1]
    assert pack is not None and pack.min_cell_temp_c == -20.0
    for h in range(1, 7):
        model.advance(h * HOUR)
        assert -20.0 <= pack.min_cell_temp_c <= pack.max_cell_temp_c <= -20.0
    assert frame(pack, "PackStatus")["MinCellTemp"] == -20  # what the charge window sees


def test_a_charging_pack_at_minus_20_warms_its_hottest_cell_not_its_coolest() -> None:
    # swapd's window refuses only t_lo < charge_temp_min_c: sodium-ion (-20 C) must read
    # exactly -20 at its coolest cell while charging, never a hair below.
    pack = SimPack(serial=1, family=20, chemistry="sodium_ion", soc_pct=30.0, ambient_c=-20.0)
    pack.apply_control(CMD_CHARGE_ENABLE, 400.0, 800.0, 1, 0.0)
    for t in range(1, 1801):
        pack.apply_control(CMD_KEEP, 400.0, 800.0, t % 251, float(t))
        pack.advance(1.0, float(t), in_rack=True)
        assert pack.min_cell_temp_c >= -20.0
    assert pack.state == "charging"
    assert pack.min_cell_temp_c == -20.0
    assert pack.max_cell_temp_c > -15.0  # its load warms it
    assert frame(pack, "PackStatus")["MinCellTemp"] == -20


@pytest.mark.parametrize(("start", "ambient"), [(45.0, 10.0), (-30.0, -5.0)])
def test_a_rack_pack_given_temp_c_relaxes_towards_ambient(start: float, ambient: float) -> None:
    cfg = SimConfig(ambient_c=ambient, vehicles=1, rack_pack=rack(
        RackPackConfig(slot=2, serial=12, family=25, chemistry="lfp", soc=60.0, temp_c=start)))
    model = StationModel(cfg)
    pack = model.rack[2]
    assert pack is not None
    assert pack.min_cell_temp_c == pack.max_cell_temp_c == start
    gaps = [abs(start - ambient)]
    for minutes in (5, 15, 60, 240):
        model.advance(minutes * 60.0)
        lo, hi = sorted((start, ambient))
        assert lo <= pack.min_cell_temp_c <= hi and lo <= pack.max_cell_temp_c <= hi
        gaps.append(abs(pack.max_cell_temp_c - ambient))
    assert gaps == sorted(gaps, reverse=True) and gaps[1] < gaps[0]
    assert pack.max_cell_temp_c == pytest.approx(ambient, abs=0.1)
    assert pack.min_cell_temp_c == pytest.approx(ambient, abs=0.1)


def test_rack_soh_reaches_the_pack_and_its_can_frame() -> None:
    cfg = SimConfig(rack_pack=rack(
        RackPackConfig(slot=1, serial=21, family=20, chemistry="nmc", soc=90.0, soh=72.5),
        RackPackConfig(slot=2, serial=22, family=20, chemistry="nmc", soc=90.0)))
    model = StationModel(cfg)
    given, drawn = model.rack[1], model.rack[2]
    assert given is not None and drawn is not None
    assert given.soh_pct == 72.5
    assert frame(given, "PackHealth")["SOH"] == pytest.approx(72.5)  # 0.5 % per bit
    assert 90.0 <= drawn.soh_pct <= 99.5  # no soh: drawn from the seed as before


def test_a_scheduled_car_brings_its_soh_and_the_air_sets_a_just_driven_pack() -> None:
    cfg = SimConfig(ambient_c=-10.0, arrivals=ArrivalsConfig(schedule=[
        ScheduledArrival(at_s=0, family=20, chemistry="lfp", soc=20.0, soh=81.0),
        ScheduledArrival(at_s=10, family=25, chemistry="nmc", soc=20.0, temp_c=30.0)]))
    src = VehicleSource(cfg, set())
    first = src.due(1.0, [20, 25])
    assert first is not None and first.pack is not None
    p = first.pack
    assert p.soh_pct == 81.0 and frame(p, "PackHealth")["SOH"] == pytest.approx(81.0)
    assert p.ambient_c == -10.0
    assert p.min_cell_temp_c == -10.0 and -7.0 <= p.max_cell_temp_c <= -2.0  # just driven
    src.departed(20.0)
    second = src.due(30.0, [20, 25])
    assert second is not None and second.pack is not None
    assert second.pack.max_cell_temp_c == 31.0 and second.pack.min_cell_temp_c == 29.0
    assert 85.0 <= second.pack.soh_pct <= 99.0  # no soh: drawn


def test_a_default_mode_car_arrives_warm_relative_to_the_air() -> None:
    src = VehicleSource(SimConfig(ambient_c=-20.0, vehicles=1), set())
    car = src.due(1.0, [20])
    assert car is not None and car.pack is not None
    assert car.pack.min_cell_temp_c == -20.0
    assert -17.0 <= car.pack.max_cell_temp_c <= -12.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("ambient_c = -41", r"sim\.ambient_c"),
        ("ambient_c = 61", r"sim\.ambient_c"),
        ("[[sim.rack_pack]]\nslot = 1\nserial = 1\nfamily = 20\nchemistry = 'nmc'\n"
         "soc = 50\nsoh = 49", r"sim\.rack_pack\.0\.soh"),
        ("[[sim.rack_pack]]\nslot = 1\nserial = 1\nfamily = 20\nchemistry = 'nmc'\n"
         "soc = 50\nsoh = 100.5", r"sim\.rack_pack\.0\.soh"),
        ("[[sim.rack_pack]]\nslot = 1\nserial = 1\nfamily = 20\nchemistry = 'nmc'\n"
         "soc = 50\ntemp_c = 81", r"sim\.rack_pack\.0\.temp_c"),
        ("[[sim.arrivals.schedule]]\nat_s = 0\nfamily = 20\nchemistry = 'nmc'\nsoc = 9\n"
         "soh = 20", r"sim\.arrivals\.schedule\.0\.soh"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "sim.toml"
    f.write_text("[sim]\n" + text + "\n")
    with pytest.raises(SimConfigError, match=key):
        load_sim_config(f)


def test_a_file_sets_ambient_soh_and_temperature(tmp_path: Path) -> None:
    f = tmp_path / "sim.toml"
    f.write_text("[sim]\nambient_c = -20\n[[sim.rack_pack]]\nslot = 3\nserial = 7\n"
                 "family = 25\nchemistry = 'sodium_ion'\nsoc = 50\nsoh = 88\ntemp_c = -25\n")
    cfg = load_sim_config(f)
    assert cfg.ambient_c == -20.0
    assert cfg.rack_pack[0].soh == 88.0 and cfg.rack_pack[0].temp_c == -25.0
