"""The packs' CAN side with real frames on a python-can virtual bus, cycles driven by hand."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import can
import pytest

from drivers.bms.protocol import STATION_SA, VEHICLE_PACK_SA, PackProtocol, rack_sa
from sim_hw.can_packs import CanPacks, open_bus, pack_signals
from sim_hw.config import CanConfig, SimConfig
from sim_hw.mechanics import StationModel
from sim_hw.packs import SimPack

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
    for name, values in pack_signals(p).items():
        can_id, data = PROTO.encode(name, values, sa=0x80)
        dec = PROTO.decode(can_id, data)
        assert dec.source == 0x80
        if name == "PackIdentity":
            assert dec.signals["PackSerial"] == 0xFFFFFFF0
        if name == "PackCells":
            assert dec.signals["ThermalAlarm"] == 1 and dec.signals["FaultInsulation"] == 1
            assert dec.signals["FaultOverTemp"] == 0


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
            for n in ("PackIdentity", "PackHealth", "PackStatus", "PackCells"):
                assert (n, rack_sa(slot)) in names
        assert len(first) == 12 * 4
        cp.send_cycle(100.1)
        assert {n for n, _, _ in drain(listener)} == {"PackStatus", "PackCells"}
        for i in range(2, 10):
            cp.send_cycle(100.0 + i * 0.1)
        drain(listener)
        cp.send_cycle(101.0)
        assert {n for n, _, _ in drain(listener)} == {
            "PackIdentity", "PackHealth", "PackStatus", "PackCells"
        }
    finally:
        assert cp._bus is not None
        cp._bus.shutdown()


def test_packcontrol_reaches_the_addressed_pack_only(channel: str) -> None:
    model = StationModel(SimConfig())
    cp = CanPacks(model, CanConfig(interface="virtual", channel=channel), PROTO)
    control = {"ControlCommand": 1, "ChargeCurrentLimit": 120.0,
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
