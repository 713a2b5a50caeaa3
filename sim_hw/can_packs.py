"""The packs' BMS on a real python-can bus: cyclic frames out, PackControl in.

Periods are wire periods in real time (not scaled by the simulation speed): a driver's
500 ms timeout must mean the same against the simulator as against a real pack. They come
from the DBC (GenMsgCycleTime of every message the BMS sends), as do the value tables that
turn the pack model's names (chemistry, state, command) into codes and back.

A BMS announces itself with all its messages at once when it wakes up or is connected,
then keeps each message's period; a pack with `identity_burst` off leaves PackIdentity out
of that burst (it comes on its period, or at once on a J1939 Request), one with
`startup_burst` off sends no burst at all (each message first one period after it woke).

Every pack on the bus answers a J1939 Request at any time, from any requester: with the
message asked for (the car's VIN, from the bay, as a BAM), or, when it does not send that
PGN and the Request was addressed to it, with a NACK to the global address naming the
requester (J1939-21); a global Request for a PGN it does not send gets no answer.

The car on the platform sends its VIN (J1939-71 Vehicle Identification, 18 bytes) as a
J1939-21 BAM from the bay's address while its BMS is awake: at once when the car arrives
(or its BMS wakes after the swap), then every GenMsgCycleTime (5000 ms) scaled by the
simulation speed, like the car's own time. The BAM's packets are 50 ms apart
(j1939_tp.BAM_GAP_MIN_S) at speed 1, shortened by the speed but never below
VIN_GAP_FLOOR_S of real time. `vin_send` off (the `vehicle_vin` control op, or
`[sim] vin_broadcast = false`) makes the cars send none; `vin_source` sends it from
another address (a bench's misbehaving node).

Messages longer than a frame that a node sends on request (the pack's nameplate text, its
cell voltages and temperatures; the car's VIN when asked at the bay's address) go through
`transport` (sim_hw/pack_transport.py): RTS/CTS to a requester that asked by address, a
BAM to every node otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import can

from drivers.bms import j1939_tp
from drivers.bms.adapter import FAULT_SIGNALS, VIN_DELIMITER, VIN_DELIMITER_SIGNAL, VIN_SIGNAL
from drivers.bms.protocol import (
    ACKNOWLEDGEMENT,
    STATION_SA,
    VEHICLE_PACK_SA,
    FrameError,
    PackProtocol,
    split_id,
)
from sim_hw.config import CanBusConfig, CanConfig
from sim_hw.mechanics import StationModel
from sim_hw.pack_transport import PackTransport, pack_details
from sim_hw.packs import CHEMISTRIES, CONTROL_COUNTER_MAX, SimPack
from station.buslayout import addresses, check_layout

log = logging.getLogger(__name__)

BMS_NODE = "BMS"  # the DBC node whose messages a simulated pack sends
IDENTITY = "PackIdentity"
VIN_MESSAGE = "VehicleIdentification"
VIN_GAP_FLOOR_S = 0.010  # a sped-up BAM's packets are never closer than this, real time
BUS_FAULT_TICK_S = 0.005  # real s between two rounds of the bus faults (error frames, babble)
ERROR_FRAME_PERIOD_S = 0.1  # a bus in a bad state reports it again this often (real s)
# SocketCAN error frames as a controller reports them (linux/can/error.h): class bits in the
# identifier, the controller's status in data[1]
ERR_CRTL, ERR_BUSOFF, ERR_RESTARTED = 0x004, 0x040, 0x100
CRTL_PASSIVE = 0x10 | 0x20  # RX and TX passive
CRTL_ACTIVE = 0x40
BABBLER_SA = 0x27  # the babbling node's source address: no pack's, not the station's
# the pack model's fault flag -> its PackCells bit: the inverse of the controller's own
# translation (drivers/bms/adapter.py), so the two sides cannot name a bit differently
FAULT_BITS: dict[str, str] = {fault.value: bit for bit, fault in FAULT_SIGNALS.items()}


@functools.cache
def _default_protocol() -> PackProtocol:
    return PackProtocol()


def pack_signals(pack: SimPack, protocol: PackProtocol | None = None) -> dict[str, dict[str, Any]]:
    """The cyclic messages of one pack, as DBC signal values (codes from the DBC's tables)."""
    proto = protocol or _default_protocol()
    f = pack.faults
    cells: dict[str, Any] = {
        "MaxCellVoltage": round(pack.max_cell_v, 3),
        "MinCellVoltage": round(pack.min_cell_v, 3),
        "InsulationResistance": _clamp(round(pack.insulation_kohm), 0, 64255),
    }
    cells.update({bit: int(flag in f) for flag, bit in FAULT_BITS.items()})
    cells["PackState"] = proto.codes("PackCells", "PackState")[pack.state]
    return {
        "PackIdentity": {
            "PackSerial": pack.serial,
            "PackFamily": pack.family,
            "Chemistry": proto.codes("PackIdentity", "Chemistry")[pack.chemistry],
            "RatedEnergy": pack.rated_energy_kwh,
        },
        "PackHealth": {
            "CycleCount": pack.cycle_count,
            "SOH": _clamp(pack.soh_pct, 0, 100),
            "RatedVoltage": pack.rated_voltage_v,
            "RatedCapacity": round(pack.rated_capacity_ah, 1),
        },
        "PackStatus": {
            "SOC": _clamp(pack.soc_pct, 0, 100),
            "PackVoltage": round(pack.pack_voltage_v, 1),
            "PackCurrent": _clamp(round(pack.current_a, 1), -3200, 3225),
            "MinCellTemp": _clamp(round(pack.min_cell_temp_c), -40, 210),
            "MaxCellTemp": _clamp(round(pack.max_cell_temp_c), -40, 210),
        },
        "PackCells": cells,
        "PackLimits": {  # rounded down to the resolution: never more than the pack takes
            "MaxChargeVoltage": _floor(pack.max_charge_voltage_v, 0.1),
            "MaxChargeCurrent": _floor(pack.max_charge_current_a, 0.1),
            "CellCount": pack.series_cells,
            "MaxCellChargeVoltage": _floor(pack.max_cell_charge_v, 0.001),
        },
    }


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))


def _floor(v: float, step: float) -> float:
    """v rounded down to a multiple of step (a float error short of one still counts)."""
    return round(math.floor(v / step + 1e-6) * step, 6)


def open_bus(cfg: CanConfig | CanBusConfig) -> can.BusABC:
    kwargs: dict[str, Any] = {"interface": cfg.interface, "channel": cfg.channel}
    if cfg.interface == "udp_multicast" and cfg.udp_port is not None:
        kwargs["port"] = cfg.udp_port
    if cfg.bitrate is not None:
        kwargs["bitrate"] = cfg.bitrate
    return can.Bus(**kwargs)


class CanPacks:
    """Sends every connected pack's frames at its source address; applies PackControl."""

    def __init__(
        self,
        model: StationModel,
        cfg: CanConfig,
        protocol: PackProtocol | None = None,
        real_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.protocol = protocol or PackProtocol()
        self.real_clock = real_clock
        self.silent = False  # every pack stops talking (see also the can_silent fault)
        self.sent = 0
        self.send_errors = 0
        self.controls = 0
        self.requests_answered = 0  # Requests answered with the message asked for
        self.nacks_sent = 0  # Requests answered with a NACK
        self.bad_frames: Counter[str] = Counter()
        # the cars' Vehicle Identification (a BAM): on/off, from which address, how many sent
        self.vin_send = model.config.vin_broadcast
        self.vin_source = VEHICLE_PACK_SA
        self.vin_sent = 0
        self.vin_last_bam: list[float] = []  # real send times of the last BAM's frames
        self._vin_wake = asyncio.Event()
        self._vin_asked = False  # a Request for the VIN: the bay's BMS sends it now
        self._vin_task: asyncio.Task[None] | None = None
        proto = self.protocol
        vin_period = proto.period_s(VIN_MESSAGE)
        if vin_period is None:
            raise ValueError(f"{VIN_MESSAGE}: the DBC gives no GenMsgCycleTime")
        self._vin_period = vin_period
        self._vin_delimiter = proto.codes(VIN_MESSAGE, VIN_DELIMITER_SIGNAL)[VIN_DELIMITER]
        self._control_pgn = proto.pgn_of("PackControl")
        control_timeout = proto.timeout_s("PackControl")
        if control_timeout is None:
            raise ValueError("PackControl: the DBC gives no RxTimeoutMs")
        self._control_timeout = control_timeout
        counter = proto.message("PackControl").get_signal_by_name("ControlCounter")
        if counter.maximum != CONTROL_COUNTER_MAX:
            raise ValueError(f"PackControl.ControlCounter: the DBC's maximum {counter.maximum}"
                             f" is not the packs' {CONTROL_COUNTER_MAX}")
        self._vin_pgn = proto.pgn_of(VIN_MESSAGE)
        self._request_pgn = proto.pgn_of("Request")
        self._command_names = proto.choices("PackControl", "ControlCommand")
        chemistries = proto.codes("PackIdentity", "Chemistry")
        unknown = [c for c in CHEMISTRIES if c not in chemistries]
        if unknown:
            raise ValueError(f"PackIdentity.Chemistry: no code for {', '.join(unknown)}")
        # message name -> period (s), in DBC order (PackIdentity first: a station that
        # hears a new serial starts a new report before the status frames that follow)
        self.periods: dict[str, float] = {}
        for msg in proto.db.messages:
            period = proto.period_s(msg.name)
            if BMS_NODE in msg.senders and period is not None and msg.length <= 8:
                self.periods[msg.name] = period
        self.tick_s = min(self.periods.values())
        self._name_of_pgn = {proto.pgn_of(n): n for n in self.periods}
        self._bus: can.BusABC | None = None  # the first bus (with one bus: the bus)
        self._buses: dict[str, can.BusABC] = {}  # bus name -> bus, in the layout's order
        self._notifiers: list[can.Notifier] = []
        self._notifier: can.Notifier | None = None
        self._task: asyncio.Task[None] | None = None
        self._faults_task: asyncio.Task[None] | None = None
        # The layout: which bus each pack location's BMS is wired to (one bus: every one)
        self.bus_names = [b.name for b in cfg.bus_list()]
        served = check_layout([(b.name, b.locations) for b in cfg.bus_list()], "can.buses")
        self._home = {sa: name for name, slots in served.items() for sa in addresses(slots)}
        self.bus_sent: Counter[str] = Counter()  # frames sent per bus (babble included)
        self.error_frames_sent: Counter[str] = Counter()
        self.babble_sent: Counter[str] = Counter()
        self._bus_reported: dict[str, str] = {}  # bus -> the bad state last reported on it
        self._next_error: dict[str, float] = {}
        self._babble_due: dict[str, float] = {}
        self._rng = random.Random(0x27)
        self._connected: dict[int, int] = {}  # source address -> serial
        self._next_due: dict[int, dict[str, float]] = {}  # address -> message -> real time
        self.transport = PackTransport(
            proto, self._send_frame, real_clock, bam_gap_s=self.vin_gap_s,
            silent=lambda sa: self.silent or self.model.faults.can_silenced(sa))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for bus_cfg in self.cfg.bus_list():
                bus = open_bus(bus_cfg)
                self._buses[bus_cfg.name] = bus
                self._notifiers.append(can.Notifier(
                    bus, [functools.partial(self._on_frame, bus=bus_cfg.name)], timeout=0.1,
                    loop=loop))
                log.info("pack CAN bus %s on %s channel %s", bus_cfg.name, bus_cfg.interface,
                         bus_cfg.channel)
        except BaseException:
            await self.stop()
            raise
        self._bus = next(iter(self._buses.values()))
        self._notifier = self._notifiers[0]
        self._task = asyncio.create_task(self._run(), name="sim-can-packs")
        self._vin_task = asyncio.create_task(self._vin_run(), name="sim-vehicle-vin")
        self._faults_task = asyncio.create_task(self._bus_faults_run(), name="sim-can-faults")

    async def stop(self) -> None:
        await self.transport.stop()
        for task in (self._task, self._vin_task, self._faults_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._vin_task = self._faults_task = None
        # On the loop thread: it removes fd readers from the loop; a reader thread
        # (virtual bus) is joined within its 0.1 s receive timeout.
        for notifier in self._notifiers:
            notifier.stop(timeout=1.0)
        self._notifiers.clear()
        self._notifier = None
        for bus in self._buses.values():
            bus.shutdown()
        if self._bus is not None and not self._buses:
            self._bus.shutdown()
        self._buses.clear()
        self._bus = None

    # ---- the buses ----------------------------------------------------------------------
    def bus_of(self, sa: int) -> str:
        """The bus the node at `sa` is wired to: its location's, or another one while the
        can_wrong_bus fault miswires it (with one bus there is no other)."""
        home = self._home.get(sa, self.bus_names[0])
        if len(self.bus_names) > 1 and self.model.faults.can_wrong_bus(sa):
            return next(n for n in self.bus_names if n != home)
        return home

    def bus_down(self, name: str) -> bool:
        """True while the bus is bus-off (can_bus_off): nothing gets through it."""
        return self.model.faults.can_bus_error(name) == "bus_off"

    async def _bus_faults_run(self) -> None:
        while True:
            self.bus_faults_cycle(self.real_clock())
            await asyncio.sleep(BUS_FAULT_TICK_S)

    def bus_faults_cycle(self, real: float) -> None:
        """The bus faults: error frames for a bus in a bad state (again every
        ERROR_FRAME_PERIOD_S; back to error active once when cleared), the babbling node's
        frames due since the last round."""
        faults = self.model.faults
        for name in self.bus_names:
            state = faults.can_bus_error(name)
            if state is not None and real >= self._next_error.get(name, 0.0):
                self._next_error[name] = real + ERROR_FRAME_PERIOD_S
                self._bus_reported[name] = state
                if state == "bus_off":
                    self._send_error(name, ERR_BUSOFF, 0)
                else:
                    self._send_error(name, ERR_CRTL, CRTL_PASSIVE)
            elif state is None and name in self._bus_reported:
                was = self._bus_reported.pop(name)
                self._next_error.pop(name, None)
                if was == "passive":
                    self._send_error(name, ERR_CRTL, CRTL_ACTIVE)
                else:  # the controller restarted after bus-off (restart-ms)
                    self._send_error(name, ERR_RESTARTED, 0)
            rate = faults.can_babble(name)
            if rate <= 0:
                self._babble_due.pop(name, None)
                continue
            last = self._babble_due.setdefault(name, real)
            count = int((real - last) * rate)
            if count <= 0:
                continue
            self._babble_due[name] = last + count / rate
            for _ in range(min(count, int(rate * 0.1) + 1)):  # a stalled loop: no burst
                self._babble(name)

    def _send_error(self, bus: str, class_bits: int, ctrl: int) -> None:
        self._send_msg(bus, can.Message(arbitration_id=class_bits, is_extended_id=False,
                                        is_error_frame=True,
                                        data=bytes([0, ctrl, 0, 0, 0, 0, 0, 0])))
        self.error_frames_sent[bus] += 1

    def _babble(self, bus: str) -> None:
        """One frame of garbage from the babbling node: an identifier no DBC message has,
        or a message of the wrong length, or an 11-bit frame; never a pack's address."""
        rng = self._rng
        pick = rng.random()
        if pick < 0.6:
            can_id = (rng.randrange(0x18F000, 0x18F0FF) << 8) | BABBLER_SA  # proprietary
            data = rng.randbytes(8)
            extended = True
        elif pick < 0.9:
            can_id, _ = self.protocol.encode("PackStatus", {
                "SOC": 50, "PackVoltage": 400, "PackCurrent": 0, "MinCellTemp": 20,
                "MaxCellTemp": 20}, sa=BABBLER_SA)
            data = rng.randbytes(rng.randrange(0, 8))  # too short
            extended = True
        else:
            can_id, data, extended = rng.randrange(0x800), rng.randbytes(8), False
        self._send_msg(bus, can.Message(arbitration_id=can_id, data=data,
                                        is_extended_id=extended))
        self.babble_sent[bus] += 1

    async def _run(self) -> None:
        next_t = self.real_clock()
        while True:
            self.send_cycle(self.real_clock())
            next_t += self.tick_s
            delay = next_t - self.real_clock()
            if delay < -self.tick_s:  # fell behind (a stalled loop): don't burst to catch up
                next_t = self.real_clock()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    def send_cycle(self, real: float) -> None:
        """One tick (the shortest period): every message that is due, for every pack; all
        of a pack's messages when it has just woken up or been connected."""
        packs = {} if self.silent else self.model.can_packs()
        faults = self.model.faults
        packs = {sa: p for sa, p in packs.items() if not faults.can_silenced(sa)}
        for sa in list(self._connected):
            if sa not in packs:
                del self._connected[sa]
                self._next_due.pop(sa, None)
        for sa, pack in packs.items():
            if self._connected.get(sa) != pack.serial:  # woken up, or another pack here
                self._connected[sa] = pack.serial
                self._next_due[sa] = {
                    name: real + period if not pack.startup_burst or (
                        name == IDENTITY and not pack.identity_burst) else real
                    for name, period in self.periods.items()
                }
            due = self._next_due[sa]
            names = []
            for name, period in self.periods.items():
                if real >= due[name] - self.tick_s / 2:  # due before the next tick
                    names.append(name)
                    due[name] += period
                    if due[name] < real:  # fell behind: keep the period from now
                        due[name] = real + period
            if not names:
                continue
            signals = pack_signals(pack, self.protocol)
            for name in names:
                self._send(name, signals[name], sa)

    # ---- the car's VIN ---------------------------------------------------------------
    def vehicle_arrived(self) -> None:
        """A car is on the platform: its BMS sends its VIN now, not at the next poll."""
        self._vin_wake.set()

    def vin_gap_s(self) -> float:
        """Real time between a BAM's frames: J1939-21's 50 ms, shortened when the
        simulation runs faster than real time, never below VIN_GAP_FLOOR_S."""
        speed = self.model.config.speed
        return max(VIN_GAP_FLOOR_S, j1939_tp.BAM_GAP_MIN_S / max(speed, 1.0))

    def vin_period_s(self) -> float:
        """Real time between two VIs: the DBC's period over the speed, but a BAM never
        starts before the one before has ended (a new TP.CM would abort it)."""
        frames = 1 + j1939_tp.packets_for(self.protocol.message(VIN_MESSAGE).length)
        return max(self._vin_period / self.model.config.speed, frames * self.vin_gap_s())

    def vin_sender(self) -> tuple[int, str] | None:
        """(token, VIN) of the car whose BMS sends its VIN now; None: nobody sends one."""
        v = self.model.vehicle
        if self.silent or not self.vin_send or v is None or not v.vin:
            return None
        if VEHICLE_PACK_SA not in self.model.can_packs() or \
                self.model.faults.can_silenced(VEHICLE_PACK_SA):
            return None  # its BMS is asleep, out (mid-swap) or silenced
        return v.token, v.vin

    async def _vin_run(self) -> None:
        # the car, VIN and address the last VI was for: any change sends one at once
        sent_for: tuple[int, str, int] | None = None
        next_at = 0.0
        while True:
            now = self.real_clock()
            sender = self.vin_sender()
            if sender is None:
                sent_for = None  # its BMS, when it wakes, sends at once
            elif (*sender, self.vin_source) != sent_for or now >= next_at or self._vin_asked:
                sent_for, next_at = (*sender, self.vin_source), now + self.vin_period_s()
                self._vin_asked = False
                await self.send_vin(sender[1])
                continue
            wait = self.tick_s if sender is None else min(self.tick_s, next_at - now)
            self._vin_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._vin_wake.wait(), max(0.0, wait))

    async def send_vin(self, vin: str) -> None:
        """One Vehicle Identification as a BAM from vin_source, its frames vin_gap_s()
        apart (measured on the real clock, so never closer)."""
        try:
            frames = self.protocol.encode_frames(
                VIN_MESSAGE, {VIN_SIGNAL: vin, VIN_DELIMITER_SIGNAL: self._vin_delimiter},
                sa=self.vin_source)
        except ValueError as exc:  # a VIN the DBC cannot carry (config validates it)
            self.send_errors += 1
            log.warning("VIN %r not sent: %s", vin, exc)
            return
        gap = self.vin_gap_s()
        times: list[float] = []
        bus = self.bus_of(VEHICLE_PACK_SA)  # the car is on the bay's bus, whatever it sends as
        for can_id, data in frames:
            if times:
                while (left := times[-1] + gap - self.real_clock()) > 0:
                    await asyncio.sleep(left)
            self._send_frame(can_id, data, VIN_MESSAGE, self.vin_source, bus=bus)
            times.append(self.real_clock())
        self.vin_last_bam = times
        self.vin_sent += 1

    def _answer_request(self, pgn: int, destination: int | None, requester: int,
                        bus: str | None = None) -> None:
        """J1939 Request: the addressed packs (0xFF: all) on the bus it came on (None: any)
        send the PGN asked for at once, whenever they are on the bus; the bay's BMS sends
        the car's VIN as a BAM. A pack asked by its address for a PGN it does not send
        answers with a NACK."""
        if self.silent:
            return
        name = self._name_of_pgn.get(pgn)
        faults = self.model.faults
        for sa, pack in self.model.can_packs().items():
            if destination not in (None, 0xFF, sa) or faults.can_silenced(sa) or \
                    faults.can_deaf(sa) or (bus is not None and self.bus_of(sa) != bus):
                continue
            if name is not None:
                self._send(name, pack_signals(pack, self.protocol)[name], sa)
                self.requests_answered += 1
            elif (detail := self.transport.detail_name(pgn)) is not None:
                if self.transport.answer(detail, pack_details(pack)[detail], sa, requester,
                                         addressed=destination == sa):
                    self.requests_answered += 1
            elif pgn == self._vin_pgn and sa == VEHICLE_PACK_SA and destination == sa and \
                    (vin := self.vin_sender()) is not None:
                # asked by address: the VIN in connection mode, to the requester
                if self.transport.answer(VIN_MESSAGE, {
                        VIN_SIGNAL: vin[1], VIN_DELIMITER_SIGNAL: self._vin_delimiter},
                        self.vin_source, requester, addressed=True):
                    self.requests_answered += 1
            elif pgn == self._vin_pgn and sa == VEHICLE_PACK_SA and \
                    self.vin_sender() is not None:
                self._vin_asked = True  # the VIN task sends it (its BAM's frames are spaced)
                self._vin_wake.set()
                self.requests_answered += 1
            elif destination == sa and requester <= 0xFD:  # never NACK a global Request
                self._send(ACKNOWLEDGEMENT, self.protocol.nack_values(pgn, requester), sa,
                           da=0xFF)
                self.nacks_sent += 1

    def _send(self, name: str, values: dict[str, Any], sa: int, da: int | None = None) -> None:
        if self._bus is None:
            return
        try:
            can_id, data = self.protocol.encode(name, values, sa=sa, da=da)
        except ValueError as exc:  # an encoder range error
            self.send_errors += 1
            log.debug("send %s from %#x failed: %s", name, sa, exc)
            return
        self._send_frame(can_id, data, name, sa)

    def _send_frame(self, can_id: int, data: bytes, name: str, sa: int,
                    bus: str | None = None) -> None:
        """One frame from the node at `sa`, on its bus (or on `bus`); nothing while that
        bus is bus-off."""
        target = bus or self.bus_of(sa)
        if self.bus_down(target):
            return
        if self._send_msg(target, can.Message(arbitration_id=can_id, data=data,
                                              is_extended_id=True), name, sa):
            self.sent += 1

    def _send_msg(self, bus: str, msg: can.Message, name: str = "frame", sa: int = -1) -> bool:
        wire = self._buses.get(bus, self._bus)
        if wire is None:
            return False
        try:
            wire.send(msg)
        except can.CanError as exc:  # a full queue
            self.send_errors += 1
            log.debug("send %s from %#x on %s failed: %s", name, sa, bus, exc)
            return False
        self.bus_sent[bus] += 1
        return True

    def _on_frame(self, msg: can.Message, bus: str | None = None) -> None:
        """Notifier callback (on the event loop): never raises, counts what it cannot use."""
        if msg.is_error_frame or (bus is not None and self.bus_down(bus)):
            return  # nothing gets through a bus-off bus
        try:
            self.handle_frame(msg.arbitration_id, bytes(msg.data), msg.is_extended_id,
                              self.real_clock(), bus=bus)
        except Exception as exc:  # a bad frame must never take the packs off the bus
            self.bad_frames["error"] += 1
            log.debug("frame %r: %s", msg, exc)

    def handle_frame(self, can_id: int, data: bytes, extended: bool, real: float,
                     bus: str | None = None) -> None:
        """A frame heard on `bus` (None: on every bus): a pack obeys PackControl and
        answers a Request only from its own bus."""
        if not extended:
            return  # 11-bit frames are not J1939; not ours to judge
        if self.transport.handle(can_id, data):
            return  # a TP.CM for one of our transfers: CTS, EndOfMsgAck or abort
        source = can_id & 0xFF
        # a Request from any node (ours are never Requests: no echo gets here); anything
        # else only from the station
        if source != STATION_SA and split_id(can_id)[1] != self._request_pgn:
            return  # another node's frame, or our own echoed by udp_multicast
        try:
            dec = self.protocol.decode(can_id, data)
        except FrameError as exc:  # a frame of the wrong length is ignored, and counted
            self.bad_frames[exc.kind] += 1
            return
        if dec.pgn == self._request_pgn:
            pgn = int(dec.signals["RequestedPgn"])
            if pgn <= 0x3FFFF:
                self._answer_request(pgn, dec.destination, source, bus)
            return
        if dec.pgn != self._control_pgn:
            return
        da = -1 if dec.destination is None else dec.destination
        pack = self.model.can_packs().get(da)
        if pack is None or self.model.faults.can_deaf(da) or \
                (bus is not None and self.bus_of(da) != bus):
            return  # nobody at that address on this bus right now, or the network is down
        s = dec.signals
        code = int(s["ControlCommand"])
        pack.control_timeout_s = self._control_timeout  # the DBC's, not the model's default
        pack.apply_control(
            self._command_names.get(code, f"code_{code}"),
            float(s["ChargeCurrentLimit"]),
            float(s["ChargeVoltageLimit"]),
            int(s["ControlCounter"]),
            real,
        )
        self.controls += 1
