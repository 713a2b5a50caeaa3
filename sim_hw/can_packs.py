"""The packs' BMS on a real python-can bus: cyclic frames out, PackControl in.

Periods are wire periods in real time (not scaled by the simulation speed): a driver's
500 ms timeout must mean the same against the simulator as against a real pack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import can

from drivers.bms.protocol import (
    CHEMISTRY_BY_NAME,
    STATION_SA,
    FrameError,
    PackProtocol,
)
from sim_hw.config import CanConfig
from sim_hw.mechanics import StationModel
from sim_hw.packs import SimPack

log = logging.getLogger(__name__)

FAST_PERIOD_S = 0.1  # PackStatus, PackCells
SLOW_PERIOD_S = 1.0  # PackIdentity, PackHealth
FAST = ("PackStatus", "PackCells")
SLOW = ("PackIdentity", "PackHealth")
STATE_CODES = {"idle": 0, "charging": 1, "isolated": 2}


def pack_signals(pack: SimPack) -> dict[str, dict[str, Any]]:
    """The four cyclic messages of one pack, as DBC signal values."""
    f = pack.faults
    return {
        "PackIdentity": {
            "PackSerial": pack.serial,
            "PackFamily": pack.family,
            "Chemistry": CHEMISTRY_BY_NAME[pack.chemistry],
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
        "PackCells": {
            "MaxCellVoltage": round(pack.max_cell_v, 3),
            "MinCellVoltage": round(pack.min_cell_v, 3),
            "InsulationResistance": _clamp(round(pack.insulation_kohm), 0, 64255),
            "FaultOverTemp": int("over_temp" in f),
            "FaultOverVoltage": int("over_voltage" in f),
            "FaultUnderVoltage": int("under_voltage" in f),
            "FaultInsulation": int("insulation" in f),
            "ThermalAlarm": int("thermal_alarm" in f),
            "FaultInternal": int("internal" in f),
            "PackState": STATE_CODES[pack.state],
        },
    }


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))


def open_bus(cfg: CanConfig) -> can.BusABC:
    kwargs: dict[str, Any] = {"interface": cfg.interface, "channel": cfg.channel}
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
        self.bad_frames: Counter[str] = Counter()
        self._control_pgn = self.protocol.pgn_of("PackControl")
        self._request_pgn = self.protocol.pgn_of("Request")
        self._name_of_pgn = {self.protocol.pgn_of(n): n for n in (*SLOW, *FAST)}
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected: dict[int, int] = {}  # source address -> serial
        self._next_slow: dict[int, float] = {}

    async def start(self) -> None:
        self._bus = open_bus(self.cfg)
        loop = asyncio.get_running_loop()
        self._notifier = can.Notifier(self._bus, [self._on_frame], timeout=0.1, loop=loop)
        self._task = asyncio.create_task(self._run(), name="sim-can-packs")
        log.info("pack CAN on %s channel %s", self.cfg.interface, self.cfg.channel)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._notifier is not None:
            # On the loop thread: it removes fd readers from the loop; a reader thread
            # (virtual bus) is joined within its 0.1 s receive timeout.
            self._notifier.stop(timeout=1.0)
            self._notifier = None
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None

    async def _run(self) -> None:
        next_t = self.real_clock()
        while True:
            self.send_cycle(self.real_clock())
            next_t += FAST_PERIOD_S
            delay = next_t - self.real_clock()
            if delay < -FAST_PERIOD_S:  # fell behind (a stalled loop): don't burst to catch up
                next_t = self.real_clock()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    def send_cycle(self, real: float) -> None:
        """One 100 ms cycle: fast frames for all, slow frames when due or newly connected."""
        packs = {} if self.silent else self.model.can_packs()
        faults = self.model.faults
        packs = {sa: p for sa, p in packs.items() if not faults.can_silenced(sa)}
        for sa in list(self._connected):
            if sa not in packs:
                del self._connected[sa]
                self._next_slow.pop(sa, None)
        for sa, pack in packs.items():
            new = self._connected.get(sa) != pack.serial
            if new:  # a BMS announces itself with everything at start-up
                self._connected[sa] = pack.serial
                self._next_slow[sa] = real
            names: tuple[str, ...] = FAST
            if real >= self._next_slow[sa] - 1e-3:
                names = SLOW + FAST
                self._next_slow[sa] += SLOW_PERIOD_S
                if self._next_slow[sa] < real:
                    self._next_slow[sa] = real + SLOW_PERIOD_S
            signals = pack_signals(pack)
            for name in names:
                self._send(name, signals[name], sa)

    def _answer_request(self, pgn: int, destination: int | None) -> None:
        """J1939 Request: the addressed packs (0xFF: all) send the PGN asked for at once."""
        name = self._name_of_pgn.get(pgn)
        if name is None or self.silent:
            return
        for sa, pack in self.model.can_packs().items():
            if destination not in (None, 0xFF, sa) or self.model.faults.can_silenced(sa):
                continue
            self._send(name, pack_signals(pack)[name], sa)

    def _send(self, name: str, values: dict[str, Any], sa: int) -> None:
        if self._bus is None:
            return
        try:
            can_id, data = self.protocol.encode(name, values, sa=sa)
            self._bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))
            self.sent += 1
        except (can.CanError, ValueError) as exc:  # a full queue or an encoder range error
            self.send_errors += 1
            log.debug("send %s from %#x failed: %s", name, sa, exc)

    def _on_frame(self, msg: can.Message) -> None:
        """Notifier callback (on the event loop): never raises, counts what it cannot use."""
        try:
            self.handle_frame(msg.arbitration_id, bytes(msg.data), msg.is_extended_id,
                              self.real_clock())
        except Exception as exc:  # a bad frame must never take the packs off the bus
            self.bad_frames["error"] += 1
            log.debug("frame %r: %s", msg, exc)

    def handle_frame(self, can_id: int, data: bytes, extended: bool, real: float) -> None:
        if not extended:
            return  # 11-bit frames are not J1939; not ours to judge
        if can_id & 0xFF != STATION_SA:
            return  # another node's frame, or our own echoed by udp_multicast
        try:
            dec = self.protocol.decode(can_id, data)
        except FrameError as exc:
            self.bad_frames[exc.kind] += 1
            return
        if dec.pgn == self._request_pgn:
            self._answer_request(int(dec.signals["RequestedPgn"]), dec.destination)
            return
        if dec.pgn != self._control_pgn:
            return
        da = -1 if dec.destination is None else dec.destination
        pack = self.model.can_packs().get(da)
        if pack is None or self.model.faults.can_deaf(da):
            return  # nobody at that address right now, or the network is down
        s = dec.signals
        pack.apply_control(
            int(s["ControlCommand"]),
            float(s["ChargeCurrentLimit"]),
            float(s["ChargeVoltageLimit"]),
            int(s["ControlCounter"]),
            real,
        )
        self.controls += 1
