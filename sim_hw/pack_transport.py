"""The packs' (and the car's) side of J1939-21 transport in the simulator: the messages
longer than a frame that a BMS sends on request, and how they travel.

What a pack sends on request (a J1939 Request for its PGN), never on a period:
- PackIdentityText: its nameplate (manufacturer, model, serial as text);
- PackCellVoltages, PackCellTemperatures: every cell's voltage and temperature, spread
  between the pack model's extremes, so that the lowest and highest are exactly what
  PackCells and PackStatus report (the station cross-checks them).
The car's BMS sends its VIN (VehicleIdentification) the same way when asked at the bay's
address (its broadcasts on arrival and at its period are sim_hw/can_packs.py's).

How (J1939-21): a Request addressed to the node is answered in connection mode, RTS/CTS
to the requester (`drivers.bms.j1939_tp.ConnectionSender`: the node waits for each CTS,
sends the packets asked for, waits for EndOfMsgAck, gives up at T3/T4 with an abort, and
ends on the requester's abort); a Request to every node is answered with a BAM, its packets
`gap_s()` apart. J1939-21 allows one connection per node and requester at a time: what is
asked meanwhile is queued and sent after it (a PGN already queued is not queued twice,
counted `busy`); a BAM asked for while one of the node's runs is not sent (`busy`).

Fault (for the station's abort paths): `stall_after[sa] = n` makes the node at `sa` stop
sending after n TP.DT packets of each connection, as a BMS that resets mid-transfer; the
station's T1 then aborts the connection. `skip_packets[sa] = {n, ...}` makes it leave those
packets out the first time it sends them (a frame lost on the bus): the station asks for
them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from drivers.bms import j1939_tp
from drivers.bms.adapter import (
    CELL_T_BOUNDS,
    CELL_V_BOUNDS,
    TEMPS_MESSAGE,
    TEXT_MESSAGE,
    VOLTAGES_MESSAGE,
)
from drivers.bms.protocol import PackProtocol, split_id
from sim_hw.packs import SimPack

DETAIL_MESSAGES = (TEXT_MESSAGE, VOLTAGES_MESSAGE, TEMPS_MESSAGE)
MANUFACTURER = "SwapSim Cells"
DT_GAP_S = 0.001  # real time between a connection's packets: J1939-21 sets no minimum; a
#                   little keeps a burst of 35 packets from flooding a slow (VM) bus

SendFrame = Callable[[int, bytes, str, int], None]  # (can id, data, what, source)


def _spread(rng: random.Random, n: int, lo: float, hi: float, digits: int) -> list[float]:
    """n values in lo..hi, the first lowest at lo and one at hi exactly."""
    if n == 1:
        return [round(hi, digits)]
    values = [round(lo + (hi - lo) * rng.random(), digits) for _ in range(n)]
    a, b = rng.sample(range(n), 2)
    values[a], values[b] = round(lo, digits), round(hi, digits)
    return [min(max(v, round(lo, digits)), round(hi, digits)) for v in values]


def pack_details(pack: SimPack) -> dict[str, dict[str, Any]]:
    """The long messages of one pack, as DBC signal values."""
    rng = random.Random(pack.serial)  # the same cells for the same pack, call after call
    n = pack.series_cells
    vlo, vhi = CELL_V_BOUNDS
    volts = _spread(rng, n, max(vlo, pack.min_cell_v), min(vhi, pack.max_cell_v), 3)
    tlo, thi = CELL_T_BOUNDS
    temps = _spread(rng, n, min(thi, max(tlo, round(pack.min_cell_temp_c))),
                    min(thi, max(tlo, round(pack.max_cell_temp_c))), 0)
    return {
        TEXT_MESSAGE: {"Manufacturer": MANUFACTURER,
                       "Model": f"{pack.chemistry.upper()}-F{pack.family}-{n}S"[:16],
                       "SerialText": f"SIM-{pack.serial:012d}"[:24]},
        VOLTAGES_MESSAGE: {"CellCount": n, "CellVoltages": volts},
        TEMPS_MESSAGE: {"SensorCount": n, "CellTemperatures": temps},
    }


class PackTransport:
    """Sends long messages for the simulated nodes: RTS/CTS to one requester, or a BAM."""

    def __init__(
        self,
        protocol: PackProtocol,
        send_frame: SendFrame,
        clock: Callable[[], float],
        *,
        bam_gap_s: Callable[[], float] = lambda: j1939_tp.BAM_GAP_MIN_S,
        silent: Callable[[int], bool] = lambda sa: False,
        dt_gap_s: float = DT_GAP_S,
    ) -> None:
        self.protocol = protocol
        self.send_frame = send_frame
        self.clock = clock
        self.bam_gap_s = bam_gap_s
        self.silent = silent
        self.dt_gap_s = dt_gap_s
        self.stall_after: dict[int, int] = {}  # source -> TP.DT packets before it stalls
        self.skip_packets: dict[int, set[int]] = {}  # source -> packets lost once
        self.stats: Counter[str] = Counter()
        self.last_error: str | None = None
        self._pgns = {protocol.pgn_of(name): name for name in DETAIL_MESSAGES}
        self._conns: dict[tuple[int, int], tuple[j1939_tp.ConnectionSender, asyncio.Event]] = {}
        # (source, requester) -> what is to be sent to it, the one under way first
        self._queued: dict[tuple[int, int], list[tuple[str, int, bytes]]] = {}
        self._bams: set[int] = set()  # sources sending a BAM now
        self._tasks: set[asyncio.Task[None]] = set()

    def detail_name(self, pgn: int) -> str | None:
        """The detail message of a PGN (None: not one this module sends)."""
        return self._pgns.get(pgn)

    def answer(self, name: str, values: dict[str, Any], sa: int, requester: int,
               addressed: bool) -> bool:
        """Send `name` from `sa`: RTS/CTS to `requester` when the Request was addressed to
        `sa`, else a BAM. False when it is not sent (one already under way, or the values
        do not encode)."""
        try:
            can_id, data = self.protocol.encode(name, values, sa)
        except ValueError as exc:
            self.stats["encode_errors"] += 1
            self.last_error = f"{name} from {sa:#04x}: {exc}"
            return False
        pgn = split_id(can_id)[1]
        if addressed:
            key = (sa, requester)
            queue = self._queued.setdefault(key, [])
            if any(q[1] == pgn for q in queue):
                self.stats["busy"] += 1
                return False
            queue.append((name, pgn, data))
            if len(queue) == 1:  # nothing under way to this requester: start now
                self._spawn(self._connections(key))
        else:
            if sa in self._bams:
                self.stats["busy"] += 1
                return False
            self._bams.add(sa)
            self._spawn(self._bam(sa, name, j1939_tp.bam_frames(pgn, data, sa)))
        return True

    def handle(self, can_id: int, data: bytes) -> bool:
        """A frame off the bus: True when it is a TP.CM for one of our connections (it is
        taken: CTS, EndOfMsgAck or abort), False for anything else."""
        if (can_id >> 16) & 0x3FF != j1939_tp.TP_CM_PGN >> 8:
            return False
        da, source = (can_id >> 8) & 0xFF, can_id & 0xFF
        conn = self._conns.get((da, source))
        if conn is None:
            return False
        sender, event = conn
        for frame in sender.feed(data, self.clock()):
            self._send(frame, da)
        event.set()
        return True

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._conns.clear()
        self._queued.clear()
        self._bams.clear()

    # ------------------------------------------------------------------ internals
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, frame: j1939_tp.Frame, sa: int) -> None:
        self.send_frame(frame[0], frame[1], "TP", sa)

    async def _connections(self, key: tuple[int, int]) -> None:
        """The queued messages to one requester, one connection after the other."""
        queue = self._queued[key]
        try:
            while queue:
                name, pgn, data = queue[0]
                sender = j1939_tp.ConnectionSender(pgn, data, key[0], key[1])
                event = asyncio.Event()
                self._conns[key] = (sender, event)
                await self._connection(key, sender, event, name)
                queue.pop(0)
        finally:
            self._queued.pop(key, None)

    async def _connection(self, key: tuple[int, int], sender: j1939_tp.ConnectionSender,
                          event: asyncio.Event, name: str) -> None:
        sa = key[0]
        stall = self.stall_after.get(sa)
        sent = 0
        try:
            self.stats["rts_sent"] += 1
            for cm in sender.start(self.clock()):
                self._send(cm, sa)
            while not sender.finished:
                while (dt := sender.next_packet(self.clock())) is not None:
                    if (stall is not None and sent >= stall) or self.silent(sa):
                        self.stats["stalled"] += 1
                        return  # gone quiet mid-transfer: no abort, nothing more
                    skip = self.skip_packets.get(sa)
                    if skip and dt[1][0] in skip:
                        skip.discard(dt[1][0])  # lost this once
                        self.stats["skipped"] += 1
                    else:
                        self._send(dt, sa)
                    sent += 1
                    await asyncio.sleep(self.dt_gap_s)
                for cm in sender.poll(self.clock()):
                    self._send(cm, sa)
                if sender.finished:
                    break
                event.clear()
                wait = (sender.deadline or self.clock()) - self.clock()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), max(0.0, wait) + 0.001)
            if sender.state == "done":
                self.stats["completed"] += 1
                self.stats[f"completed:{name}"] += 1
            else:
                self.stats[f"aborted_{sender.aborted_by}_{sender.abort_reason}"] += 1
        finally:
            self._conns.pop(key, None)

    async def _bam(self, sa: int, name: str, frames: list[j1939_tp.Frame]) -> None:
        try:
            gap = self.bam_gap_s()
            last: float | None = None
            for frame in frames:
                if last is not None:
                    while (left := last + gap - self.clock()) > 0:
                        await asyncio.sleep(left)
                if self.silent(sa):
                    return
                self._send(frame, sa)
                last = self.clock()
            self.stats["bams_sent"] += 1
            self.stats[f"bam:{name}"] += 1
        finally:
            self._bams.discard(sa)
