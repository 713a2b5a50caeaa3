"""The one sender of PackControl and J1939 Request frames: the core's pack commands on CAN.

`PackCommander.send` turns a `PackCommand` into PackControl to the pack's address, with the
rolling ControlCounter the DBC describes (kept per destination: each pack sees 0, 1, 2, ...
250, 0 in the frames addressed to it). `PackCommander.request` turns a `PackRequest` into
one J1939 Request per kind of data asked for, at most one per destination and PGN every
REQUEST_REPEAT_S, so that a pack heard at every frame but not yet identified is not
flooded with requests. A pack that answers a Request with a NACK (it does not send that
PGN) is counted per address and PGN (`refusals`) and logged the first time: the Request is
answered, nothing more is waited for; the core may ask again, at the same pace.

The packs' side of PackControl (docs/can-protocol.md, "PackControl on the pack side") is
what this sender relies on: every frame carries the command and the limits in force (the
station never sends `keep`), the counter never repeats a value to a destination within a
run (so no frame of it is taken for a duplicate), and every pack it charges hears it at the
DBC's period, well inside the DBC's timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import structlog

from drivers.bms.adapter import BmsAdapter
from drivers.bms.canbus import GLOBAL_DA, PackBus
from station.image import Location, PackData
from station.pack_commands import PackCommand, PackRequest

log = structlog.get_logger(__name__)

REQUEST_REPEAT_S = 0.5  # at most one Request per (destination, PGN) this often
COUNTER_SIGNAL = ("PackControl", "ControlCounter")


class PackCommander:
    """Sends the core's pack commands and data requests on the pack bus, or on several:
    `routes` maps a pack's address to the bus that serves its location (an address no bus
    serves, and a Request to every pack, go out on every bus)."""

    def __init__(
        self,
        bus: PackBus,
        adapter: BmsAdapter,
        *,
        clock: Callable[[], float] = time.monotonic,
        request_repeat_s: float = REQUEST_REPEAT_S,
        routes: Mapping[int, PackBus] | None = None,
    ) -> None:
        self.bus = bus
        self.routes = dict(routes or {})
        # every bus once, in a stable order (the default bus first)
        self.buses: list[PackBus] = list({id(b): b for b in (bus, *self.routes.values())}
                                         .values())
        self.adapter = adapter
        self.request_repeat_s = request_repeat_s
        self._clock = clock
        counter = adapter.protocol.message(COUNTER_SIGNAL[0]).get_signal_by_name(
            COUNTER_SIGNAL[1])
        self.counter_max = int(counter.maximum if counter.maximum is not None else 250)
        self._counters: dict[int, int] = {}  # destination -> ControlCounter of its next frame
        self._requested: dict[tuple[int, int], float] = {}  # (destination, PGN) -> last sent
        self.refusals: dict[tuple[int, int], int] = {}  # (address, PGN) -> NACKs heard
        for b in self.buses:
            b.on_nack = self._refused

    def buses_for(self, da: int) -> list[PackBus]:
        """The bus(es) a frame to `da` goes out on."""
        if not self.routes:
            return [self.bus]
        routed = self.routes.get(da)
        return [routed] if routed is not None else self.buses

    def send(self, cmd: PackCommand) -> None:
        """PackControl to the pack at cmd.location. Bus errors are counted by the bus, not
        raised; a limit out of the DBC's range is the caller's bug and raises."""
        da = self.adapter.address_of(cmd.location)
        counter = self._counters.get(da, 0)
        values = {
            "ControlCommand": self.adapter.command_codes[cmd.command],
            "ChargeCurrentLimit": cmd.current_limit_a,
            "ChargeVoltageLimit": cmd.voltage_limit_v,
            "ControlCounter": counter,
        }
        for bus in self.buses_for(da):
            bus.send("PackControl", values, da=da)
        self._counters[da] = 0 if counter >= self.counter_max else counter + 1

    def request(self, req: PackRequest, now: float | None = None) -> int:
        """J1939 Request for each kind in req.kinds, to the pack at req.location (None:
        every pack, destination 0xFF). A (destination, PGN) asked for less than
        request_repeat_s ago is skipped. Returns how many Requests went out."""
        t = self._clock() if now is None else now
        da = GLOBAL_DA if req.location is None else self.adapter.address_of(req.location)
        sent = 0
        for kind in dict.fromkeys(req.kinds):  # each kind once, in the order asked
            pgn = self.adapter.pgn_of(kind)
            last = self._requested.get((da, pgn))
            if last is not None and t - last < self.request_repeat_s:
                continue
            self._requested[da, pgn] = t
            for bus in self.buses_for(da):
                bus.send("Request", {"RequestedPgn": pgn}, da=da)
            sent += 1
        return sent

    def _refused(self, source: int, pgn: int, control: str, t: float) -> None:
        """A pack's NACK (or other negative Acknowledgement) to one of our Requests."""
        key = (source, pgn)
        first = key not in self.refusals
        self.refusals[key] = self.refusals.get(key, 0) + 1
        if first:
            loc = self.adapter.location_of(source)
            kind = next((k for k in PackData if self.adapter.pgn_of(k) == pgn), None)
            log.warning("can.pack_does_not_send", source=f"{source:#04x}",
                        location=str(loc) if loc is not None else None, pgn=f"{pgn:#06x}",
                        message=self.adapter.message_of(kind) if kind else None,
                        control=control, t=t)

    def refused(self, location: Location | None, kind: PackData) -> int:
        """How many times the pack at `location` (None: any) refused a Request for `kind`."""
        pgn = self.adapter.pgn_of(kind)
        if location is None:
            return sum(n for (_, p), n in self.refusals.items() if p == pgn)
        return self.refusals.get((self.adapter.address_of(location), pgn), 0)
