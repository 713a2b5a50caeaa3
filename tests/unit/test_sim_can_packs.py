"""The packs' CAN side with real frames on a python-can virtual bus, cycles driven by hand."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Iterator

import can
import pytest

from drivers.bms.protocol import STATION_SA, VEHICLE_PACK_SA, PackProtocol, rack_sa, split_id
from sim_hw.can_packs import FAULT_BITS, CanPacks, open_bus, pack_signals
from sim_hw.config import CanConfig, SimConfig
from sim_hw.mechanics import StationModel
from sim_hw.packs import FAULTS, SimPack
from sim_hw.vehicles import default_vin

PROTO = PackProtocol()


@pytest.fixture
def channel() -> str:
    return f"sim-unit-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def listener(channel: str) -> Iterator[can.BusABC]:
    bus = can.Bus(interface="virtual", channel=channel)
    yield bus
    bus.shutdown()


def packs_on(channel: str, model: StationModel) -> CanPacks:
    cp = CanPacks(model, CanConfig(interface="virtual", channel=channel), PROTO)
    cp._bus = open_bus(cp.cfg)  # cycles are driven by hand here, so no task is started
    return cp


def drain(bus: can.BusABC) -> list[tuple[str, int, dict]]:
    out = []
    while (msg := bus.recv(0.05)) is not None:
        d = PROTO.decode(msg.arbitration_id, msg.data)
        out.append((d.name, d.source, d.signals))
    return out


@pytest.mark.parametrize("chem", ["nmc", "lfp", "sodium_ion"])
@pytest.mark.parametrize("state", ["idle", "charging", "isolated"])
def test_every_pack_state_encodes_and_decodes(chem: str, state: str) -> None:
    p = SimPack(serial=0xFFFFFFF0, family=25, chemistry=chem, soc_pct=100.0,  # type: ignore[arg-type]
                state=state, faults={"thermal_alarm", "insulation"})  # type: ignore[arg-type]
    signals = pack_signals(p, PROTO)
    assert set(signals) == {"PackIdentity", "PackHealth", "PackStatus", "PackCells",
                            "PackLimits"}
    for name, values in signals.items():
        can_id, data = PROTO.encode(name, values, sa=0x80)
        dec = PROTO.decode(can_id, data)
        assert dec.source == 0x80
        if name == "PackIdentity":
            assert dec.signals["PackSerial"] == 0xFFFFFFF0
        if name == "PackCells":
            assert dec.signals["ThermalAlarm"] == 1 and dec.signals["FaultInsulation"] == 1
            assert dec.signals["FaultOverTemp"] == 0
            assert PROTO.choices("PackCells", "PackState")[dec.signals["PackState"]] == state
        if name == "PackIdentity":
            assert PROTO.choices("PackIdentity", "Chemistry")[dec.signals["Chemistry"]] == chem


@pytest.mark.parametrize(
    ("chem", "volts", "amps", "cells", "cell_v"),
    [("nmc", 453.6, 250.0, 108, 4.2), ("lfp", 438.0, 260.4, 120, 3.65),
     ("sodium_ion", 446.3, 285.7, 113, 3.95)],  # family 25: 100 kWh, 1 C
)
def test_pack_limits_match_the_pack_model(
    chem: str, volts: float, amps: float, cells: int, cell_v: float
) -> None:
    p = SimPack(serial=1, family=25, chemistry=chem)  # type: ignore[arg-type]
    can_id, data = PROTO.encode("PackLimits", pack_signals(p, PROTO)["PackLimits"], sa=0x80)
    s = PROTO.decode(can_id, data).signals
    assert s["MaxChargeVoltage"] == pytest.approx(volts)  # 0.1 V, rounded down
    assert s["MaxChargeVoltage"] <= p.max_charge_voltage_v
    assert s["MaxChargeCurrent"] == pytest.approx(amps)
    assert s["MaxChargeCurrent"] <= p.max_charge_current_a
    assert s["CellCount"] == cells == p.series_cells
    assert s["MaxCellChargeVoltage"] == pytest.approx(cell_v)


def test_fault_bits_cover_every_simulated_flag_and_every_dbc_bit() -> None:
    assert set(FAULT_BITS) == FAULTS
    assert set(FAULT_BITS.values()) == {
        s.name for s in PROTO.message("PackCells").signals if s.length == 1}


def test_periods_come_from_the_dbc(channel: str) -> None:
    cp = CanPacks(StationModel(SimConfig()), CanConfig(interface="virtual", channel=channel),
                  PROTO)
    assert cp.periods == {"PackIdentity": 1.0, "PackHealth": 1.0, "PackStatus": 0.1,
                          "PackCells": 0.1, "PackLimits": 1.0}
    assert cp.tick_s == 0.1


def test_a_new_pack_announces_everything_then_keeps_its_periods(
    channel: str, listener: can.BusABC
) -> None:
    model = StationModel(SimConfig(vehicles=0))
    cp = packs_on(channel, model)
    try:
        cp.send_cycle(100.0)
        first = drain(listener)
        names = {(n, sa) for n, sa, _ in first}
        for slot in range(1, 13):
            for n in ("PackIdentity", "PackHealth", "PackStatus", "PackCells", "PackLimits"):
                assert (n, rack_sa(slot)) in names
        assert len(first) == 12 * 5
        assert first[0][0] == "PackIdentity"  # a new serial first, then its data
        cp.send_cycle(100.1)
        assert {n for n, _, _ in drain(listener)} == {"PackStatus", "PackCells"}
        for i in range(2, 10):
            cp.send_cycle(100.0 + i * 0.1)
        drain(listener)
        cp.send_cycle(101.0)
        assert {n for n, _, _ in drain(listener)} == {
            "PackIdentity", "PackHealth", "PackStatus", "PackCells", "PackLimits"
        }
    finally:
        assert cp._bus is not None
        cp._bus.shutdown()


def test_packcontrol_reaches_the_addressed_pack_only(channel: str) -> None:
    model = StationModel(SimConfig())
    cp = CanPacks(model, CanConfig(interface="virtual", channel=channel), PROTO)
    control = {"ControlCommand": PROTO.codes("PackControl", "ControlCommand")["charge_enable"],
               "ChargeCurrentLimit": 120.0,
               "ChargeVoltageLimit": 450.0, "ControlCounter": 7}
    can_id, data = PROTO.encode("PackControl", control, sa=STATION_SA, da=rack_sa(3))
    cp.handle_frame(can_id, data, True, 5.0)
    p3, p4 = model.rack[3], model.rack[4]
    assert p3 is not None and p4 is not None
    assert p3.charge_enabled and p3.charge_current_limit_a == pytest.approx(120.0)
    assert p3.control_counter == 7 and p3.last_control_at == 5.0
    assert not p4.charge_enabled and cp.controls == 1
    # a frame from another source (our own echo on udp_multicast) is ignored
    echo_id, echo = PROTO.encode("PackControl", control, sa=0x80, da=rack_sa(4))
    cp.handle_frame(echo_id, echo, True, 5.0)
    assert not p4.charge_enabled
    # nobody at 0xF4 before a car arrives
    vid, vdata = PROTO.encode("PackControl", control, sa=STATION_SA, da=VEHICLE_PACK_SA)
    cp.handle_frame(vid, vdata, True, 5.0)
    assert cp.controls == 1


def test_bad_frames_are_counted_not_raised(channel: str) -> None:
    cp = CanPacks(StationModel(SimConfig()), CanConfig(interface="virtual", channel=channel),
                  PROTO)
    cp.handle_frame(0x18EF8056, b"\x01\x02", True, 0.0)  # PackControl, too short
    cp.handle_frame(0x18AB0056, bytes(8), True, 0.0)  # unknown PGN
    cp._on_frame(can.Message(arbitration_id=0x18EF8056, data=b"\x01", is_extended_id=True))
    assert cp.bad_frames["bad_length"] == 2 and cp.bad_frames["unknown_id"] == 1


def test_every_control_command_reaches_the_pack_by_name(channel: str) -> None:
    model = StationModel(SimConfig())
    cp = CanPacks(model, CanConfig(interface="virtual", channel=channel), PROTO)
    pack = model.rack[2]
    assert pack is not None
    seen: list[str] = []
    pack.apply_control = lambda command, *args: seen.append(command)  # type: ignore[method-assign]
    for code, name in PROTO.choices("PackControl", "ControlCommand").items():
        values = {"ControlCommand": code, "ChargeCurrentLimit": 0, "ChargeVoltageLimit": 0,
                  "ControlCounter": code}
        can_id, data = PROTO.encode("PackControl", values, sa=STATION_SA, da=rack_sa(2))
        cp.handle_frame(can_id, data, True, 1.0)
        assert seen[-1] == name


def _request(pgn: int, da: int) -> tuple[int, bytes]:
    return PROTO.encode("Request", {"RequestedPgn": pgn}, sa=STATION_SA, da=da)


def test_a_request_is_answered_at_once_for_every_cyclic_message(
    channel: str, listener: can.BusABC
) -> None:
    model = StationModel(SimConfig(vehicles=0))
    cp = packs_on(channel, model)
    try:
        for name in ("PackIdentity", "PackHealth", "PackLimits", "PackStatus", "PackCells"):
            cp.handle_frame(*_request(PROTO.pgn_of(name), rack_sa(3)), True, 1.0)
            assert [(n, sa) for n, sa, _ in drain(listener)] == [(name, rack_sa(3))]
        cp.handle_frame(*_request(PROTO.pgn_of("PackLimits"), 0xFF), True, 1.0)
        got = drain(listener)
        assert {n for n, _, _ in got} == {"PackLimits"} and len(got) == 12
        cp.handle_frame(*_request(PROTO.pgn_of("PackControl"), 0xFF), True, 1.0)
        assert drain(listener) == []  # not a BMS message
    finally:
        assert cp._bus is not None
        cp._bus.shutdown()


def test_a_pack_without_identity_burst_sends_identity_on_its_period_or_when_asked(
    channel: str, listener: can.BusABC
) -> None:
    model = StationModel(SimConfig(vehicles=0))
    quiet = model.rack[2]
    assert quiet is not None
    quiet.identity_burst = False
    cp = packs_on(channel, model)
    try:
        cp.send_cycle(100.0)
        first = {(n, sa) for n, sa, _ in drain(listener)}
        assert ("PackIdentity", rack_sa(1)) in first  # the others still announce themselves
        assert ("PackIdentity", rack_sa(2)) not in first
        for n in ("PackHealth", "PackStatus", "PackCells", "PackLimits"):
            assert (n, rack_sa(2)) in first
        for i in range(1, 10):
            cp.send_cycle(100.0 + i * 0.1)
        assert ("PackIdentity", rack_sa(2)) not in {(n, sa) for n, sa, _ in drain(listener)}
        cp.send_cycle(101.0)  # its period: one second after it came on the bus
        assert ("PackIdentity", rack_sa(2)) in {(n, sa) for n, sa, _ in drain(listener)}

        # Another pack put in its place (same option): nothing but its data at first...
        model.rack[2] = SimPack(serial=0x0BADCAFE, family=20, chemistry="lfp",
                                identity_burst=False)
        cp.send_cycle(101.1)
        names = [n for n, sa, _ in drain(listener) if sa == rack_sa(2)]
        assert "PackIdentity" not in names and "PackStatus" in names
        # ... unless the station asks, which it answers at once
        cp.handle_frame(*_request(PROTO.pgn_of("PackIdentity"), rack_sa(2)), True, 101.15)
        got = drain(listener)
        assert [(n, sa) for n, sa, _ in got] == [("PackIdentity", rack_sa(2))]
        assert got[0][2]["PackSerial"] == 0x0BADCAFE
        for i in range(2, 12):  # 101.2 .. 102.1
            cp.send_cycle(101.0 + i * 0.1)
        ids = [s for n, sa, s in drain(listener) if n == "PackIdentity" and sa == rack_sa(2)]
        assert len(ids) == 1 and ids[0]["PackSerial"] == 0x0BADCAFE  # at 102.1
    finally:
        assert cp._bus is not None
        cp._bus.shutdown()


# ---- the car's VIN: Vehicle Identification in a J1939-21 BAM -----------------------------

def car_on_platform(**config: object) -> StationModel:
    model = StationModel(SimConfig.model_validate(config))
    model.advance(2.0)  # the first car drives on 1 s after start
    assert model.vehicle is not None
    return model


def bam_of(frames: list[can.Message]) -> tuple[int, bytes] | None:
    from drivers.bms.j1939_tp import BamReceiver

    rx = BamReceiver(sizes=PROTO.long_messages())
    done = None
    for msg in frames:
        _, pgn, sa, da = split_id(msg.arbitration_id)
        r = rx.feed(pgn, sa, da, bytes(msg.data), 0.0)
        if r is not None:
            done = (r.source, r.payload)
    return done


def frames_on(bus: can.BusABC) -> list[can.Message]:
    out = []
    while (msg := bus.recv(0.05)) is not None:
        out.append(msg)
    return out


def test_the_car_sends_its_vin_as_a_bam_50_ms_apart(channel: str,
                                                    listener: can.BusABC) -> None:
    model = car_on_platform()
    cp = packs_on(channel, model)
    try:
        vin = model.vehicle.vin  # type: ignore[union-attr]
        assert vin == default_vin(1)
        assert cp.vin_sender() == (1, vin)
        asyncio.run(cp.send_vin(vin))
        frames = frames_on(listener)
        assert [f.arbitration_id for f in frames] == [0x1CECFFF4] + [0x1CEBFFF4] * 3
        assert bam_of(frames) == (VEHICLE_PACK_SA, vin.encode() + b"*")
        gaps = [b - a for a, b in itertools.pairwise(cp.vin_last_bam)]
        assert len(gaps) == 3 and all(0.05 <= g < 0.2 for g in gaps), gaps
        assert cp.vin_sent == 1
    finally:
        assert cp._bus is not None
        cp._bus.shutdown()


@pytest.mark.parametrize(("speed", "gap", "period"), [
    (1.0, 0.05, 5.0),  # J1939-21's 50 ms; the DBC's 5000 ms
    (0.5, 0.05, 10.0),  # slower than real time: never slower packets than 50 ms
    (2.0, 0.025, 2.5),
    (20.0, 0.01, 0.25),  # 2.5 ms would be too close: the 10 ms floor
    (250.0, 0.01, 0.04),  # 20 ms would start a BAM before the last one (4 frames) ended
])
def test_vin_timing_follows_the_speed(speed: float, gap: float, period: float) -> None:
    cp = CanPacks(StationModel(SimConfig(speed=speed)), CanConfig(), PROTO)
    assert cp.vin_gap_s() == pytest.approx(gap)
    assert cp.vin_period_s() == pytest.approx(period)


def test_who_sends_a_vin() -> None:
    model = car_on_platform()
    cp = CanPacks(model, CanConfig(), PROTO)
    assert cp.vin_sender() is not None
    cp.vin_send = False  # the `vehicle_vin` control op: a car without a VIN
    assert cp.vin_sender() is None
    cp.vin_send = True
    model.faults.set("can_silent", target="vehicle")
    assert cp.vin_sender() is None
    model.faults.clear("can_silent")
    model.vehicle.bay_awake_from = None  # type: ignore[union-attr]  # its BMS asleep
    assert cp.vin_sender() is None
    assert CanPacks(StationModel(SimConfig()), CanConfig(), PROTO).vin_sender() is None
    assert CanPacks(car_on_platform(vin_broadcast=False), CanConfig(), PROTO).vin_sender() \
        is None


def test_vin_on_arrival_then_every_period(channel: str, listener: can.BusABC) -> None:
    """The sender task: at once for a car on the platform, then every 5 s / speed."""
    model = car_on_platform(speed=50.0)  # period 0.1 s real
    cp = packs_on(channel, model)

    async def run() -> None:
        task = asyncio.create_task(cp._vin_run())
        await asyncio.sleep(0.27)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
        assert 2 <= cp.vin_sent <= 4, cp.vin_sent
        cms = [f for f in frames_on(listener) if f.arbitration_id == 0x1CECFFF4]
        assert len(cms) >= 2
    finally:
        assert cp._bus is not None
        cp._bus.shutdown()


def test_vin_from_another_address(channel: str, listener: can.BusABC) -> None:
    model = car_on_platform(speed=100.0)
    cp = packs_on(channel, model)
    cp.vin_source = rack_sa(3)
    try:
        asyncio.run(cp.send_vin("WVWZZZ1JZXW000001"))
        assert bam_of(frames_on(listener)) == (rack_sa(3), b"WVWZZZ1JZXW000001*")
    finally:
        assert cp._bus is not None
        cp._bus.shutdown()


def test_a_vin_of_a_cyclic_burst_is_never_sent_as_one_frame(channel: str,
                                                            listener: can.BusABC) -> None:
    model = car_on_platform()
    cp = packs_on(channel, model)
    try:
        cp.send_cycle(100.0)  # the bay pack's burst: no VehicleIdentification in it
        names = {n for n, _, _ in drain(listener)}
        assert "VehicleIdentification" not in names and "PackIdentity" in names
    finally:
        assert cp._bus is not None
        cp._bus.shutdown()
