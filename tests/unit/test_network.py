"""The network policy, pure: the authorisation list, the power cap's schedule, the bounds
of every command argument."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from station.config import ChargingSection, NetworkSection, StationConfig, StationSection
from station.network import (
    ArgsError,
    AuthorisationList,
    Network,
    PowerCap,
    format_time,
    parse_authorisations,
    parse_maintenance,
    parse_optional_reason,
    parse_power_cap,
    parse_reservation,
    parse_reservation_id,
    parse_time,
)

VIN_A = "LSJA24U99MS000001"  # a brand's WMI is its first three characters: LSJ
VIN_B = "WVWZZZ1KZ8W000002"
T0 = parse_time("2026-11-30T10:00:00.000Z")


def auth_args(version: int = 1, entries: list[dict[str, Any]] | None = None,
              valid_from: str = "2026-11-30T00:00:00.000Z",
              valid_until: str = "2026-12-01T00:00:00.000Z") -> dict[str, Any]:
    return {"version": version, "valid_from": valid_from, "valid_until": valid_until,
            "entries": entries if entries is not None else
            [{"vin": VIN_A, "families": [20]}]}


def net(auth: AuthorisationList | None = None, *, required: bool = True,
        when_expired: str = "refuse", cap: PowerCap | None = None, tz: str = "UTC",
        ceiling_kw: float = 500.0) -> Network:
    cfg = StationConfig(
        station=StationSection(timezone=tz),
        network=NetworkSection(require_authorisation=required,
                               when_list_expired=when_expired),
        charging=ChargingSection(station_power_cap_kw=ceiling_kw))
    return Network(cfg, auth, cap)


# ---- time ----------------------------------------------------------------------------------
def test_times_are_rfc3339_utc_with_milliseconds_both_ways() -> None:
    t = parse_time("2026-11-30T23:59:59.123Z", "x")
    assert format_time(t) == "2026-11-30T23:59:59.123Z"
    assert parse_time("2026-12-01T07:59:59.123+08:00", "x") == pytest.approx(t)


@pytest.mark.parametrize("bad", ["2026-11-30", "2026-11-30T23:59:59.123", "yesterday", 17,
                                 None, "1970-01-01T00:00:00.000Z", "2026-13-01T00:00:00Z"])
def test_a_time_without_its_offset_or_out_of_bounds_is_refused(bad: Any) -> None:
    with pytest.raises(ArgsError, match="when"):
        parse_time(bad, "when")


# ---- authorisation ---------------------------------------------------------------------
def test_authorisation_off_lets_every_vehicle_swap() -> None:
    assert net(None, required=False).authorise(None, 20, T0) is None


def test_a_listed_vin_may_take_its_families_only() -> None:
    n = net(parse_authorisations(auth_args()))
    assert n.authorise(VIN_A, 20, T0) is None
    assert n.authorise(VIN_A, 25, T0) == f"vehicle {VIN_A} not authorised for family 25"
    assert n.authorise(VIN_B, 20, T0) == f"vehicle {VIN_B} not authorised for family 20"


def test_a_prefix_entry_authorises_a_brand_and_entries_add_up() -> None:
    n = net(parse_authorisations(auth_args(entries=[
        {"vin_prefix": "LSJ", "families": [20]}, {"vin": VIN_A, "families": [25]},
        {"vin_prefix": "LSJA24", "families": [30]}])))
    assert n.authorise("LSJZZZ00000000009", 20, T0) is None
    assert n.authorise("LSJZZZ00000000009", 25, T0) is not None
    for fam in (20, 25, 30):  # exact and both prefixes
        assert n.authorise(VIN_A, fam, T0) is None, fam
    assert n.authorise(VIN_B, 20, T0) is not None


def test_no_list_and_no_vin_are_said() -> None:
    assert net(None).authorise(VIN_A, 20, T0) == "no authorisation list received"
    assert net(None).authorise(None, 20, T0) == "waiting for the vehicle's VIN on CAN"
    assert "not a valid VIN" in (net(None).authorise("LSJA24U99MS00000I", 20, T0) or "")


def test_an_expired_list_refuses_everyone_when_configured_so() -> None:
    n = net(parse_authorisations(auth_args()), when_expired="refuse")
    late = parse_time("2026-12-01T00:00:00.000Z", "t")
    why = n.authorise(VIN_A, 20, late)
    assert why is not None and "expired at 2026-12-01T00:00:00.000Z" in why
    assert "when_list_expired = refuse" in why
    assert n.authorise(VIN_A, 20, late - 0.001) is None  # the last moment of validity


def test_an_expired_list_still_lets_listed_vehicles_swap_when_configured_so() -> None:
    n = net(parse_authorisations(auth_args()), when_expired="allow_listed")
    late = parse_time("2026-12-05T00:00:00.000Z", "t")
    assert n.authorise(VIN_A, 20, late) is None
    assert n.authorise(VIN_B, 20, late) == f"vehicle {VIN_B} not authorised for family 20"


def test_a_list_before_its_valid_from_is_outside_its_validity() -> None:
    n = net(parse_authorisations(auth_args(valid_from="2026-11-30T12:00:00.000Z")))
    why = n.authorise(VIN_A, 20, T0)
    assert why is not None and "not valid before 2026-11-30T12:00:00.000Z" in why


def test_an_authorisation_list_survives_its_own_dict() -> None:
    a = parse_authorisations(auth_args(entries=[{"vin_prefix": "LSJ", "families": [25, 20]}]))
    b = parse_authorisations(a.as_dict())
    assert (b.version, b.valid_from, b.valid_until, b.entries) == \
        (a.version, a.valid_from, a.valid_until, a.entries)


@pytest.mark.parametrize(("change", "why"), [
    ({"version": 0}, "version must be a whole number 1-"),
    ({"version": True}, "version must be a whole number"),
    ({"version": 1.5}, "version must be a whole number"),
    ({"valid_until": "2026-11-29T00:00:00.000Z"}, "must be after valid_from"),
    ({"entries": [{"vin": "LSJA24U99MS00000O", "families": [20]}]}, "entries[0].vin must be"),
    ({"entries": [{"vin": "LSJA24U99MS0000", "families": [20]}]}, "entries[0].vin must be"),
    ({"entries": [{"vin_prefix": "", "families": [20]}]}, "vin_prefix must be 1-16"),
    ({"entries": [{"vin_prefix": "L" * 17, "families": [20]}]}, "vin_prefix must be 1-16"),
    ({"entries": [{"vin": VIN_A, "vin_prefix": "LSJ", "families": [20]}]}, "must be {vin"),
    ({"entries": [{"vin": VIN_A}]}, "must be {vin"),
    ({"entries": [{"vin": VIN_A, "families": []}]}, "families must list 1-64"),
    ({"entries": [{"vin": VIN_A, "families": list(range(65))}]}, "families must list 1-64"),
    ({"entries": [{"vin": VIN_A, "families": [251]}]}, "families[] must be a whole number 0-250"),
    ({"entries": [{"vin": VIN_A, "families": [20]}] * 5_001}, "at most 5000 entries"),
    ({"entries": "all"}, "entries must be a list"),
    ({"extra": 1}, "unknown argument(s): extra"),
])
def test_authorisation_args_are_bounded(change: dict[str, Any], why: str) -> None:
    with pytest.raises(ArgsError) as exc:
        parse_authorisations({**auth_args(), **change})
    assert why in str(exc.value)


def test_five_thousand_entries_are_taken() -> None:
    entries = [{"vin": f"LSJA24U99MS{i:06d}", "families": [20]} for i in range(5_000)]
    n = net(parse_authorisations(auth_args(entries=entries)))
    assert n.authorise("LSJA24U99MS004999", 20, T0) is None
    assert n.authorise("LSJA24U99MS005000", 20, T0) is not None


# ---- the power cap ---------------------------------------------------------------------
def at(local: str, tz: str) -> float:
    """A local wall-clock time in tz -> UTC epoch seconds."""
    from datetime import datetime
    from zoneinfo import ZoneInfo
    return datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(tz)).timestamp()


def test_the_schedule_wraps_midnight_in_the_stations_own_time_zone() -> None:
    cap = parse_power_cap({"cap_kw": None, "schedule": [
        {"from": "22:00", "to": "06:00", "cap_kw": 150}]}, 500.0)
    n = net(cap=cap, tz="Asia/Shanghai")
    assert n.cap_at(at("2026-11-30T23:30:00", "Asia/Shanghai")) == 150.0
    assert n.cap_at(at("2026-12-01T05:59:00", "Asia/Shanghai")) == 150.0
    assert n.cap_at(at("2026-12-01T06:00:00", "Asia/Shanghai")) == 500.0
    assert n.cap_at(at("2026-11-30T21:59:00", "Asia/Shanghai")) == 500.0
    # 23:30 in Shanghai is 15:30 UTC: a station on UTC would not be in the window
    assert net(cap=cap, tz="UTC").cap_at(at("2026-11-30T23:30:00", "Asia/Shanghai")) == 500.0


def test_the_lowest_applicable_cap_wins_and_never_the_ceiling_is_passed() -> None:
    cap = parse_power_cap({"cap_kw": 400, "schedule": [
        {"from": "07:00", "to": "09:00", "cap_kw": 300},
        {"from": "08:00", "to": "08:30", "cap_kw": 200},
        {"from": "00:00", "to": "00:00", "cap_kw": 450}]}, 500.0)  # the whole day
    n = net(cap=cap, tz="Europe/Berlin")
    assert n.cap_at(at("2026-06-01T08:15:00", "Europe/Berlin")) == 200.0
    assert n.cap_at(at("2026-06-01T07:15:00", "Europe/Berlin")) == 300.0
    assert n.cap_at(at("2026-06-01T12:00:00", "Europe/Berlin")) == 400.0
    # a cap kept from before the configured ceiling was lowered never passes it
    assert net(cap=cap, ceiling_kw=250.0).cap_at(at("2026-06-01T12:00:00", "UTC")) == 250.0
    assert net(cap=None).cap_at(T0) == 500.0
    assert n.cap_at(None) == 200.0  # no wall time: the lowest (the grid's side)


@pytest.mark.parametrize(("args", "why"), [
    ({"cap_kw": 501}, "cap_kw (1-500 kW"),
    ({"cap_kw": 0}, "cap_kw (1-500 kW"),
    ({"cap_kw": float("nan")}, "cap_kw (1-500 kW"),
    ({"cap_kw": "100"}, "cap_kw (1-500 kW"),
    ({}, "missing argument(s): cap_kw"),
    ({"cap_kw": None, "schedule": [{"from": "24:00", "to": "06:00", "cap_kw": 10}]},
     "schedule[0].from must be a local time HH:MM"),
    ({"cap_kw": None, "schedule": [{"from": "7:00", "to": "09:00", "cap_kw": 10}]},
     "schedule[0].from must be a local time HH:MM"),
    ({"cap_kw": None, "schedule": [{"from": "07:00", "to": "09:00", "cap_kw": 900}]},
     "schedule[0].cap_kw (1-500 kW"),
    ({"cap_kw": None, "schedule": [{"from": "07:00", "to": "09:00"}]},
     "schedule[0] must be {from, to, cap_kw}"),
    ({"cap_kw": None, "schedule": [{"from": "07:00", "to": "09:00", "cap_kw": 10}] * 49},
     "at most 48 windows"),
])
def test_power_cap_args_are_bounded_by_the_configured_ceiling(args: dict[str, Any],
                                                              why: str) -> None:
    with pytest.raises(ArgsError) as exc:
        parse_power_cap(args, 500.0)
    assert why in str(exc.value)


# ---- the other commands' arguments -------------------------------------------------------
@pytest.mark.parametrize(("change", "why"), [
    ({"vin": "LSJA24U99MS00000Q"}, "vin must be a 17-character VIN"),
    ({"family": 251}, "family must be a whole number 0-250"),
    ({"family": -1}, "family must be a whole number 0-250"),
    ({"min_soc_pct": 100.5}, "min_soc_pct must be a number 0-100"),
    ({"min_soc_pct": float("inf")}, "min_soc_pct must be a number 0-100"),
    ({"expires_at": "soon"}, "expires_at must be an RFC 3339 time"),
    ({"expires_at": "2026-11-30T11:00:00.000+25:00"}, "is not an RFC 3339 time"),
    ({"slot": 3}, "unknown argument(s): slot"),
])
def test_reservation_args_are_bounded(change: dict[str, Any], why: str) -> None:
    args = {"vin": VIN_A, "family": 20, "min_soc_pct": 80,
            "expires_at": "2026-11-30T11:00:00.000Z", **change}
    with pytest.raises(ArgsError) as exc:
        parse_reservation(args)
    assert why in str(exc.value)


def test_maintenance_stop_and_cancel_args_are_bounded() -> None:
    assert parse_maintenance({"slot": 3, "action": "lock", "reason": " door "}) == \
        (3, "lock", "door")
    for args, why in [({"slot": 0, "action": "lock", "reason": "x"}, "slot must be"),
                      ({"slot": 256, "action": "lock", "reason": "x"}, "slot must be"),
                      ({"slot": 3, "action": "open", "reason": "x"}, "action must be"),
                      ({"slot": 3, "action": "lock", "reason": " "}, "reason must be text"),
                      ({"slot": 3, "action": "lock", "reason": "x" * 201}, "reason must be")]:
        with pytest.raises(ArgsError, match=why):
            parse_maintenance(args)
    assert parse_optional_reason({}, "request_stop") is None
    with pytest.raises(ArgsError, match="reason must be text"):
        parse_optional_reason({"reason": ""}, "request_stop")
    with pytest.raises(ArgsError, match="reservation_id must be"):
        parse_reservation_id({"reservation_id": "a/b"})


# ---- pure, like the core ---------------------------------------------------------------
def test_the_network_policy_imports_no_driver_and_reads_no_file() -> None:
    tree = ast.parse((Path(__file__).resolve().parents[2] / "station" / "network.py")
                     .read_text())
    mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in mods if m.split(".")[0] in (
        "drivers", "sim_hw", "asyncio", "socket", "sqlite3", "aiomqtt", "tomllib")], mods
    calls = [n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
             for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not set(calls) & {"open", "read_text", "read_bytes", "load", "loads"}
