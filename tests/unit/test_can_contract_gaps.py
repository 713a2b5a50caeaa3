"""Issue 10, items 15-18: gaps of the CAN contract closed, each on both sides.

15: every message's length stated once and true; a frame of the wrong length dropped.
16: a pack with no start-up burst answers Requests from the moment it wakes.
17: a Request for a PGN a node does not send gets a J1939-21 NACK, both ways.
18: PackControl on the pack side: keep, a zero current limit, counter jumps and
    duplicates, the timeout from the DBC.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import can
import pytest

from drivers import docgen
from drivers.bms.adapter import BmsAdapter
from drivers.bms.canbus import NACK_REPEAT_S, PackBus
from drivers.bms.commander import REQUEST_REPEAT_S, PackCommander
from drivers.bms.protocol import (
    STATION_SA,
    VEHICLE_PACK_SA,
    Decoded,
    PackProtocol,
    rack_sa,
    split_id,
)
from sim_hw.can_packs import CanPacks, open_bus
from sim_hw.config import CanConfig, SimConfig
from sim_hw.mechanics import StationModel
from sim_hw.packs import (
    CMD_CHARGE_DISABLE,
    CMD_CHARGE_ENABLE,
    CMD_ISOLATE,
    CMD_KEEP,
    CONTROL_COUNTER_MAX,
    SimPack,
)
from station.image import BAY, Location, PackData
from station.pack_commands import PackRequest

pytestmark = pytest.mark.timeout(20)

P = PackProtocol()
DOC = docgen.render_can_protocol(P)
NACK = P.codes("Acknowledgement", "AckControl")["nack"]


# ------------------------------------------------------------------ 15: lengths


def _section(name: str) -> str:
    start = DOC.index(f"### {name}\n")
    end = DOC.find("\n### ", start + 1)
    return DOC[start:end if end > 0 else DOC.index("\n## ", start)]


def test_each_message_length_is_stated_once_and_is_the_dbc_length() -> None:
    assert "exactly 8 bytes" not in DOC
    for msg in P.db.messages:
        row = [line for line in _section(msg.name).splitlines()
               if line.startswith(f"| 0x{P.pgn_of(msg.name):04X} |")]
        assert len(row) == 1, msg.name
        assert row[0].split(" | ")[3] == f"{msg.length} bytes", msg.name
    # the odd lengths appear nowhere but in their own table
    assert "(`Request`: 3)" not in DOC
    vi = P.message("VehicleIdentification").length
    assert len(re.findall(rf"\b{vi} bytes\b", DOC)) == 1
    assert "bad_length" in DOC[:DOC.index("## Addresses")]  # and what the station does


# -------------------------------------------------------- the station's bus, by hand


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Rig:
    def __init__(self, bus: PackBus, peer: can.BusABC, clock: FakeClock) -> None:
        self.bus = bus
        self.peer = peer
        self.clock = clock
        self.commander = PackCommander(bus, BmsAdapter(P), clock=clock)
        self.messages: list[Decoded] = []
        bus.on_message = lambda d, t: self.messages.append(d)

    def send(self, name: str, values: dict, sa: int, da: int | None = None,
             data: bytes | None = None) -> None:
        can_id, encoded = P.encode(name, values, sa, da)
        self.peer.send(can.Message(arbitration_id=can_id, data=encoded if data is None
                                   else data, is_extended_id=True))

    async def frames(self, wait: float = 0.2) -> list[tuple[Decoded, int]]:
        """Every frame the station sent, with its destination byte (PS)."""
        out = []
        while (msg := await asyncio.to_thread(self.peer.recv, wait)) is not None:
            out.append((P.decode(msg.arbitration_id, msg.data),
                        (msg.arbitration_id >> 8) & 0xFF))
        return out

    async def settle(self, key: str, n: int) -> None:
        deadline = time.monotonic() + 5.0
        while self.bus.stats[key] < n:
            assert time.monotonic() < deadline, f"{key} stays {self.bus.stats[key]}"
            await asyncio.sleep(0.002)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    channel = f"gaps-{uuid.uuid4().hex}"
    peer = can.Bus(interface="virtual", channel=channel)
    clock = FakeClock()
    bus = PackBus("virtual", channel, P, clock=clock)
    task = asyncio.create_task(bus.run())
    deadline = time.monotonic() + 5.0
    while not bus.is_open:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.002)
    yield Rig(bus, peer, clock)
    await bus.close()
    await asyncio.wait_for(task, 2)
    peer.shutdown()


async def test_the_station_drops_a_request_of_the_wrong_length(rig: Rig) -> None:
    # a Request padded to 8 bytes: no Request, so no NACK; counted, nothing delivered
    rig.send("Request", {"RequestedPgn": 0xFF10}, sa=rack_sa(1), da=STATION_SA,
             data=bytes([0x10, 0xFF, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]))
    await rig.settle("bad_length", 1)
    assert rig.bus.stats["requests_received"] == 0
    assert await rig.frames() == [] and rig.messages == []


# ------------------------------------------------------- 17: NACK, the station's side


async def test_the_station_nacks_a_request_addressed_to_it(rig: Rig) -> None:
    pgn = P.pgn_of("PackControl")  # it sends it, but never on request
    rig.send("Request", {"RequestedPgn": pgn}, sa=rack_sa(2), da=STATION_SA)
    [(nack, da)] = await rig.frames()
    assert nack.name == "Acknowledgement" and nack.source == STATION_SA and da == 0xFF
    assert nack.signals == {"AckControl": NACK, "GroupFunction": 0xFF,
                            "AckAddress": rack_sa(2), "AckPgn": pgn}
    _, data = P.encode("Acknowledgement", P.nack_values(pgn, rack_sa(2)), STATION_SA, 0xFF)
    assert data == bytes([1, 0xFF, 0xFF, 0xFF, rack_sa(2), 0x00, 0xEF, 0x00])
    assert rig.bus.stats["nacks_sent"] == 1 and rig.messages == []


async def test_a_global_request_is_not_nacked(rig: Rig) -> None:
    rig.send("Request", {"RequestedPgn": 0x1234}, sa=rack_sa(2), da=0xFF)
    await rig.settle("requests_received", 1)
    assert await rig.frames() == [] and rig.bus.stats["nacks_sent"] == 0


async def test_nacks_are_rate_limited_per_requester_and_pgn(rig: Rig) -> None:
    for _ in range(5):  # a babbling node
        rig.send("Request", {"RequestedPgn": 0xFF10}, sa=rack_sa(2), da=STATION_SA)
    rig.send("Request", {"RequestedPgn": 0xFF11}, sa=rack_sa(2), da=STATION_SA)
    await rig.settle("requests_received", 6)
    got = await rig.frames()
    assert sorted(int(d.signals["AckPgn"]) for d, _ in got) == [0xFF10, 0xFF11]
    rig.clock.t += NACK_REPEAT_S
    rig.send("Request", {"RequestedPgn": 0xFF10}, sa=rack_sa(2), da=STATION_SA)
    assert len(await rig.frames()) == 1


async def test_a_nack_from_a_pack_is_counted_and_asking_keeps_its_pace(rig: Rig) -> None:
    loc = Location.rack(1)
    assert rig.commander.request(PackRequest(loc, (PackData.IDENTITY,))) == 1
    await rig.frames()
    pgn = P.pgn_of("PackIdentity")
    rig.send("Acknowledgement", P.nack_values(pgn, STATION_SA), sa=rack_sa(1), da=0xFF)
    rig.send("Acknowledgement", P.nack_values(pgn, 0x33), sa=rack_sa(1), da=0xFF)  # not ours
    await rig.settle("acks_other", 1)
    await rig.settle("nacks_received", 1)
    assert rig.commander.refused(loc, PackData.IDENTITY) == 1
    assert rig.commander.refused(None, PackData.IDENTITY) == 1
    assert rig.commander.refused(loc, PackData.LIMITS) == 0
    assert rig.messages == []  # the adapter never sees it
    # no storm: the pace of the requests is what it was
    assert rig.commander.request(PackRequest(loc, (PackData.IDENTITY,))) == 0
    rig.clock.t += REQUEST_REPEAT_S
    assert rig.commander.request(PackRequest(loc, (PackData.IDENTITY,))) == 1


async def test_access_denied_counts_as_refused(rig: Rig) -> None:
    values = {**P.nack_values(0xFF14, STATION_SA),
              "AckControl": P.codes("Acknowledgement", "AckControl")["access_denied"]}
    rig.send("Acknowledgement", values, sa=VEHICLE_PACK_SA, da=0xFF)
    await rig.settle("nacks_received", 1)
    assert rig.commander.refused(BAY, PackData.LIMITS) == 1


# --------------------------------------------------------- the sim's packs, by hand


@pytest.fixture
def channel() -> str:
    return f"gaps-sim-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def listener(channel: str) -> Iterator[can.BusABC]:
    bus = can.Bus(interface="virtual", channel=channel)
    yield bus
    bus.shutdown()


@pytest.fixture
def sim(channel: str) -> Iterator[tuple[StationModel, CanPacks]]:
    model = StationModel(SimConfig(vehicles=0))
    cp = CanPacks(model, CanConfig(interface="virtual", channel=channel), P)
    cp._bus = open_bus(cp.cfg)  # cycles driven by hand
    yield model, cp
    cp._bus.shutdown()


def drain(bus: can.BusABC) -> list[tuple[Decoded, int]]:
    out = []
    while (msg := bus.recv(0.05)) is not None:
        out.append((P.decode(msg.arbitration_id, msg.data), (msg.arbitration_id >> 8) & 0xFF))
    return out


def request(cp: CanPacks, pgn: int, da: int, *, sa: int = STATION_SA,
            data: bytes | None = None) -> None:
    can_id, encoded = P.encode("Request", {"RequestedPgn": pgn}, sa=sa, da=da)
    cp.handle_frame(can_id, encoded if data is None else data, True, 1.0)


def test_a_sim_pack_nacks_a_pgn_it_does_not_send_when_asked_by_address(
    sim: tuple[StationModel, CanPacks], listener: can.BusABC
) -> None:
    _, cp = sim
    for pgn in (P.pgn_of("PackControl"), P.pgn_of("VehicleIdentification"), 0x1234):
        request(cp, pgn, rack_sa(3))
        [(nack, da)] = drain(listener)
        assert (nack.name, nack.source, da) == ("Acknowledgement", rack_sa(3), 0xFF)
        assert nack.signals == {"AckControl": NACK, "GroupFunction": 0xFF,
                                "AckAddress": STATION_SA, "AckPgn": pgn}
    request(cp, 0x1234, rack_sa(3), sa=0x33)  # any requester is named as such
    [(nack, _)] = drain(listener)
    assert nack.signals["AckAddress"] == 0x33
    assert cp.nacks_sent == 4


def test_a_sim_pack_does_not_nack_a_global_request(
    sim: tuple[StationModel, CanPacks], listener: can.BusABC
) -> None:
    _, cp = sim
    request(cp, 0x1234, 0xFF)
    request(cp, P.pgn_of("PackControl"), 0xFF)
    assert drain(listener) == [] and cp.nacks_sent == 0


def test_a_sim_pack_ignores_a_request_of_the_wrong_length(
    sim: tuple[StationModel, CanPacks], listener: can.BusABC
) -> None:
    _, cp = sim
    request(cp, P.pgn_of("PackIdentity"), rack_sa(1),
            data=bytes([0x10, 0xFF, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]))
    assert drain(listener) == [] and cp.bad_frames["bad_length"] == 1


def test_the_bay_answers_a_vin_request_and_a_rack_pack_nacks_it(
    listener: can.BusABC, channel: str
) -> None:
    model = StationModel(SimConfig())
    model.advance(2.0)  # the first car drives on 1 s after start; its BMS is awake
    assert model.vehicle is not None and VEHICLE_PACK_SA in model.can_packs()
    cp = CanPacks(model, CanConfig(interface="virtual", channel=channel), P)
    cp._bus = open_bus(cp.cfg)
    try:
        request(cp, P.pgn_of("VehicleIdentification"), 0xFF)
        assert drain(listener) == [] and cp._vin_asked  # the VIN task sends its BAM

        async def by_address() -> list[tuple[Decoded, int]]:
            # asked by address: the car's BMS opens a connection to the requester (RTS)
            request(cp, P.pgn_of("VehicleIdentification"), VEHICLE_PACK_SA)
            await asyncio.sleep(0.01)
            await cp.transport.stop()
            return drain(listener)

        [(rts, da)] = asyncio.run(by_address())
        assert (rts.name, rts.source, da) == ("TP_CM", VEHICLE_PACK_SA, STATION_SA)
        assert rts.signals["Control"] == 16 and rts.signals["TotalSize"] == 18
        request(cp, P.pgn_of("VehicleIdentification"), rack_sa(1))
        assert [d.name for d, _ in drain(listener)] == ["Acknowledgement"]
    finally:
        cp._bus.shutdown()


# ---------------------------------------------------------- 16: no start-up burst


def test_a_pack_without_start_up_burst_sends_nothing_on_waking_but_answers_at_once(
    sim: tuple[StationModel, CanPacks], listener: can.BusABC
) -> None:
    model, cp = sim
    for p in model.rack.values():
        if p is not None:
            p.startup_burst = False
    cp.send_cycle(100.0)  # every pack wakes now
    assert drain(listener) == []
    request(cp, P.pgn_of("PackIdentity"), rack_sa(2))  # asked before any frame of its own
    [(ident, _)] = drain(listener)
    assert (ident.name, ident.source) == ("PackIdentity", rack_sa(2))
    assert cp.requests_answered == 1
    cp.send_cycle(100.1)  # then each message on its period
    assert {d.name for d, _ in drain(listener)} == {"PackStatus", "PackCells"}
    for i in range(2, 11):
        cp.send_cycle(100.0 + i * 0.1)
    assert "PackIdentity" in {d.name for d, _ in drain(listener)}


def test_a_silenced_or_deaf_pack_answers_nothing(
    sim: tuple[StationModel, CanPacks], listener: can.BusABC
) -> None:
    model, cp = sim
    model.faults.set("network_down")
    request(cp, P.pgn_of("PackIdentity"), rack_sa(1))
    request(cp, 0x1234, rack_sa(1))
    assert drain(listener) == []


# ------------------------------------------------ 18: PackControl on the pack side


def pack() -> SimPack:
    return SimPack(serial=1, family=20, chemistry="nmc", soc_pct=30.0)


def test_keep_keeps_the_command_and_takes_the_new_limits() -> None:
    p = pack()
    p.apply_control(CMD_CHARGE_ENABLE, 50.0, 800.0, 0, 0.0)
    p.advance(1.0, 0.1, True)
    assert p.current_a == pytest.approx(50.0)
    assert p.apply_control(CMD_KEEP, 20.0, 800.0, 1, 0.2)
    p.advance(1.0, 0.3, True)
    assert p.charge_enabled and p.current_a == pytest.approx(20.0)
    p.apply_control(CMD_CHARGE_DISABLE, 0.0, 0.0, 2, 0.4)
    p.apply_control(CMD_KEEP, 50.0, 800.0, 3, 0.5)  # keep: still disabled
    p.advance(1.0, 0.6, True)
    assert not p.charge_enabled and p.current_a == 0.0 and p.charge_current_limit_a == 50.0


def test_enable_with_a_zero_limit_is_ready_idle_and_no_error() -> None:
    p = pack()
    p.apply_control(CMD_CHARGE_ENABLE, 0.0, 800.0, 0, 0.0)
    p.advance(1.0, 0.1, True)
    assert p.charge_enabled and p.current_a == 0.0
    assert p.state == "idle" and p.faults == set()
    assert "idle" in P.codes("PackCells", "PackState")  # the DBC's name for it
    p.apply_control(CMD_KEEP, 40.0, 800.0, 1, 0.2)  # current granted: it draws at once
    p.advance(1.0, 0.3, True)
    assert p.state == "charging" and p.current_a == pytest.approx(40.0)


def test_a_counter_jump_is_acted_on_and_counted() -> None:
    p = pack()
    p.apply_control(CMD_CHARGE_ENABLE, 50.0, 800.0, 7, 0.0)  # first frame: any counter
    p.apply_control(CMD_KEEP, 50.0, 800.0, 8, 1.0)
    assert (p.control_gaps, p.control_lost) == (0, 0)
    assert p.apply_control(CMD_KEEP, 30.0, 800.0, 12, 2.0)  # 9, 10, 11 lost
    assert (p.control_gaps, p.control_lost) == (1, 3) and p.charge_current_limit_a == 30.0
    p.apply_control(CMD_KEEP, 30.0, 800.0, CONTROL_COUNTER_MAX, 2.5)
    p.apply_control(CMD_KEEP, 30.0, 800.0, 0, 3.0)  # the wrap is no jump
    assert p.control_gaps == 2 and p.control_lost == 3 + CONTROL_COUNTER_MAX - 13


def test_a_duplicate_is_ignored_and_does_not_refresh_the_timeout() -> None:
    p = pack()
    p.apply_control(CMD_CHARGE_ENABLE, 50.0, 800.0, 4, 0.0)
    assert not p.apply_control(CMD_CHARGE_DISABLE, 0.0, 0.0, 4, 2.0)
    assert p.charge_enabled and p.charge_current_limit_a == 50.0
    assert p.control_duplicates == 1 and p.last_control_at == 0.0
    p.advance(1.0, p.control_timeout_s + 0.1, True)
    assert not p.charge_enabled and p.current_a == 0.0  # timed out all the same


def test_a_duplicate_isolate_is_still_acted_on() -> None:
    p = pack()
    p.apply_control(CMD_CHARGE_ENABLE, 50.0, 800.0, 0, 0.0)
    assert p.apply_control(CMD_ISOLATE, 0.0, 0.0, 0, 0.5)
    assert p.state == "isolated" and not p.charge_enabled


def test_an_unknown_command_is_ignored() -> None:
    p = pack()
    p.apply_control(CMD_CHARGE_ENABLE, 50.0, 800.0, 0, 0.0)
    assert not p.apply_control("code_9", 500.0, 900.0, 1, 0.5)
    assert p.charge_current_limit_a == 50.0 and p.control_counter == 0


def test_after_the_timeout_keep_does_not_resume_and_any_counter_is_taken() -> None:
    p = pack()
    p.apply_control(CMD_CHARGE_ENABLE, 50.0, 800.0, 0, 0.0)
    p.advance(1.0, p.control_timeout_s + 0.5, True)
    assert not p.charge_enabled
    p.apply_control(CMD_KEEP, 50.0, 800.0, 0, p.control_timeout_s + 1.0)  # no duplicate now
    p.advance(1.0, p.control_timeout_s + 1.1, True)
    assert not p.charge_enabled and p.control_duplicates == 0 and p.control_gaps == 0
    p.apply_control(CMD_CHARGE_ENABLE, 50.0, 800.0, 1, p.control_timeout_s + 1.2)
    p.advance(1.0, p.control_timeout_s + 1.3, True)
    assert p.state == "charging"


def test_the_control_timeout_and_counter_come_from_the_dbc(tmp_path: Path) -> None:
    from drivers.bms.dbc import __file__ as dbc_pkg

    text = (Path(dbc_pkg).parent / "swap_pack.dbc").read_text()
    control_id = P.message("PackControl").frame_id | 0x80000000
    old = f'BA_ "RxTimeoutMs" BO_ {control_id} 3000;'
    assert old in text
    dbc = tmp_path / "slow.dbc"
    dbc.write_text(text.replace(old, f'BA_ "RxTimeoutMs" BO_ {control_id} 5000;'))
    proto = PackProtocol(dbc)
    model = StationModel(SimConfig(vehicles=0))
    cp = CanPacks(model, CanConfig(interface="virtual", channel="unused"), proto)
    values = {"ControlCommand": 1, "ChargeCurrentLimit": 50.0, "ChargeVoltageLimit": 800.0,
              "ControlCounter": 0}
    can_id, data = proto.encode("PackControl", values, STATION_SA, rack_sa(1))
    cp.handle_frame(can_id, data, True, 0.0)
    p = model.rack[1]
    assert p is not None and p.control_timeout_s == 5.0
    p.advance(1.0, 4.0, True)
    assert p.charge_enabled  # 3 s would have stopped it
    assert P.message("PackControl").get_signal_by_name(
        "ControlCounter").maximum == CONTROL_COUNTER_MAX


def test_the_doc_says_it_once() -> None:
    """The PackControl timeout is stated once, from the DBC; the section names the state."""
    t = P.timeout_s("PackControl")
    assert t is not None
    assert DOC.count(f"{round(t * 1000)} ms** (`RxTimeoutMs`)") == 1
    assert "stops charging" not in DOC.replace("**Timeout: a pack stops charging", "")
    assert f"{round(t * 1000)} ms." not in _section("PackControl")
    side = DOC[DOC.index("## PackControl on the pack side"):]
    assert "**`idle`**" in side[:side.index("\n## ")]


def test_split_id_of_an_acknowledgement() -> None:
    can_id, _ = P.encode("Acknowledgement", P.nack_values(0xFF10, STATION_SA), rack_sa(1), 0xFF)
    assert split_id(can_id) == (6, 0xE800, rack_sa(1), 0xFF)
