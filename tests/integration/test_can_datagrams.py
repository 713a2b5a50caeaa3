"""udp_multicast: datagrams that are not CAN frames, and runs kept apart by port.

Anything on the host may send a UDP datagram to the group and port a PackBus listens on
(python-can binds the port on all addresses, so any group's traffic to that port reaches
it). One such datagram used to make recv() raise, the PackBus closed and reopened its bus
and the packs' frames sent meanwhile were lost: at 100 datagrams/s every swap aborted with
pack_silent. Now each one is dropped and counted, and the bus stays open."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import can
import msgpack
import pytest

from drivers.bms.canbus import PackBus, UdpPortLease, open_can_bus
from drivers.bms.protocol import VEHICLE_PACK_SA, Decoded, PackProtocol
from tests.integration.test_canbus import wait_until

pytestmark = pytest.mark.timeout(30)

PROTO = PackProtocol()
GROUP = "239.74.163.2"  # python-can's IPv4 default: the port alone must keep runs apart
STATUS = {"SOC": 81.5, "PackVoltage": 402.3, "PackCurrent": -12.5, "MinCellTemp": 21,
          "MaxCellTemp": 24}


def wide_id_datagram() -> bytes:
    """A well-formed python-can udp_multicast packet (msgpack, every field) whose extended
    identifier has 30 bits: python-can refuses to build a Message from it."""
    can_id, data = PROTO.encode("PackStatus", STATUS, VEHICLE_PACK_SA)
    return bytes(msgpack.packb({
        "timestamp": 0.0, "arbitration_id": can_id | (1 << 29), "is_extended_id": True,
        "is_remote_frame": False, "is_error_frame": False, "channel": None, "dlc": 8,
        "data": data, "is_fd": False, "bitrate_switch": False,
        "error_state_indicator": False,
    }, use_bin_type=True))


GARBAGE = [b"", b"\x00", b"hello, not a CAN frame", bytes(range(256)), b"\xc1" * 40,
           msgpack.packb({"arbitration_id": 5, "no_such_field": 1}),
           msgpack.packb([1, 2, 3])]


class Listener:
    def __init__(self, bus: PackBus) -> None:
        self.bus = bus
        self.messages: list[Decoded] = []
        bus.on_message = lambda d, t: self.messages.append(d)


@pytest.fixture
async def udp() -> AsyncIterator[tuple[Listener, can.BusABC, socket.socket, int]]:
    lease = UdpPortLease()
    try:
        peer = open_can_bus("udp_multicast", GROUP, port=lease.port)
    except (OSError, can.CanError) as exc:  # no multicast route in this sandbox
        lease.close()
        pytest.skip(f"udp_multicast unavailable: {exc}")
    pack_bus = PackBus("udp_multicast", GROUP, PROTO, bus_kwargs={"port": lease.port})
    listener = Listener(pack_bus)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    task = asyncio.create_task(pack_bus.run())
    try:
        await wait_until(lambda: pack_bus.is_open)
        yield listener, peer, raw, lease.port
    finally:
        await pack_bus.close()
        await asyncio.wait_for(task, 2)
        peer.shutdown()
        raw.close()
        lease.close()


def send_status(peer: can.BusABC, soc: float) -> None:
    can_id, data = PROTO.encode("PackStatus", {**STATUS, "SOC": soc}, VEHICLE_PACK_SA)
    peer.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))


async def test_malformed_datagrams_are_dropped_counted_and_the_bus_stays_open(
    udp: tuple[Listener, can.BusABC, socket.socket, int],
) -> None:
    listener, peer, raw, port = udp
    bus = listener.bus
    first = bus._bus
    send_status(peer, 10.0)
    await wait_until(lambda: len(listener.messages) == 1)
    datagrams = [*GARBAGE, wide_id_datagram()]
    for d in datagrams:
        raw.sendto(d, (GROUP, port))
    send_status(peer, 20.0)  # right behind the garbage: a reopen would lose it
    await wait_until(lambda: len(listener.messages) == 2)
    assert bus.stats["malformed_datagrams"] == len(datagrams)
    assert bus.stats["bus_errors"] == 0
    assert bus.is_open and bus._bus is first  # never closed and reopened
    assert [m.signals["SOC"] for m in listener.messages] == [10.0, 20.0]


async def test_no_pack_frame_lost_under_100_bad_datagrams_per_second(
    udp: tuple[Listener, can.BusABC, socket.socket, int],
) -> None:
    """The field's case: 100 bad datagrams/s among a pack's frames for 1.5 s."""
    listener, peer, raw, port = udp
    bad = wide_id_datagram()
    sent = 0
    for i in range(150):
        raw.sendto(bad if i % 2 else b"\xff garbage", (GROUP, port))
        if i % 3 == 0:
            send_status(peer, float(sent % 100))
            sent += 1
        await asyncio.sleep(0.01)
    await wait_until(lambda: len(listener.messages) == sent)
    await wait_until(lambda: listener.bus.stats["malformed_datagrams"] == 150)
    assert listener.bus.stats["bus_errors"] == 0
    assert listener.bus.stats["decoded"] == sent


async def test_two_runs_on_one_group_are_kept_apart_by_port() -> None:
    """Two leases never share a port; a bus on one never hears frames sent on the other,
    even on the same multicast group."""
    a, b = UdpPortLease(), UdpPortLease()
    try:
        assert a.port != b.port
        try:
            peer_a = open_can_bus("udp_multicast", GROUP, port=a.port)
        except (OSError, can.CanError) as exc:
            pytest.skip(f"udp_multicast unavailable: {exc}")
        bus_b = PackBus("udp_multicast", GROUP, PROTO, bus_kwargs={"port": b.port})
        peer_b = open_can_bus("udp_multicast", GROUP, port=b.port)
        heard = Listener(bus_b)
        task = asyncio.create_task(bus_b.run())
        try:
            await wait_until(lambda: bus_b.is_open)
            send_status(peer_a, 11.0)  # run A's pack
            send_status(peer_b, 22.0)  # run B's pack
            await wait_until(lambda: len(heard.messages) >= 1)
            await asyncio.sleep(0.2)
            assert [m.signals["SOC"] for m in heard.messages] == [22.0]
        finally:
            await bus_b.close()
            await asyncio.wait_for(task, 2)
            peer_a.shutdown()
            peer_b.shutdown()
    finally:
        a.close()
        b.close()


def test_a_leased_port_is_not_leased_again_while_held() -> None:
    held = [UdpPortLease() for _ in range(50)]
    try:
        ports = {lease.port for lease in held}
        assert len(ports) == 50
        # a python-can bus still binds it (it shares the port, as every udp_multicast bus)
        bus = open_can_bus("udp_multicast", GROUP, port=held[0].port)
        bus.shutdown()
    finally:
        for lease in held:
            lease.close()


def test_sim_config_udp_port_reaches_python_can(can_port: int) -> None:
    from sim_hw.can_packs import open_bus
    from sim_hw.config import parse_sim_config

    cfg = parse_sim_config({"sim": {"can": {"interface": "udp_multicast", "channel": GROUP,
                                            "udp_port": can_port}}})
    assert cfg.can.udp_port == can_port
    bus = open_bus(cfg.can)
    try:
        assert bus._multicast.port == can_port  # type: ignore[attr-defined]
    finally:
        bus.shutdown()
    with pytest.raises(ValueError, match="udp_port"):
        parse_sim_config({"sim": {"can": {"udp_port": 0}}})


def test_rigs_over_udp_multicast_each_get_a_port_of_their_own(tmp_path: Path) -> None:
    """The simulator and swapd of one rig share its port; two rigs never share one."""
    from station.rig import ProcessRig, Rig

    one = Rig(can="udp_multicast", workdir=tmp_path / "one")
    two = ProcessRig(workdir=tmp_path / "two", start_daemon=False)
    try:
        ports = []
        for rig in (one, two):
            assert rig.can_port is not None
            assert rig.sim_config.can.udp_port == rig.can_port
            cfg = rig.build_config(5020)
            assert cfg.can.interface == "udp_multicast" and cfg.can.udp_port == rig.can_port
            ports.append(rig.can_port)
        assert ports[0] != ports[1]
        assert Rig(workdir=tmp_path / "virtual").can_port is None  # virtual: no port
    finally:
        one._cleanup()
        two._cleanup()


def test_write_config_carries_the_can_port(tmp_path: Path, can_port: int) -> None:
    from station.config import load_config
    from tests.integration.daemon_proc import multicast_group, write_config

    path = write_config(tmp_path, 5020, multicast_group(), 20.0, can_port=can_port)
    assert load_config(path).can.udp_port == can_port


@pytest.mark.timeout(150)
async def test_swaps_complete_under_100_bad_datagrams_per_second(tmp_path: Path) -> None:
    """The field's report, end to end: the station over udp_multicast with 100 datagrams/s
    that are not CAN frames on its port. Before, each one reopened swapd's bus and the
    swaps aborted with pack_silent; now two swaps complete and the datagrams are counted."""
    from station.rig import Rig

    async with Rig(speed=100, vehicles=2, can="udp_multicast", workdir=tmp_path) as rig:
        assert rig.can_port is not None
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        bad = [b"\x00 not a frame", wide_id_datagram()]
        sent = 0

        async def babble() -> None:
            nonlocal sent
            while True:
                raw.sendto(bad[sent % 2], (rig.channel, rig.can_port))
                sent += 1
                await asyncio.sleep(0.01)

        noise = asyncio.create_task(babble())
        try:
            await rig.wait_for(lambda: len(rig.ended()) >= 2, timeout=120, what="two swaps")
        finally:
            noise.cancel()
            raw.close()
        assert [s["outcome"] for s in rig.ended()] == ["completed", "completed"], rig.ended()
        stats = rig.daemon.bus.stats
        assert stats["malformed_datagrams"] >= sent // 2, (stats, sent)
        assert stats["bus_errors"] == 0, stats
