"""The BMS adapter: decoded pack messages in the DBC's words -> the process image in the core's.

This is the one place that knows both vocabularies: which DBC message carries which kind
of pack data (`PackData`), which fault bit means which `PackFault`, how the value tables
name pack states and chemistries, and which source address is which `Location`. The core
sees locations, kinds and faults only; the value tables, periods and timeouts are read from
the DBC (through `PackProtocol`), never retyped here.

It also takes the vehicle's VIN (J1939-71 Vehicle Identification, reassembled from its BAM
by the pack bus) into `image.vehicle_vin` / `vehicle_vin_at`, on the same terms as pack
data: only from the bay's address, only while the PLC shows a vehicle there.

And the pack details that come on request in a J1939-21 transport (`DETAIL_MESSAGES`): the
nameplate text, every cell voltage and every cell temperature, into `PackReport.nameplate`,
`cell_voltages` and `cell_temps`. Every value is bounded (a message with one out of bounds
is dropped whole, what was heard before stays); the arrays are checked against the pack's
own summary where that is cheap (cell count against PackLimits, the hottest cell against
PackStatus, the cell voltage extremes against PackCells): a mismatch is counted and
logged, the data kept. Nothing the station decides reads them: they are for people.
"""

from __future__ import annotations

import re
from typing import Any

import structlog

from drivers.bms.protocol import (
    MAX_RACK_SLOTS,
    RACK_SA_BASE,
    VEHICLE_PACK_SA,
    Decoded,
    PackProtocol,
    rack_sa,
)
from drivers.ratelimit import RateLimitedWarnings
from station.image import (
    BAY,
    CellReadings,
    Location,
    PackData,
    PackFault,
    PackNameplate,
    PackReport,
    PackState,
    PackTimeouts,
    ProcessImage,
)
from station.pack_commands import PackCommandKind

# DBC message -> the kind of pack data it carries (each kind has its own timeout).
MESSAGE_KINDS: dict[str, PackData] = {
    "PackIdentity": PackData.IDENTITY,
    "PackHealth": PackData.HEALTH,
    "PackStatus": PackData.STATUS,
    "PackCells": PackData.CELLS,
    "PackLimits": PackData.LIMITS,
}
KIND_MESSAGES: dict[PackData, str] = {kind: name for name, kind in MESSAGE_KINDS.items()}
NO_FAULTS: frozenset[PackFault] = frozenset()

# PackCells fault bit (DBC signal) -> what the core calls it.
FAULT_SIGNALS: dict[str, PackFault] = {
    "FaultOverTemp": PackFault.OVER_TEMP,
    "FaultOverVoltage": PackFault.OVER_VOLTAGE,
    "FaultUnderVoltage": PackFault.UNDER_VOLTAGE,
    "FaultInsulation": PackFault.INSULATION,
    "ThermalAlarm": PackFault.THERMAL_ALARM,
    "FaultInternal": PackFault.INTERNAL,
}

VIN_MESSAGE = "VehicleIdentification"
VIN_SIGNAL = "Vin"
VIN_DELIMITER_SIGNAL = "VinDelimiter"
VIN_DELIMITER = "delimiter"  # its name in the DBC's value table ('*' ends a J1939 text)
# ISO 3779: 17 characters, digits and capitals except I, O and Q (read as 1 and 0)
VIN_PATTERN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")

log = structlog.get_logger(__name__)

TEXT_MESSAGE = "PackIdentityText"
VOLTAGES_MESSAGE = "PackCellVoltages"
TEMPS_MESSAGE = "PackCellTemperatures"
DETAIL_MESSAGES = (TEXT_MESSAGE, VOLTAGES_MESSAGE, TEMPS_MESSAGE)
TEXT_SIGNALS = ("Manufacturer", "Model", "SerialText")
CELL_V_BOUNDS = (0.0, 5.0)  # V: outside, the message is not a cell reading
CELL_T_BOUNDS = (-40.0, 150.0)  # degC
# How far the arrays may stray from the pack's own summary frames before it is a mismatch:
# PackStatus rounds to 1 degC and either may be a few hundred ms older than the other.
TEMP_TOLERANCE_C = 3.0
VOLTAGE_TOLERANCE_V = 0.05
PRINTABLE = re.compile(r"[\x20-\x7e]*")

STAT_KEYS = (
    "applied", "not_a_pack", "not_pack_data", "no_such_slot", "location_empty",
    "vin_applied",  # a VIN set into the image
    "vin_invalid",  # not 17 ISO 3779 characters, or not ended by the delimiter
    "vin_wrong_address",  # a VI from any address but the bay's
    "vin_no_vehicle",  # a VI while the PLC shows no vehicle (with a reader token)
    "detail_applied",  # a nameplate or cell array set into the image
    "text_invalid",  # a nameplate with a character that is not printable ASCII
    "cells_invalid",  # a cell array with a count or a value out of bounds
    "cells_count_mismatch",  # the array's count is not PackLimits' CellCount
    "cells_voltage_mismatch",  # the array's extremes are not PackCells' (beyond tolerance)
    "cells_temp_mismatch",  # the hottest cell is not PackStatus' MaxCellTemp (tolerance)
)


class BmsAdapter:
    """Folds decoded BMS messages into a `ProcessImage`; maps addresses to locations.

    Construction checks the DBC against what the adapter and the core need (every kind's
    message with a timeout, every fault bit, every pack state and command name in the value
    tables) and raises ValueError naming what is missing: a DBC the station cannot read
    stops it at start-up, not at the first odd frame.
    """

    def __init__(self, protocol: PackProtocol) -> None:
        self.protocol = protocol
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._limited = RateLimitedWarnings(log, 1.0)
        self._detail_pgns = {name: protocol.pgn_of(name) for name in DETAIL_MESSAGES}
        # every pack address's location, built once: looked up for every frame
        self._locations: dict[int, Location] = {VEHICLE_PACK_SA: BAY, **{
            rack_sa(n): Location.rack(n) for n in range(1, MAX_RACK_SLOTS + 1)}}
        self._chemistry = protocol.choices("PackIdentity", "Chemistry")
        known_states = {s.value for s in PackState}
        self._states: dict[int, PackState] = {}
        for code, name in protocol.choices("PackCells", "PackState").items():
            if name not in known_states:
                raise ValueError(f"PackCells.PackState: value {code} {name!r} is no PackState")
            self._states[code] = PackState(name)
        commands = protocol.codes("PackControl", "ControlCommand")
        missing = [k.value for k in PackCommandKind if k.value not in commands]
        if missing:
            raise ValueError(f"PackControl.ControlCommand: no value for {', '.join(missing)}")
        self.command_codes: dict[PackCommandKind, int] = {
            k: commands[k.value] for k in PackCommandKind
        }
        cells = {s.name for s in protocol.message("PackCells").signals}
        missing = [n for n in FAULT_SIGNALS if n not in cells]
        if missing:
            raise ValueError(f"PackCells: no fault bit {', '.join(missing)}")
        self._timeouts = PackTimeouts(**{
            kind.value: self._timeout(name) for name, kind in MESSAGE_KINDS.items()
        })
        self._pgns = {kind: protocol.pgn_of(name) for kind, name in KIND_MESSAGES.items()}
        period = protocol.period_s("PackControl")
        if period is None:
            raise ValueError("PackControl: the DBC gives no GenMsgCycleTime")
        self._control_period = period
        self._vin_delimiter = self._vin_vocabulary()
        self._control_timeout = self._timeout("PackControl")
        if self._control_timeout <= self._control_period:
            raise ValueError(f"PackControl: timeout {self._control_timeout} s not above its "
                             f"period {self._control_period} s")

    def _vin_vocabulary(self) -> int:
        """Check the DBC's Vehicle Identification; the code of its delimiter ('*')."""
        try:
            msg = self.protocol.message(VIN_MESSAGE)
        except KeyError:
            raise ValueError(f"the DBC has no {VIN_MESSAGE} message") from None
        names = {s.name for s in msg.signals}
        missing = [n for n in (VIN_SIGNAL, VIN_DELIMITER_SIGNAL) if n not in names]
        if missing:
            raise ValueError(f"{VIN_MESSAGE}: no signal {', '.join(missing)}")
        try:
            return self.protocol.codes(VIN_MESSAGE, VIN_DELIMITER_SIGNAL)[VIN_DELIMITER]
        except KeyError:
            raise ValueError(f"{VIN_MESSAGE}.{VIN_DELIMITER_SIGNAL}: no value "
                             f"{VIN_DELIMITER!r}") from None

    def _timeout(self, message: str) -> float:
        t = self.protocol.timeout_s(message)
        if t is None:
            raise ValueError(f"{message}: the DBC gives no RxTimeoutMs")
        return t

    # ---- vocabulary ---------------------------------------------------------------------
    def timeouts(self) -> PackTimeouts:
        """Freshness limit of each kind of pack data, from the DBC's RxTimeoutMs."""
        return self._timeouts

    def control_period_s(self) -> float:
        """How often the station sends PackControl to each pack it charges (the DBC's
        GenMsgCycleTime of PackControl); a pack stops charging after control_timeout_s()."""
        return self._control_period

    def control_timeout_s(self) -> float:
        """After how long without PackControl a pack stops charging (RxTimeoutMs)."""
        return self._control_timeout

    def location_of(self, sa: int) -> Location | None:
        """Where the pack at a source address sits; None for an address that is no pack's."""
        return self._locations.get(sa)

    def address_of(self, location: Location) -> int:
        """The source address of the pack at a location."""
        if location.is_bay:
            return VEHICLE_PACK_SA
        if location.slot > MAX_RACK_SLOTS:
            raise ValueError(f"{location}: no address (rack slots go from 1 to "
                             f"{MAX_RACK_SLOTS}, at {RACK_SA_BASE:#x} up)")
        return rack_sa(location.slot)

    @staticmethod
    def kind_of(message: str) -> PackData | None:
        """The kind of pack data a DBC message carries; None for one that carries none."""
        return MESSAGE_KINDS.get(message)

    @staticmethod
    def message_of(kind: PackData) -> str:
        """The DBC message that carries a kind of pack data."""
        return KIND_MESSAGES[kind]

    def pgn_of(self, kind: PackData) -> int:
        """The PGN of the message that carries a kind of pack data (for a J1939 Request)."""
        return self._pgns[kind]

    def chemistry_name(self, code: int) -> str:
        """The DBC's name of a chemistry code; `code_0x..` for a code it does not name."""
        return self._chemistry.get(code, f"code_{code:#x}")

    # ---- folding messages into the image ------------------------------------------------
    def apply(self, image: ProcessImage, msg: Decoded, t: float) -> Location | None:
        """Fold one decoded BMS message, received at monotonic time t, into the image.

        Returns the location it is about; None when nothing was folded in (each counted in
        `stats`): a frame from an address that is no pack location, from a rack slot the
        PLC does not report, from a location the PLC shows empty (a pack cannot talk from
        where there is none: whatever sends it is not to be acted on), or a message that
        carries no pack data. A VehicleIdentification sets the vehicle's VIN instead
        (`_apply_vin`) and returns BAY when it did.

        A report is never started anew because another identity arrives: what is heard
        stays, and every identity, rating set and SOC heard is latched until the core's
        next scan, which judges it against the identity bound to the location
        (station/pack_trust.py). A report starts anew only once the location was empty.
        """
        if msg.name == VIN_MESSAGE:
            return self._apply_vin(image, msg, t)
        loc = self.location_of(msg.source)
        if loc is None:
            self.stats["not_a_pack"] += 1
            return None
        kind = MESSAGE_KINDS.get(msg.name)
        if kind is None:
            if msg.name in self._detail_pgns:
                return self._apply_detail(image, loc, msg, t)
            self.stats["not_pack_data"] += 1
            return None
        if not image.pack_present(loc):
            if not loc.is_bay and loc.slot > image.rack_slot_count():
                self.stats["no_such_slot"] += 1
            else:
                self.stats["location_empty"] += 1
            image.packs.pop(loc, None)  # what was heard there belongs to a pack that left
            return None
        s = msg.signals
        rep = image.packs.get(loc)
        if rep is None:
            rep = PackReport(location=loc, first_seen=t)
            image.packs[loc] = rep
        if kind is PackData.IDENTITY:
            rep.serial = int(s["PackSerial"])
            rep.family = int(s["PackFamily"])
            rep.chemistry = self.chemistry_name(int(s["Chemistry"]))
            rep.rated_energy_kwh = float(s["RatedEnergy"])
            ident = rep.identity
            if ident is not None:
                rep.identities_latched |= {ident}
        elif kind is PackData.HEALTH:
            rep.cycle_count = int(s["CycleCount"])
            rep.soh_pct = float(s["SOH"])
            rep.rated_capacity_ah = float(s["RatedCapacity"])
        elif kind is PackData.STATUS:
            rep.soc_pct = round(float(s["SOC"]), 1)
            rep.peak_soc_pct = (rep.soc_pct if rep.peak_soc_pct is None
                                else max(rep.peak_soc_pct, rep.soc_pct))
            rep.voltage_v = float(s["PackVoltage"])
            rep.current_a = round(float(s["PackCurrent"]), 1)
            rep.min_cell_temp_c = float(s["MinCellTemp"])
            rep.max_cell_temp_c = float(s["MaxCellTemp"])
            peak = rep.peak_cell_temp_c
            rep.peak_cell_temp_c = (rep.max_cell_temp_c if peak is None
                                    else max(peak, rep.max_cell_temp_c))
        elif kind is PackData.CELLS:
            rep.max_cell_v = float(s["MaxCellVoltage"])
            rep.min_cell_v = float(s["MinCellVoltage"])
            rep.insulation_kohm = float(s["InsulationResistance"])
            flagged = [f for name, f in FAULT_SIGNALS.items() if s.get(name)]
            rep.faults = frozenset(flagged) if flagged else NO_FAULTS
            rep.faults_latched |= rep.faults
            rep.state = self._states.get(int(s["PackState"]), PackState.UNKNOWN)
        else:  # PackData.LIMITS
            rep.max_charge_voltage_v = float(s["MaxChargeVoltage"])
            rep.max_charge_current_a = float(s["MaxChargeCurrent"])
            rep.cell_count = int(s["CellCount"])
            rep.max_cell_charge_v = float(s["MaxCellChargeVoltage"])
            ratings = rep.ratings
            if ratings is not None:
                rep.ratings_latched |= {ratings}
        rep.last_seen[kind] = t
        self.stats["applied"] += 1
        return loc

    def detail_pgn(self, name: str) -> int:
        """The PGN of a detail message (DETAIL_MESSAGES), for a J1939 Request."""
        return self._detail_pgns[name]

    def _apply_detail(self, image: ProcessImage, loc: Location, msg: Decoded, t: float
                      ) -> Location | None:
        """A nameplate or a cell array into the pack's report (see the module's doc)."""
        if not image.pack_present(loc):
            self.stats["location_empty"] += 1
            return None
        rep = image.packs.get(loc)
        if rep is None:
            rep = PackReport(location=loc, first_seen=t)
            image.packs[loc] = rep
        s = msg.signals
        where = f"{loc}"
        if msg.name == TEXT_MESSAGE:
            texts = [s.get(n) for n in TEXT_SIGNALS]
            if not all(isinstance(x, str) and PRINTABLE.fullmatch(x) for x in texts):
                self.stats["text_invalid"] += 1
                self._limited.warning("can.pack_text_invalid", location=where)
                return None
            rep.nameplate = PackNameplate(str(texts[0]), str(texts[1]), str(texts[2]), t)
        elif msg.name == VOLTAGES_MESSAGE:
            cells = self._cells(s, "CellCount", "CellVoltages", CELL_V_BOUNDS, t, where)
            if cells is None:
                return None
            if rep.cell_count is not None and len(cells.values) != rep.cell_count:
                self._mismatch("cells_count_mismatch", where, array=len(cells.values),
                               limits=rep.cell_count)
            if rep.max_cell_v is not None and rep.min_cell_v is not None and (
                    abs(cells.high - rep.max_cell_v) > VOLTAGE_TOLERANCE_V
                    or abs(cells.low - rep.min_cell_v) > VOLTAGE_TOLERANCE_V):
                self._mismatch("cells_voltage_mismatch", where, array=(cells.low, cells.high),
                               pack_cells=(rep.min_cell_v, rep.max_cell_v))
            rep.cell_voltages = cells
        else:
            cells = self._cells(s, "SensorCount", "CellTemperatures", CELL_T_BOUNDS, t, where)
            if cells is None:
                return None
            if rep.max_cell_temp_c is not None and \
                    abs(cells.high - rep.max_cell_temp_c) > TEMP_TOLERANCE_C:
                self._mismatch("cells_temp_mismatch", where, array=cells.high,
                               pack_status=rep.max_cell_temp_c)
            rep.cell_temps = cells
        self.stats["detail_applied"] += 1
        return loc

    def _cells(self, s: dict[str, Any], count_sig: str, array_sig: str,
               bounds: tuple[float, float], t: float, where: str) -> CellReadings | None:
        """The first `count` elements, each within bounds, the rest not available; None
        (counted, logged) for anything else."""
        n = int(s[count_sig])
        array = s[array_sig]
        head, tail = array[:n], array[n:]
        lo, hi = bounds
        if not 1 <= n <= len(array) or any(v is not None for v in tail) or \
                any(v is None or not lo <= v <= hi for v in head):
            self.stats["cells_invalid"] += 1
            self._limited.warning("can.pack_cells_invalid", location=where, message=array_sig,
                                  count=n)
            return None
        values = tuple(float(v) for v in head)
        return CellReadings(values, min(values), max(values), t)

    def _mismatch(self, key: str, where: str, **detail: Any) -> None:
        self.stats[key] += 1
        self._limited.warning(f"can.pack_{key}", location=where, **detail)

    def _apply_vin(self, image: ProcessImage, msg: Decoded, t: float) -> Location | None:
        """The vehicle's VIN into the image; BAY when it was taken, None when dropped.

        Taken only from the bay's address (the vehicle's BMS) and only while the PLC shows
        a vehicle with a reader token (its pack may be out mid-swap: the VIN is the car's,
        not the pack's). Nothing on the bus is authenticated: a VIN decides nothing that
        the PLC's view of the platform does not back."""
        if msg.source != VEHICLE_PACK_SA:
            self.stats["vin_wrong_address"] += 1
            return None
        if image.plc_read_at is None or not image.plc.get("vehicle_present") or \
                not image.plc.get("vehicle_token"):
            self.stats["vin_no_vehicle"] += 1
            return None
        vin = msg.signals.get(VIN_SIGNAL)
        if not isinstance(vin, str) or VIN_PATTERN.fullmatch(vin) is None or \
                msg.signals.get(VIN_DELIMITER_SIGNAL) != self._vin_delimiter:
            self.stats["vin_invalid"] += 1
            return None
        image.vehicle_vin = vin
        image.vehicle_vin_at = t
        self.stats["vin_applied"] += 1
        return BAY


def pack_summary(rep: PackReport, now: float) -> dict[str, Any]:
    """A pack's details for the operator's status: what it last said (SOC, SOH, its cells'
    temperature extremes, state), nameplate, cell count, the extremes of its cell voltages
    and temperatures from the transport, and how old they are (None: never heard)."""
    v, tc, plate = rep.cell_voltages, rep.cell_temps, rep.nameplate
    return {
        "location": str(rep.location), "serial": rep.serial,
        "chemistry": rep.chemistry, "family": rep.family,
        "soc_pct": rep.soc_pct, "soh_pct": rep.soh_pct,
        "min_cell_temp_c": rep.min_cell_temp_c, "max_cell_temp_c": rep.max_cell_temp_c,
        "state": str(rep.state) if rep.state is not None else None,
        "manufacturer": plate.manufacturer if plate else None,
        "model": plate.model if plate else None,
        "serial_text": plate.serial if plate else None,
        "nameplate_age_s": round(now - plate.at, 1) if plate else None,
        "cells": len(v.values) if v else None,
        "cell_v_min": v.low if v else None, "cell_v_max": v.high if v else None,
        "cell_voltages_age_s": round(now - v.at, 1) if v else None,
        "temp_sensors": len(tc.values) if tc else None,
        "cell_temp_min_c": tc.low if tc else None, "cell_temp_max_c": tc.high if tc else None,
        "cell_temps_age_s": round(now - tc.at, 1) if tc else None,
    }
