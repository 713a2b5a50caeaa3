"""PackBus over python-can's `socketcan` on a real vcan0: what udp_multicast and virtual
cannot show (kernel filters, no echo of a socket's own frames, error frames).

Senders are paced (a short sleep between frames): inside the VM Python runs 10-20x
slower than on a host, and a tight send loop would overrun the receiving socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import can
import pytest

from drivers.bms.canbus import STAT_KEYS, PackBus
from drivers.bms.protocol import STATION_SA, VEHICLE_PACK_SA, Decoded, PackProtocol, rack_sa
from tests.integration.polling import wait_until

pytestmark = [pytest.mark.vcan, pytest.mark.timeout(120)]

CHANNEL = "vcan0"
PROTO = PackProtocol()
STATUS = {"SOC": 81.5, "PackVoltage": 402.3, "PackCurrent": -12.5, "MinCellTemp": 21,
          "MaxCellTemp": 24}
CONTROL = {"ControlCommand": PROTO.codes("PackControl", "ControlCommand")["charge_enable"],
           "ChargeCurrentLimit": 10, "ChargeVoltageLimit": 400, "ControlCounter": 1}
HEALTH = {"SOH": 90.0, "CycleCount": 5, "RatedVoltage": 400.0, "RatedCapacity": 200.0}
WAIT_S = 20.0  # bounds a failing wait only; generous for the VM
PACE_S = 0.005
# linux/can/error.h
CAN_ERR_CRTL = 0x00000004  # controller problems, details in data[1]
CAN_ERR_CRTL_RX_PASSIVE = 0x10
CAN_ERR_BUSOFF = 0x00000040


class Peer:
    """Another socket on vcan0: the packs' side."""

    def __init__(self, **kwargs: Any) -> None:
        self.bus = can.Bus(interface="socketcan", channel=CHANNEL, **kwargs)

    async def send(self, msg: can.Message) -> None:
        self.bus.send(msg)
        await asyncio.sleep(PACE_S)

    async def send_pack(self, name: str, values: dict[str, Any], sa: int) -> None:
        can_id, data = PROTO.encode(name, values, sa)
        await self.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.bus.shutdown()


class Running:
    def __init__(self, bus: PackBus) -> None:
        self.bus = bus
        self.messages: list[Decoded] = []
        bus.on_message = lambda d, t: self.messages.append(d)


async def _start(**bus_kwargs: Any) -> tuple[Running, asyncio.Task[None]]:
    bus = PackBus("socketcan", CHANNEL, PROTO, bus_kwargs=bus_kwargs)
    r = Running(bus)
    task = asyncio.create_task(bus.run())
    await wait_until(lambda: bus.is_open, WAIT_S)
    return r, task


@pytest.fixture
async def pack_bus() -> AsyncIterator[Running]:
    r, task = await _start()
    yield r
    await r.bus.close()
    await asyncio.wait_for(task, 10)


async def test_pack_frames_from_another_socket_are_decoded(pack_bus: Running,
                                                           peer: Peer) -> None:
    bus = pack_bus.bus
    assert bus._fd is not None  # socketcan has a descriptor: read by the loop, no thread
    for slot in (1, 2, 3):
        await peer.send_pack("PackStatus", STATUS, rack_sa(slot))
    await peer.send_pack("PackStatus", STATUS, VEHICLE_PACK_SA)
    await wait_until(lambda: len(pack_bus.messages) == 4, WAIT_S)
    assert [m.source for m in pack_bus.messages] == [rack_sa(1), rack_sa(2), rack_sa(3),
                                                     VEHICLE_PACK_SA]
    first = pack_bus.messages[0]
    assert first.name == "PackStatus"
    assert first.signals["SOC"] == pytest.approx(81.5)
    assert bus.stats["received"] == 4 and bus.stats["decoded"] == 4


async def test_kernel_filter_drops_frames_before_python(peer: Peer) -> None:
    """can_filters on socketcan are the kernel's (CAN_RAW_FILTER): frames that do not
    match never reach the process, so PackBus does not even count them as received."""
    status_id, _ = PROTO.encode("PackStatus", STATUS, rack_sa(1))
    pgn_mask = 0x03FFFF00  # the PGN bits of a J1939 id: PackStatus from any source
    r, task = await _start(can_filters=[{"can_id": status_id, "can_mask": pgn_mask,
                                         "extended": True}])
    try:
        raw = r.bus._bus
        # python-can left the filtering to the kernel: no software filter behind it
        assert raw is not None and raw._is_filtered  # type: ignore[attr-defined]
        for slot in (1, 2):
            await peer.send_pack("PackHealth", HEALTH, rack_sa(slot))
            await peer.send_pack("PackStatus", STATUS, rack_sa(slot))
        await peer.send(can.Message(arbitration_id=0x123, data=b"\x01", is_extended_id=False))
        await wait_until(lambda: len(r.messages) == 2, WAIT_S)
        await asyncio.sleep(0.5)  # anything else on its way would have arrived
        assert [m.name for m in r.messages] == ["PackStatus", "PackStatus"]
        assert r.bus.stats["received"] == 2
        assert r.bus.stats["not_extended"] == 0 and r.bus.stats["decoded"] == 2
    finally:
        await r.bus.close()
        await asyncio.wait_for(task, 10)


async def test_own_frames_are_not_echoed(pack_bus: Running, peer: Peer) -> None:
    """SocketCAN hands a socket's frames to the other sockets on the interface, never back
    to the sender (unlike udp_multicast): nothing to drop as `own`."""
    pack_bus.bus.send("PackControl", CONTROL, da=rack_sa(2))
    got = peer.bus.recv(WAIT_S)
    assert got is not None and got.arbitration_id & 0xFF == STATION_SA
    assert (got.arbitration_id >> 8) & 0xFF == rack_sa(2)
    await peer.send_pack("PackStatus", STATUS, rack_sa(2))  # a frame after it, as a marker
    await wait_until(lambda: len(pack_bus.messages) == 1, WAIT_S)
    assert pack_bus.bus.stats["sent"] == 1
    assert pack_bus.bus.stats["own"] == 0
    assert pack_bus.bus.stats["received"] == 1


async def test_own_frames_when_asked_are_dropped_by_source() -> None:
    """With receive_own_messages the kernel does echo them; PackBus drops them by source
    address, as it does udp_multicast's echoes."""
    r, task = await _start(receive_own_messages=True)
    try:
        r.bus.send("PackControl", CONTROL, da=rack_sa(2))
        await wait_until(lambda: r.bus.stats["own"] == 1, WAIT_S)
        assert r.messages == [] and r.bus.stats["received"] == 1
    finally:
        await r.bus.close()
        await asyncio.wait_for(task, 10)


async def test_error_frames_are_counted_not_delivered(pack_bus: Running,
                                                      peer: Peer) -> None:
    """An error frame (CAN_ERR_FLAG in the id, linux/can/error.h) written to a raw socket
    on vcan reaches every socket whose error mask matches its class; python-can subscribes
    to every class and marks it is_error_frame. The bus stays open."""
    bus = pack_bus.bus
    passive = bytes([0, CAN_ERR_CRTL_RX_PASSIVE, 0, 0, 0, 0, 0, 0])
    await peer.send(can.Message(arbitration_id=CAN_ERR_CRTL, data=passive,
                                is_error_frame=True, is_extended_id=False))
    await wait_until(lambda: bus.stats["error_frames"] == 1, WAIT_S)
    await peer.send_pack("PackStatus", STATUS, rack_sa(4))
    await wait_until(lambda: len(pack_bus.messages) == 1, WAIT_S)
    assert bus.is_open and pack_bus.messages[0].source == rack_sa(4)
    assert bus.stats["error_frames"] == 1 and bus.stats["decoded"] == 1
    if hasattr(bus, "state"):  # bus state classification (issue 11, bus faults)
        assert bus.state == "passive", bus.state


async def test_bus_off_closes_and_reopens(peer: Peer) -> None:
    """A bus-off error frame (CAN_ERR_BUSOFF): the bus is closed, its state says so, and
    it is reopened with back-off; frames are read again afterwards."""
    if "bus_off" not in STAT_KEYS:
        pytest.skip("PackBus has no bus states yet (issue 11, bus faults)")
    r, task = await _start()
    states: list[str] = []
    r.bus.on_state = lambda state, detail: states.append(state)
    try:
        await peer.send(can.Message(arbitration_id=CAN_ERR_BUSOFF, data=bytes(8),
                                    is_error_frame=True, is_extended_id=False))
        await wait_until(lambda: r.bus.stats["bus_off"] == 1, WAIT_S)
        await wait_until(lambda: r.bus.stats["opens"] == 2 and r.bus.is_open, WAIT_S)
        assert states == ["bus_off", "active"], states
        await peer.send_pack("PackStatus", STATUS, rack_sa(5))
        await wait_until(lambda: len(r.messages) == 1, WAIT_S)
        assert r.bus.state == "active" and r.bus.stats["error_frames"] == 1
    finally:
        await r.bus.close()
        await asyncio.wait_for(task, 10)
