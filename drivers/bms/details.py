"""Asks the packs for what they send only on request in a J1939-21 transport: the nameplate
text once per pack, every cell voltage and temperature at a slow period, and the car's VIN
when the station has none.

A J1939 Request addressed to the pack (or the bay, for the VIN) is answered in connection
mode, RTS/CTS to the station (drivers/bms/canbus.py takes it). Asked: a pack the station
hears at a location the PLC shows occupied, once it is identified (PackIdentity's serial):
at once for a pack not asked yet or another pack there (another serial); again after
`retry_s` while unanswered; its cells again every `cells_period_s` once answered. Bus load:
a cell voltage transfer is 1 RTS + 35 packets + 3 CTS + 1 EndOfMsgAck, temperatures 18
packets: at the default 30 s for 23 packs about 80 frames/s, a few per cent of 250 kbit/s.
"""

from __future__ import annotations

from collections.abc import Callable

from drivers.bms.adapter import (
    TEMPS_MESSAGE,
    TEXT_MESSAGE,
    VIN_MESSAGE,
    VOLTAGES_MESSAGE,
    BmsAdapter,
)
from drivers.bms.protocol import VEHICLE_PACK_SA
from station.image import Location, PackReport, ProcessImage

CELLS_PERIOD_S = 30.0
RETRY_S = 5.0

SendRequest = Callable[[int, int], None]  # (requested PGN, destination address)


def _heard(rep: PackReport, name: str) -> float | None:
    data = {TEXT_MESSAGE: rep.nameplate, VOLTAGES_MESSAGE: rep.cell_voltages,
            TEMPS_MESSAGE: rep.cell_temps}[name]
    return None if data is None else data.at


class DetailRequester:
    """Decides, at each scan, which Requests for pack details go out (see the module)."""

    def __init__(self, adapter: BmsAdapter, send_request: SendRequest, *,
                 cells_period_s: float = CELLS_PERIOD_S, retry_s: float = RETRY_S) -> None:
        self.adapter = adapter
        self.send_request = send_request
        self.cells_period_s = cells_period_s
        self.retry_s = retry_s
        self.sent = 0
        self._asked: dict[tuple[Location, str], tuple[int, float]] = {}  # -> (serial, t)
        self._vin_asked: float | None = None
        self._pgns = {name: adapter.detail_pgn(name)
                      for name in (TEXT_MESSAGE, VOLTAGES_MESSAGE, TEMPS_MESSAGE)}
        self._vin_pgn = adapter.protocol.pgn_of(VIN_MESSAGE)

    def tick(self, image: ProcessImage, now: float) -> int:
        """Send the Requests due now; how many went out."""
        sent = 0
        for loc, rep in image.packs.items():
            if rep.serial is None or not image.pack_present(loc):
                continue
            for name, pgn in self._pgns.items():
                if self._due(loc, rep, name, now):
                    self._asked[loc, name] = (rep.serial, now)
                    self.send_request(pgn, self.adapter.address_of(loc))
                    sent += 1
        for key in [k for k in self._asked if k[0] not in image.packs]:
            del self._asked[key]  # a pack gone: the next one there is asked afresh
        p = image.plc
        if image.vehicle_vin is None and p.get("vehicle_present") and p.get("vehicle_token"):
            if self._vin_asked is None or now - self._vin_asked >= self.retry_s:
                self._vin_asked = now
                self.send_request(self._vin_pgn, VEHICLE_PACK_SA)
                sent += 1
        elif not p.get("vehicle_present"):
            self._vin_asked = None
        self.sent += sent
        return sent

    def _due(self, loc: Location, rep: PackReport, name: str, now: float) -> bool:
        asked = self._asked.get((loc, name))
        if asked is None or asked[0] != rep.serial:
            return True
        heard = _heard(rep, name)
        if heard is not None and heard >= asked[1]:  # answered
            return name != TEXT_MESSAGE and now - heard >= self.cells_period_s
        return now - asked[1] >= self.retry_s


