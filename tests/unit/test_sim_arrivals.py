"""The arrival schedule ([sim.arrivals]): the profile, its seed, the queue and patience."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from sim_hw.config import (
    PEAKS_SHAPE,
    ArrivalsConfig,
    ScheduledArrival,
    SimConfig,
    SimConfigError,
    parse_sim_config,
    peaks_rate_per_hour,
)
from sim_hw.mechanics import StationModel
from sim_hw.vehicles import (
    HOUR_S,
    VehicleSource,
    arrival_schedule,
    arrival_times,
    expected_per_hour,
)
from tests.unit.test_sim_mechanics import Controller, swap_to


@dataclass
class Cmd:
    taken_sim: float


def source(**arrivals: object) -> VehicleSource:
    return VehicleSource(SimConfig(arrivals=ArrivalsConfig.model_validate(arrivals)), set())


def car(at_s: float, family: int = 20) -> dict[str, object]:
    return {"at_s": at_s, "family": family, "chemistry": "lfp", "soc": 20.0, "temp_c": -15.0}


def test_peaks_profile_sums_to_the_daily_demand_with_two_peaks() -> None:
    rates = peaks_rate_per_hour(480)
    assert len(rates) == 24 and sum(rates) == pytest.approx(480)
    top = sorted(range(24), key=rates.__getitem__, reverse=True)[:4]
    assert {8, 17, 18} <= set(top) <= {7, 8, 17, 18, 19}
    assert rates[3] < rates[12] < rates[18]  # night < midday < evening peak
    assert ArrivalsConfig().rate_per_hour == peaks_rate_per_hour(400)
    assert len(PEAKS_SHAPE) == 24


def test_count_per_hour_matches_the_rate() -> None:
    """Over 300 days the mean count in each hour of the day is its rate (within 4 sigma)."""
    rates = peaks_rate_per_hour(400)
    days = 300
    times = arrival_times(rates, 24 * days, random.Random(3))
    per_hour = Counter(int(t // HOUR_S) % 24 for t in times)
    for h, rate in enumerate(rates):
        sigma = math.sqrt(rate / days)
        assert abs(per_hour[h] / days - rate) < 4 * sigma, (h, per_hour[h] / days, rate)
    assert all(0 <= t < 24 * days * HOUR_S for t in times) and times == sorted(times)


def test_expected_per_hour_and_a_partial_last_hour() -> None:
    a = ArrivalsConfig(hours=2.5, rate_per_hour=[10.0] * 24)
    assert expected_per_hour(a) == [10.0, 10.0, 5.0]
    assert all(t < 2.5 * HOUR_S for t in arrival_times(a.rate_per_hour, a.hours,
                                                        random.Random(1)))


def test_schedule_is_reproducible_with_a_seed_and_follows_the_mix() -> None:
    a = ArrivalsConfig(family_share={"20": 1, "25": 3}, chemistry_share={"sodium_ion": 1},
                       cold_share=0.5, cold_temp_c=(-15, -15), temp_c=(30, 30))
    s1, s2, s3 = arrival_schedule(a, 7), arrival_schedule(a, 7), arrival_schedule(a, 8)
    assert s1 == s2 and s1 != s3
    assert 300 < len(s1) < 500  # 400 expected
    fams = Counter(c.family for c in s1)
    assert 0.65 < fams[25] / len(s1) < 0.85
    assert {c.chemistry for c in s1} == {"sodium_ion"}
    temps = Counter(c.temp_c for c in s1)
    assert set(temps) == {-15.0, 30.0} and 0.4 < temps[-15.0] / len(s1) < 0.6
    assert all(5.0 <= c.soc <= 30.0 for c in s1)


def test_explicit_schedule_from_toml_and_errors_name_the_key() -> None:
    cfg = parse_sim_config({"sim": {"arrivals": {"patience_s": 600, "schedule": [
        car(50.0), car(10.0, 25)]}}})
    assert cfg.arrivals is not None
    sched = arrival_schedule(cfg.arrivals, cfg.seed)
    assert [(c.at_s, c.family) for c in sched] == [(10.0, 25), (50.0, 20)]
    with pytest.raises(SimConfigError, match=r"sim\.arrivals\.rate_per_hour"):
        parse_sim_config({"sim": {"arrivals": {"rate_per_hour": [1.0] * 23}}})
    with pytest.raises(SimConfigError, match=r"family_share\.30"):
        parse_sim_config({"sim": {"arrivals": {"family_share": {"30": 1.0}}}})
    assert SimConfig().arrivals is None  # the default keeps one car after each departure


def test_queue_first_in_first_out_and_patience() -> None:
    """A car on the platform stays; those queued behind it leave after their patience."""
    src = source(patience_s=60.0, schedule=[car(10.0), car(20.0, 25), car(30.0), car(200.0)])
    assert src.due(5.0, []) is None
    v = src.due(12.0, [])
    assert v is not None and v.arrived_at == 10.0 and v.queued_at == 10.0 and v.family == 20
    assert v.pack is not None and v.pack.chemistry == "lfp" and v.pack.soc_pct == 20.0
    assert v.pack.min_cell_temp_c < -15.0 < v.pack.max_cell_temp_c  # cold-soaked
    assert [c.n for c in src.waiting(50.0)] == [2, 3]
    r = src.report(85.0)  # car 2 left at 80 (patience 60 s), car 3 still waits
    assert (r["came"], r["turned_away"], r["waiting"], r["on_platform"]) == (3, 1, 1, True)
    assert src.records[1].left_at == 80.0 and src.records[1].outcome == "turned_away"
    assert r["waiting_for_s"] == [55.0, 75.0]  # car 3 queued, car 1 on the platform
    r = src.report(85.0, [Cmd(5.0), Cmd(20.0)])  # car 1's swap began at 20 s
    assert r["waiting_for_s"] == [55.0] and r["platform_swap_started_at"] == 20.0
    # the car on the platform is swapped (first command at 20 s) and leaves at 160 s
    src.departed(160.0, {"pack_out": {}, "pack_in": {}}, [Cmd(5.0), Cmd(20.0), Cmd(150.0)])
    assert src.records[0].outcome == "served" and src.records[0].wait_s == 10.0
    assert src.due(164.0, []) is None  # the next car drives on arrival_gap_s (5 s) later
    assert src.due(166.0, []) is None  # car 3 gave up at 90 s: nobody waits
    v4 = src.due(201.0, [])
    assert v4 is not None and v4.arrived_at == 200.0 and v4.token == 2
    r = src.report(300.0)
    assert (r["came"], r["served"], r["turned_away"], r["waiting"]) == (4, 1, 2, 0)
    assert r["waits_s"] == [10.0] and r["waiting_for_s"] == [100.0]


def test_a_car_queued_behind_a_departure_drives_on_after_the_gap() -> None:
    src = source(patience_s=None, schedule=[car(0.0), car(30.0)])
    assert src.due(1.0, []) is not None  # the platform opens at 1 s
    src.departed(100.0, None, [])
    assert src.due(104.0, []) is None
    v = src.due(106.0, [])
    assert v is not None and v.arrived_at == 105.0 and v.queued_at == 30.0
    assert src.report(106.0)["turned_away"] == 0


def test_saturated_keeps_one_car_waiting_until_the_end() -> None:
    src = source(profile="saturated", hours=1.0, patience_s=None)
    v = src.due(1.5, [])
    assert v is not None and v.arrived_at == 1.0
    assert len(src.waiting(100.0)) == 1 and src.waiting(100.0)[0].queued_at == 1.0
    src.departed(200.0, None, [])
    v2 = src.due(210.0, [])
    assert v2 is not None and v2.arrived_at == 205.0 and v2.queued_at == 1.0
    assert len(src.waiting(210.0)) == 1
    src.departed(3700.0, None, [])  # past the run's hour: the last waiting car drives on
    assert src.due(3710.0, []) is not None and src.waiting(3710.0) == []


def test_served_and_waits_through_the_station_model() -> None:
    """The mechanics take cars from the queue; a swap's wait ends at its first command."""
    cfg = SimConfig(arrivals=ArrivalsConfig(patience_s=30.0, schedule=[
        ScheduledArrival.model_validate(car(2.0)), ScheduledArrival.model_validate(car(3.0)),
        ScheduledArrival.model_validate(car(500.0))]))
    m = StationModel(cfg)
    c = Controller(m)
    swap_to(c, "RELEASE")
    c.until(lambda: m.vehicle is not None and m.vehicle.token == 2)
    assert m.vehicle is not None and m.vehicle.arrived_at == 500.0
    r = m.vehicles.report(m.now)
    assert (r["came"], r["served"], r["turned_away"]) == (3, 1, 1)
    first = m.vehicles.records[0]
    assert first.entered_at == 2.0 and first.swap_started_at is not None
    assert first.wait_s == pytest.approx(first.swap_started_at - 2.0)
    assert m.history[0]["pack_in"] is not None


# ---- every car has a VIN -------------------------------------------------------------------

def test_default_vins_are_valid_and_follow_the_token() -> None:
    import re

    from sim_hw.vehicles import default_vin, vin_check_digit

    assert vin_check_digit("1M8GDM9AXKP042788") == "X"  # the textbook example
    assert vin_check_digit("11111111111111111") == "1"
    vins = [default_vin(t) for t in (1, 2, 0xFFFF)]
    assert len(set(vins)) == 3 and vins[0] == default_vin(1)
    for vin in vins:
        assert re.fullmatch(r"[A-HJ-NPR-Z0-9]{17}", vin), vin
        assert vin[8] == vin_check_digit(vin)
    assert vins[2].endswith("065535")


def test_each_car_gets_its_vin_from_the_config_else_from_its_token() -> None:
    from sim_hw.vehicles import default_vin

    src = VehicleSource(SimConfig(vins=["WVWZZZ1JZXW000001"], arrival_gap_s=0), set())
    first = src.due(1.0, [20])
    assert first is not None and first.vin == "WVWZZZ1JZXW000001"
    assert "VIN WVWZZZ1JZXW000001" in first.describe()
    src.departed(2.0)
    second = src.due(2.0, [20])
    assert second is not None and second.vin == default_vin(second.token)


def test_a_scheduled_car_brings_its_own_vin() -> None:
    from sim_hw.vehicles import default_vin

    src = source(schedule=[{**car(10.0), "vin": "LSJA24U61NG123456"}, car(20.0)])
    first = src.due(10.0, [20])
    assert first is not None and first.vin == "LSJA24U61NG123456"
    src.departed(15.0)
    second = src.due(30.0, [20])
    assert second is not None and second.vin == default_vin(second.token)
    assert [r.vin for r in src.records] == ["LSJA24U61NG123456", second.vin]
