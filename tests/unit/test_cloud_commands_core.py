"""The network's commands in the core and the one command entry: vehicle authorisation at
identify, reservations, the power cap, slot maintenance, stop and hold from the cloud, who
may send what, codes and results, and what a restart keeps. Scripted PLC, fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from station.commands import CommandEntry, CommandRequest, CommandResult, Origin
from station.config import NetworkSection, StationConfig, StationSection
from station.core import CommandRefused, Decision
from station.image import Location, PackFault
from station.journal import Journal
from station.network import (
    AuthorisationList,
    ReservationRequest,
    format_time,
    parse_authorisations,
    parse_power_cap,
    parse_time,
)
from station.pack_commands import PackCommandKind
from station.packml import Cmd, State
from station.selection import Choice, choose_pack
from tests.unit.core_harness import Run, ScriptedPlc, make_run, pack

VIN_A = "LSJA24U99MS000001"
VIN_B = "WVWZZZ1KZ8W000002"
T0 = parse_time("2026-11-30T10:00:00.000Z")


def cfg(required: bool = True, when_expired: str = "refuse", tz: str = "UTC",
        auto_start: bool = True) -> StationConfig:
    base = StationConfig()
    return StationConfig(
        station=StationSection(timezone=tz),
        network=NetworkSection(require_authorisation=required,
                               when_list_expired=when_expired),
        operation=base.operation.model_copy(update={"auto_start": auto_start}))


def listed(*entries: dict[str, Any], version: int = 1, until_s: float = 86400.0,
           from_s: float = -3600.0) -> AuthorisationList:
    return parse_authorisations({
        "version": version, "valid_from": format_time(T0 + from_s),
        "valid_until": format_time(T0 + until_s),
        "entries": list(entries) or [{"vin": VIN_A, "families": [20]}]})


def no_car(plc: ScriptedPlc) -> None:
    plc.image.plc.update(vehicle_present=False, vehicle_token=0)


def arrive(run: Run, vin: str | None, token: int = 7) -> None:
    run.plc.image.plc.update(vehicle_present=True, vehicle_token=token)
    run.plc.vin = vin


def fetched(run: Run) -> int:
    run.until(lambda: bool(run.kinds("swap_started")), limit=200)
    return int(run.kinds("swap_started")[0]["fetch_slot"])


def reserve(run: Run, vin: str = VIN_A, family: int = 20, min_soc: float = 80.0,
            expires_in_s: float = 3600.0) -> dict[str, Any]:
    assert run.wall0 is not None
    d = run.core.reserve_pack(ReservationRequest(vin, family, min_soc,
                                                 run.wall0 + run.now + expires_in_s),
                              "cloud: test", run.now)
    run._take(d)
    assert d.result is not None
    return d.result


# ---- vehicle authorisation at identify ---------------------------------------------------
def test_an_unauthorised_vehicle_stays_idle_with_the_reason_journaled() -> None:
    run = make_run(cfg(), wall0=T0, vin=VIN_B, core_kw={"authorisations": listed()})
    run.step(n=40)
    why = f"vehicle {VIN_B} not authorised for family 20"
    assert run.core.state == State.IDLE and not run.kinds("swap_started")
    assert run.core.status()["start_inhibited"] == why
    assert [e["reason"] for e in run.kinds("inhibit")][-1] == why
    with pytest.raises(CommandRefused, match=why):
        run.cmd(Cmd.START)


def test_an_authorised_vehicle_swaps_and_the_swap_carries_its_vin_and_rated_energy() -> None:
    run = make_run(cfg(), wall0=T0, vin=VIN_A, core_kw={"authorisations": listed()})
    assert fetched(run) == 2
    started = run.kinds("swap_started")[0]
    assert started["vin"] == VIN_A and run.core.plan is not None \
        and run.core.plan.vin == VIN_A
    assert started["pack_in"]["rated_energy_kwh"] == 75.0
    assert started["pack_out"]["rated_energy_kwh"] == 75.0


def test_without_a_vin_the_station_waits_for_it_then_swaps() -> None:
    run = make_run(cfg(), wall0=T0, core_kw={"authorisations": listed()})
    run.step(n=20)
    assert run.core.status()["start_inhibited"] == "waiting for the vehicle's VIN on CAN"
    run.plc.vin = VIN_A
    assert fetched(run) == 2


def test_a_vin_heard_before_the_vehicle_arrived_does_not_count() -> None:
    run = make_run(cfg(), prepare=no_car, wall0=T0, core_kw={"authorisations": listed()})
    run.step(n=5)
    run.plc.image.vehicle_vin, run.plc.image.vehicle_vin_at = VIN_A, run.now  # the car before
    run.step()
    arrive(run, None)
    run.step(n=20)
    assert not run.kinds("swap_started")
    assert run.core.status()["start_inhibited"] == "waiting for the vehicle's VIN on CAN"
    run.plc.vin = VIN_A  # this car's own
    assert fetched(run) == 2


def test_the_plan_has_no_vin_when_none_was_heard_for_this_vehicle() -> None:
    run = make_run(cfg(required=False), prepare=no_car, wall0=T0)
    run.step(n=3)
    run.plc.image.vehicle_vin, run.plc.image.vehicle_vin_at = VIN_A, run.now
    run.step()
    arrive(run, None)
    fetched(run)
    assert run.kinds("swap_started")[0]["vin"] is None


def test_no_list_received_refuses_every_vehicle() -> None:
    run = make_run(cfg(), wall0=T0, vin=VIN_A)
    run.step(n=20)
    assert run.core.status()["start_inhibited"] == "no authorisation list received"
    assert not run.kinds("swap_started")


def test_an_expired_list_refuses_everyone_under_refuse() -> None:
    run = make_run(cfg(when_expired="refuse"), wall0=T0, vin=VIN_A,
                   core_kw={"authorisations": listed(until_s=-1.0, from_s=-7200.0)})
    run.step(n=20)
    why = run.core.status()["start_inhibited"] or ""
    assert "authorisation list version 1 expired at 2026-11-30T09:59:59.000Z" in why
    assert "network.when_list_expired = refuse" in why and not run.kinds("swap_started")


@pytest.mark.parametrize(("vin", "swaps"), [(VIN_A, True), (VIN_B, False)])
def test_an_expired_list_lets_listed_vehicles_swap_under_allow_listed(vin: str,
                                                                      swaps: bool) -> None:
    run = make_run(cfg(when_expired="allow_listed"), wall0=T0, vin=vin,
                   core_kw={"authorisations": listed(until_s=-1.0, from_s=-7200.0)})
    run.step(n=30)
    assert bool(run.kinds("swap_started")) is swaps
    if not swaps:
        assert run.core.status()["start_inhibited"] == \
            f"vehicle {vin} not authorised for family 20"


def test_a_prefix_entry_authorises_the_brand() -> None:
    run = make_run(cfg(), wall0=T0, vin=VIN_A,
                   core_kw={"authorisations": listed({"vin_prefix": "LSJ", "families": [20]})})
    assert fetched(run) == 2


# ---- reservations --------------------------------------------------------------------------
def idle_without_car(c: StationConfig | None = None, **kw: Any) -> Run:
    run = make_run(c or cfg(required=False), prepare=no_car, wall0=T0, **kw)
    run.step(n=3)
    return run


def test_a_reserved_pack_is_kept_from_another_vehicle() -> None:
    run = idle_without_car()
    assert reserve(run)["slot"] == 2  # the fittest: LFP 97 %
    arrive(run, VIN_B)
    assert fetched(run) == 1


def test_a_reserved_pack_goes_to_its_vehicle_even_when_another_is_fitter() -> None:
    run = idle_without_car()
    r = reserve(run)
    assert (r["slot"], r["serial"]) == (2, 1002)
    p = run.plc.image.plc  # a fuller pack arrives in slot 4; slot 5 is free for the car's
    p["rack_slot_count"], p["rack_slot_occupied"][3] = 5, True
    run.plc.image.packs[Location.rack(4)] = pack(Location.rack(4), 1004, 20, "nmc", 99.5,
                                                 t=run.now)
    run.step(n=3)
    fittest = choose_pack(run.plc.image, run.core.cfg, 20, run.now)  # for anyone else
    assert isinstance(fittest, Choice) and fittest.pack.slot == 4
    arrive(run, VIN_A)
    assert fetched(run) == 2
    (ended,) = run.kinds("reservation_ended")
    assert ended["outcome"] == "used" and ended["reason"] is None
    assert ended["swap_id"] == run.kinds("swap_started")[0]["swap_id"]
    assert run.core.network.reservations == {}


def test_a_reserved_pack_that_became_unfit_gives_way_to_another() -> None:
    run = idle_without_car()
    reserve(run)
    run.plc.image.packs[Location.rack(2)].faults = frozenset({PackFault.INTERNAL})
    arrive(run, VIN_A)
    assert fetched(run) == 1
    (ended,) = run.kinds("reservation_ended")
    assert ended["outcome"] == "used" and "no longer fit" in ended["reason"]


def test_a_car_whose_vin_comes_late_still_gets_its_reserved_pack() -> None:
    run = idle_without_car()
    reserve(run)
    run.plc.image.packs[Location.rack(1)].soc_pct = 97.0  # as fit as the reserved one
    arrive(run, None)
    run.step(n=20)  # a second without its VIN: it waits
    assert not run.kinds("swap_started")
    assert "waiting for the vehicle's VIN" in (run.core.status()["start_inhibited"] or "")
    run.plc.vin = VIN_A
    assert fetched(run) == 2
    assert run.kinds("swap_started")[0]["vin"] == VIN_A


def test_a_car_that_never_says_its_vin_swaps_without_a_reservation() -> None:
    run = idle_without_car()
    reserve(run)
    arrive(run, None)
    run.until(lambda: bool(run.kinds("swap_started")), limit=200)
    assert run.now >= 6.0 and run.kinds("swap_started")[0]["fetch_slot"] == 1


def test_an_expired_reservation_lapses_and_frees_its_pack() -> None:
    run = idle_without_car()
    reserve(run, expires_in_s=2.0)
    run.step(n=30)  # 1.5 s: still kept
    assert not run.kinds("reservation_ended")
    run.step(n=20)
    (ended,) = run.kinds("reservation_ended")
    assert ended["outcome"] == "expired" and ended["slot"] == 2
    arrive(run, VIN_B)
    assert fetched(run) == 2


def test_a_reservation_is_refused_when_no_pack_is_ready_and_one_per_vehicle() -> None:
    run = idle_without_car()
    with pytest.raises(CommandRefused, match="no ready pack for a family-20 vehicle with SOC"
                                             " >= 98 %"):
        reserve(run, min_soc=98.0)
    reserve(run)
    with pytest.raises(CommandRefused, match="already holds reservation"):
        reserve(run)
    assert reserve(run, vin=VIN_B)["slot"] == 1  # slot 2 is kept: the next one
    with pytest.raises(CommandRefused, match="not already reserved"):
        reserve(run, vin="LSJA24U99MS000003")
    with pytest.raises(CommandRefused, match="not in the future"):
        reserve(run, vin="LSJA24U99MS000004", expires_in_s=-1.0)
    with pytest.raises(CommandRefused, match="more than 24 h ahead"):
        reserve(run, vin="LSJA24U99MS000004", expires_in_s=90000.0)


def test_cancelling_a_reservation_frees_its_pack() -> None:
    run = idle_without_car()
    rid = reserve(run)["reservation_id"]
    run._take(run.core.cancel_reservation(rid, "cloud: test", run.now))
    assert run.kinds("reservation_ended")[0]["outcome"] == "cancelled"
    with pytest.raises(CommandRefused, match="no active reservation"):
        run.core.cancel_reservation(rid, "cloud: test", run.now)
    arrive(run, VIN_B)
    assert fetched(run) == 2


# ---- the power cap -------------------------------------------------------------------------
def local(iso: str, tz: str) -> float:
    from datetime import datetime
    from zoneinfo import ZoneInfo
    return datetime.fromisoformat(iso).replace(tzinfo=ZoneInfo(tz)).timestamp()


def granted_kw(run: Run) -> float:
    return sum(g.power_kw for g in run.core.charging.values()
               if g.command == PackCommandKind.CHARGE_ENABLE)


NIGHT_CAP = {"cap_kw": None, "schedule": [{"from": "22:00", "to": "06:00", "cap_kw": 50}]}


@pytest.mark.parametrize(("when", "capped"), [
    ("2026-11-30T23:30:00", True), ("2026-12-01T05:30:00", True),
    ("2026-11-30T12:00:00", False)])
def test_a_night_cap_in_shanghai_limits_the_granted_power(when: str, capped: bool) -> None:
    tz = "Asia/Shanghai"
    cap = parse_power_cap(NIGHT_CAP, 500.0)
    run = make_run(cfg(required=False, tz=tz), prepare=no_car, wall0=local(when, tz),
                   core_kw={"power_cap": cap})
    for rep in run.plc.image.packs.values():
        rep.soc_pct = 50.0
    run.step(n=30)
    assert run.core.status()["power_cap_kw"] == (50.0 if capped else 500.0)
    total = granted_kw(run)
    assert (0 < total <= 50.0) if capped else total > 50.0, total


def test_a_lower_cap_takes_effect_at_the_next_scan() -> None:
    run = idle_without_car()
    for rep in run.plc.image.packs.values():
        rep.soc_pct = 50.0
    run.step(n=30)
    assert granted_kw(run) > 50.0
    run._take(run.core.set_power_cap(parse_power_cap({"cap_kw": 40}, 500.0), "cloud: t",
                                     run.now))
    run.step()  # 50 ms, not the next charge period
    assert 0 < granted_kw(run) <= 40.0
    assert run.kinds("power_cap_set")[0]["cap_kw"] == 40.0


def test_a_schedule_window_opening_is_honoured_at_once() -> None:
    def half_full(plc: ScriptedPlc) -> None:
        no_car(plc)
        for rep in plc.image.packs.values():
            rep.soc_pct = 50.0

    run = make_run(cfg(required=False), prepare=half_full,
                   wall0=local("2026-11-30T21:59:59.600", "UTC"),
                   core_kw={"power_cap": parse_power_cap(NIGHT_CAP, 500.0)})
    run.step(n=3)  # 21:59:59.9: planned at 0.05 s under 500 kW, next plan due at 1.05 s
    assert granted_kw(run) > 50.0
    run.step(n=3)  # 22:00:00.05
    assert 0 < granted_kw(run) <= 50.0


def test_a_cap_above_the_configured_ceiling_is_refused_by_the_core_too() -> None:
    run = idle_without_car()
    with pytest.raises(CommandRefused, match="outside 1-500 kW"):
        run.core.set_power_cap(parse_power_cap({"cap_kw": 900}, 1000.0), "cloud: t",
                               run.now)


# ---- the one command entry: codes, permissions, results ------------------------------------
class Station:
    """A core in front of a scripted PLC behind the command entry, journaling to a file."""

    def __init__(self, run: Run, journal: Journal) -> None:
        self.run, self.journal = run, journal
        self.entry = CommandEntry(run.core, journal, self._apply, lambda: run.now)

    async def _apply(self, d: Decision) -> None:
        self.journal.record(d.events)
        self.run._take(d)

    async def send(self, word: str, args: dict[str, Any] | None = None,
                   origin: Origin = Origin.CLOUD, rid: str | None = None) -> CommandResult:
        kw = {"request_id": rid} if rid else {}
        return await self.entry.submit(CommandRequest(word, origin, "ops-key-1",
                                                      args=args or {}, **kw))

    def kinds(self) -> list[str]:
        return [r["kind"] for r in self.journal.events_after(0)]


def expiry(run: Run, s: float = 3600.0) -> str:
    assert run.wall0 is not None
    return format_time(run.wall0 + run.now + s)


@pytest.fixture
def station(tmp_path: Path) -> Station:
    return Station(idle_without_car(), Journal(tmp_path / "j.sqlite"))


@pytest.fixture
def swapping(tmp_path: Path) -> Station:
    run = make_run(cfg(required=False), wall0=T0)
    run.until(lambda: run.core.step is not None and run.core.step.name == "lift")
    return Station(run, Journal(tmp_path / "j.sqlite"))


@pytest.mark.parametrize("word", ["reset", "start", "unhold", "clear", "abort", "suspend",
                                  "unsuspend", "stop", "hold"])
async def test_the_cloud_may_not_send_an_operators_command(swapping: Station,
                                                           word: str) -> None:
    r = await swapping.send(word)
    assert not r.accepted and r.code == "not_permitted"
    assert "for a local operator at the station" in (r.reason or "")
    assert swapping.run.core.state == State.EXECUTE
    assert swapping.kinds() == ["command_received", "command_refused"]
    row = swapping.journal.command_result(r.request_id)
    assert row is not None and row["code"] == "not_permitted"


async def test_the_cloud_may_not_release_a_pack(swapping: Station) -> None:
    r = await swapping.send("pack_release", {"slot": 1, "reason": "checked"})
    assert r.code == "not_permitted" and "slot_maintenance" in (r.reason or "")


async def test_request_stop_from_the_cloud_stops(swapping: Station) -> None:
    r = await swapping.send("request_stop", {"reason": "grid emergency"})
    assert r.accepted and r.code == "ok" and r.state == "Stopping"
    core = swapping.run.core
    assert core.outputs["stop_request"] == "cat2"
    assert core.reason == "stop by cloud: ops-key-1: grid emergency"
    swapping.run.until(lambda: core.state == State.STOPPED)
    assert swapping.run.kinds("swap_ended")[0]["outcome"] == "stopped"
    again = await swapping.send("reset")  # and the cloud cannot start it again
    assert again.code == "not_permitted" and core.state == State.STOPPED


async def test_request_hold_from_the_cloud_holds_and_a_refusal_says_why(
        swapping: Station) -> None:
    r = await swapping.send("request_hold")
    assert r.accepted and r.state == "Holding"
    swapping.run.until(lambda: swapping.run.core.state == State.HELD)
    r = await swapping.send("request_hold")
    assert not r.accepted and r.code == "refused" and "hold is not allowed in Held" in \
        (r.reason or "")


async def test_snapshot_is_accepted_and_does_nothing(station: Station) -> None:
    r = await station.send("snapshot")
    assert r.accepted and r.code == "ok" and r.result is None
    assert station.kinds() == ["command_received", "command_accepted"]


async def test_a_reservation_is_answered_with_its_result_and_again_from_the_journal(
        station: Station) -> None:
    args = {"vin": VIN_A, "family": 20, "min_soc_pct": 80, "expires_at": expiry(station.run)}
    first = await station.send("reserve_pack", args, rid="r-1")
    assert first.accepted and first.result is not None
    assert (first.result["slot"], first.result["serial"]) == (2, 1002)
    assert set(first.result) == {"reservation_id", "slot", "serial"}
    n = len(station.kinds())
    again = await station.send("reserve_pack", args, rid="r-1")
    assert again.repeated and again.result == first.result and again.code == "ok"
    assert len(station.kinds()) == n and len(station.run.core.network.reservations) == 1
    cancelled = await station.send("cancel_reservation",
                                   {"reservation_id": first.result["reservation_id"]})
    assert cancelled.accepted and station.run.core.network.reservations == {}


async def test_authorisation_versions_must_grow(station: Station) -> None:
    def args(v: int) -> dict[str, Any]:
        return listed(version=v).as_dict()
    assert (await station.send("set_authorisations", args(2))).accepted
    for v in (2, 1):
        r = await station.send("set_authorisations", args(v))
        assert not r.accepted and r.code == "refused"
        assert f"version {v} is not greater than the version in force (2)" in (r.reason or "")
    assert (await station.send("set_authorisations", args(3))).accepted
    assert station.run.core.status()["authorisation_version"] == 3
    rows = [r for r in station.journal.events_after(0) if r["kind"] == "command_received"]
    assert '"entries_count": 1' in rows[0]["data"]  # the list is journaled by its size


async def test_an_already_expired_list_is_refused(station: Station) -> None:
    r = await station.send("set_authorisations", listed(until_s=-60.0, from_s=-7200).as_dict())
    assert r.code == "refused" and "expired at" in (r.reason or "")


@pytest.mark.parametrize(("word", "args", "why"), [
    ("reserve_pack", {"vin": "X", "family": 20, "min_soc_pct": 80,
                      "expires_at": "2026-11-30T11:00:00.000Z"}, "vin must be a 17-character"),
    ("reserve_pack", {"vin": VIN_A, "family": 20, "min_soc_pct": 180,
                      "expires_at": "2026-11-30T11:00:00.000Z"}, "min_soc_pct must be"),
    ("set_power_cap", {"cap_kw": 501}, "cap_kw (1-500 kW"),
    ("set_power_cap", {"cap_kw": None, "schedule": [{"from": "25:00", "to": "01:00",
                                                     "cap_kw": 5}]}, "HH:MM"),
    ("slot_maintenance", {"slot": 0, "action": "lock", "reason": "x"}, "slot must be"),
    ("slot_maintenance", {"slot": 2, "action": "lock"}, "missing argument(s): reason"),
    ("request_stop", {"reason": "x" * 201}, "reason must be text of 1-200"),
    ("snapshot", {"now": True}, "unknown argument(s): now"),
    ("cancel_reservation", {"reservation_id": ""}, "reservation_id must be"),
    ("set_authorisations", {"version": 1}, "missing argument(s)"),
])
async def test_arguments_out_of_bounds_are_bad_args(station: Station, word: str,
                                                     args: dict[str, Any], why: str) -> None:
    r = await station.send(word, args)
    assert not r.accepted and r.code == "bad_args" and why in (r.reason or ""), r.reason
    assert station.kinds() == ["command_received", "command_refused"]


async def test_a_local_operator_may_send_the_network_commands_too(station: Station) -> None:
    r = await station.send("set_power_cap", {"cap_kw": 100}, origin=Origin.LOCAL)
    assert r.accepted and station.run.core.status()["power_cap_kw"] == 100.0
    bench = await station.send("pack_release", {"slot": 1, "reason": "x"},
                               origin=Origin.BENCH)
    assert bench.code == "not_permitted"


# ---- slot maintenance ----------------------------------------------------------------------
async def test_a_slot_locked_for_maintenance_is_used_for_nothing(station: Station) -> None:
    run = station.run
    for rep in run.plc.image.packs.values():
        rep.soc_pct = 85.0 if rep.serial == 1001 else rep.soc_pct
    r = await station.send("slot_maintenance", {"slot": 2, "action": "lock",
                                                "reason": "connector worn"})
    assert r.accepted
    assert run.core.status()["locked_out_slots"] == {2: "maintenance: connector worn"}
    run.step()
    grant = run.core.charging[Location.rack(2)]
    assert grant.command == PackCommandKind.CHARGE_DISABLE
    assert grant.reason == "slot locked out: maintenance: connector worn"
    arrive(run, VIN_B)
    assert fetched(run) == 1  # not slot 2's LFP 97 %
    row = station.journal.active_lockouts()[2]
    assert (row["cause"], row["reason"]) == ("maintenance", "connector worn")


async def test_a_pack_on_its_way_to_a_car_is_not_reserved(swapping: Station) -> None:
    plan = swapping.run.core.plan
    assert plan is not None and plan.fetch_slot == 2  # still in the rack until FETCH
    r = await swapping.send("reserve_pack", {"vin": VIN_A, "family": 20, "min_soc_pct": 80,
                                             "expires_at": expiry(swapping.run)})
    assert r.accepted and r.result is not None and r.result["slot"] == 1


def test_a_lock_between_identify_and_a_manual_start_is_honoured() -> None:
    run = make_run(cfg(required=False, auto_start=False), wall0=T0)
    run.until(lambda: run.core.ready_to_start)
    run._take(run.core.slot_maintenance(2, "lock", "door", "local: op", run.now))
    with pytest.raises(CommandRefused, match="start refused"):
        run.cmd(Cmd.START)  # the vehicle was to get slot 2's pack
    run.step()
    run.cmd(Cmd.START)
    assert run.kinds("swap_started")[0]["fetch_slot"] == 1


async def test_a_slot_lock_is_refused_for_a_slot_in_use_or_absent(swapping: Station) -> None:
    plan = swapping.run.core.plan
    assert plan is not None
    r = await swapping.send("slot_maintenance", {"slot": plan.fetch_slot, "action": "lock",
                                                 "reason": "x"})
    assert r.code == "refused" and f"in use by swap {plan.swap_id}" in (r.reason or "")
    r = await swapping.send("slot_maintenance", {"slot": 9, "action": "lock", "reason": "x"})
    assert r.code == "refused" and "no slot 9 (slots 1-4)" in (r.reason or "")


async def test_release_by_maintenance_follows_the_pack_release_rules(station: Station) -> None:
    run = station.run
    r = await station.send("slot_maintenance", {"slot": 1, "action": "release",
                                                "reason": "checked"})
    assert r.code == "refused" and "rack slot 1 is not locked out" in (r.reason or "")
    run.plc.image.packs[Location.rack(1)].faults = frozenset({PackFault.THERMAL_ALARM})
    run.step(n=2)
    assert 1 in run.core.locked_out_slots
    r = await station.send("slot_maintenance", {"slot": 1, "action": "release",
                                                "reason": "checked"})
    assert r.code == "refused" and "still shows" in (r.reason or "")
    run.plc.image.packs[Location.rack(1)].faults = frozenset()
    run.step(n=2)
    r = await station.send("slot_maintenance", {"slot": 1, "action": "release",
                                                "reason": "sensor replaced"})
    assert r.accepted and 1 not in run.core.locked_out_slots
    assert 1 not in station.journal.active_lockouts()
    lock = await station.send("slot_maintenance", {"slot": 3, "action": "lock", "reason": "x"})
    assert lock.accepted
    again = await station.send("slot_maintenance", {"slot": 3, "action": "lock",
                                                    "reason": "y"})
    assert again.code == "refused" and "already locked out" in (again.reason or "")
    freed = await station.send("slot_maintenance", {"slot": 3, "action": "release",
                                                    "reason": "done"})
    assert freed.accepted and run.core.locked_out_slots == {}


# ---- what the back end sees --------------------------------------------------------------
SLOT_KEYS = {"slot", "occupied", "serial", "chemistry", "family", "soc_pct", "soh_pct",
             "min_cell_temp_c", "max_cell_temp_c", "state", "granted_power_kw", "reason",
             "reserved_for"}


async def test_rack_status_says_each_slots_state(station: Station) -> None:
    run = station.run
    p = run.plc.image.plc
    p["rack_slot_count"] = 5
    p["rack_slot_occupied"][4] = True  # slot 5: a pack the PLC sees, not heard on CAN
    run.plc.image.packs[Location.rack(1)].soc_pct = 50.0
    run.plc.image.packs[Location.rack(1)].current_a = 100.0
    await station.send("reserve_pack", {"vin": VIN_A, "family": 20, "min_soc_pct": 80,
                                        "expires_at": expiry(run)})
    await station.send("slot_maintenance", {"slot": 3, "action": "lock", "reason": "door"})
    await station.send("set_power_cap", {"cap_kw": 300})
    run.step(n=3)
    rack = run.core.rack_status(run.plc.image, run.now)
    assert set(rack) == {"power_kw", "power_cap_kw", "slots"}
    assert rack["power_cap_kw"] == 300.0 and rack["power_kw"] == 40.0  # 100 A x 400 V
    slots = {s["slot"]: s for s in rack["slots"]}
    assert all(set(s) == SLOT_KEYS for s in slots.values())
    assert [slots[n]["state"] for n in range(1, 6)] == \
        ["charging", "ready", "locked_out", "empty", "unknown"]
    assert slots[1]["granted_power_kw"] > 0 and slots[1]["serial"] == 1001
    assert slots[2]["reserved_for"] == VIN_A and slots[1]["reserved_for"] is None
    assert slots[3]["reason"] == "maintenance: door"
    assert slots[4]["serial"] is None and not slots[4]["occupied"]


def test_the_status_says_the_cap_in_force_and_the_list_version() -> None:
    run = make_run(cfg(), wall0=T0, vin=VIN_A, core_kw={
        "authorisations": listed(version=7),
        "power_cap": parse_power_cap({"cap_kw": 120}, 500.0)})
    st = run.core.status()
    assert st["power_cap_kw"] == 120.0 and st["authorisation_version"] == 7
    assert make_run().core.status()["authorisation_version"] is None


# ---- a restart keeps what the network said ------------------------------------------------
async def test_the_network_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    station = Station(idle_without_car(cfg()), Journal(path))
    run = station.run
    for word, args in [
        ("set_authorisations", listed({"vin_prefix": "LSJ", "families": [20]},
                                      version=4).as_dict()),
        ("set_power_cap", {"cap_kw": 200, "schedule": [
            {"from": "07:00", "to": "09:00", "cap_kw": 80}]}),
        ("reserve_pack", {"vin": VIN_A, "family": 20, "min_soc_pct": 80,
                          "expires_at": expiry(run)}),
        ("slot_maintenance", {"slot": 1, "action": "lock", "reason": "door"}),
    ]:
        assert (await station.send(word, args)).accepted, word
    station.journal.close()

    j = Journal(path)
    auth, cap, kept = j.authorisations(), j.power_cap(), j.active_reservations()
    assert auth is not None and auth.version == 4
    assert cap is not None and cap.cap_kw == 200.0 and cap.schedule[0].cap_kw == 80.0
    assert [(r.vin, r.slot, r.serial) for r in kept] == [(VIN_A, 2, 1002)]
    locked = {s: f"{r['cause']}: {r['reason']}" for s, r in j.active_lockouts().items()}
    again = make_run(cfg(), prepare=no_car, wall0=T0 + 60, core_kw={
        "authorisations": auth, "power_cap": cap, "reservations": kept,
        "locked_out": locked})
    st = again.core.status()
    assert st["authorisation_version"] == 4 and st["power_cap_kw"] == 200.0
    assert st["locked_out_slots"] == {1: "maintenance: door"}
    arrive(again, VIN_B)  # not listed (WVW...)
    again.step(n=10)
    assert again.core.status()["start_inhibited"] == f"vehicle {VIN_B} not authorised " \
        "for family 20"
    arrive(again, "LSJZZZ00000000009")  # listed by prefix; slot 2 kept for VIN_A, 1 locked
    again.step(n=10)
    assert again.core.status()["start_inhibited"] == (
        "no charged pack for a family-20 vehicle (SOC >= 80.0 %, healthy); "
        "1 reserved for other vehicles")


async def test_a_used_or_lapsed_reservation_is_not_reloaded(tmp_path: Path) -> None:
    station = Station(idle_without_car(), Journal(tmp_path / "j.sqlite"))
    run = station.run
    await station.send("reserve_pack", {"vin": VIN_A, "family": 20, "min_soc_pct": 80,
                                        "expires_at": expiry(run, 1.0)})
    run.step(n=30)
    station.journal.record(run.events)  # the lapse, as the daemon journals the scan
    assert station.journal.active_reservations() == []
