"""The pack CAN protocol: J1939-style frames described by a DBC file, coded with cantools.

Frames are matched by PGN, not by whole identifier, because the source address says where
a pack is connected (vehicle bay or rack slot) and a DBC carries one example address.
The protocol is data: a new pack vendor is a new DBC file with the same message names.
The DBC is the one source of the value tables (VAL_: chemistry codes, pack states, control
commands), the periods (GenMsgCycleTime) and the timeouts (RxTimeoutMs); read them through
`PackProtocol.choices`, `codes`, `period_s` and `timeout_s`, never retype them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cantools
from cantools.database.can import Database, Message

DEFAULT_DBC = "swap_pack.dbc"

STATION_SA = 0x56  # the station's charging controller (GB/T 27930 charger address)
VEHICLE_PACK_SA = 0xF4  # the pack in the vehicle's bay (GB/T 27930 BMS address)
RACK_SA_BASE = 0x80  # rack slot n (1-based) answers at RACK_SA_BASE + n - 1
MAX_RACK_SLOTS = 0x60

PDU1_LIMIT = 0xF0  # PF below 0xF0: destination-specific (PS byte is the destination)


class FrameError(ValueError):
    """A frame that cannot be decoded; `kind` is 'unknown_id' or 'bad_length' or 'bad_data'."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def rack_sa(slot: int) -> int:
    return RACK_SA_BASE + slot - 1


def slot_of_sa(sa: int) -> int | None:
    """Rack slot (1-based) of a source address, None if the address is not a rack slot."""
    if RACK_SA_BASE <= sa < RACK_SA_BASE + MAX_RACK_SLOTS:
        return sa - RACK_SA_BASE + 1
    return None


def split_id(can_id: int) -> tuple[int, int, int, int | None]:
    """29-bit identifier -> (priority, pgn, source address, destination or None)."""
    priority = (can_id >> 26) & 0x7
    dp = (can_id >> 24) & 0x3
    pf = (can_id >> 16) & 0xFF
    ps = (can_id >> 8) & 0xFF
    sa = can_id & 0xFF
    if pf < PDU1_LIMIT:
        return priority, (dp << 16) | (pf << 8), sa, ps
    return priority, (dp << 16) | (pf << 8) | ps, sa, None


def join_id(priority: int, pgn: int, sa: int, da: int | None = None) -> int:
    pf = (pgn >> 8) & 0xFF
    if pf < PDU1_LIMIT:
        if da is None:
            raise ValueError(f"PGN {pgn:#x} is destination-specific and needs a destination")
        pgn = (pgn & 0x3FF00) | da
    return ((priority & 0x7) << 26) | ((pgn & 0x3FFFF) << 8) | (sa & 0xFF)


@dataclass(frozen=True)
class Decoded:
    name: str
    pgn: int
    source: int
    destination: int | None
    signals: dict[str, Any]


class PackProtocol:
    """Encode and decode the pack messages of one DBC file."""

    def __init__(self, dbc_path: str | Path | None = None) -> None:
        if dbc_path is None:
            text = resources.files("drivers.bms.dbc").joinpath(DEFAULT_DBC).read_text()
            loaded = cantools.database.load_string(text, database_format="dbc")
            assert isinstance(loaded, Database)
            self.db: Database = loaded
        else:
            db = cantools.database.load_file(str(dbc_path))
            if not isinstance(db, Database):
                raise ValueError(f"{dbc_path}: not a CAN database")
            self.db = db
        self._by_pgn: dict[int, Message] = {}
        self._fill_mask: dict[str, bytes] = {}
        self._choices: dict[tuple[str, str], dict[int, str]] = {}
        for msg in self.db.messages:
            _, pgn, _, _ = split_id(msg.frame_id)
            self._by_pgn[pgn] = msg
            self._fill_mask[msg.name] = _unused_bits(msg)
            for sig in msg.signals:
                if sig.choices:
                    self._choices[msg.name, sig.name] = {
                        int(code): str(name) for code, name in sig.choices.items()
                    }

    def message(self, name: str) -> Message:
        return self.db.get_message_by_name(name)

    def pgn_of(self, name: str) -> int:
        return split_id(self.message(name).frame_id)[1]

    def choices(self, message: str, signal: str) -> dict[int, str]:
        """The DBC value table (VAL_) of one signal: code -> name. KeyError if it has none."""
        table = self._choices.get((message, signal))
        if table is None:
            self.message(message).get_signal_by_name(signal)  # KeyError naming what is unknown
            raise KeyError(f"{message}.{signal}: the DBC gives no value table")
        return dict(table)

    def codes(self, message: str, signal: str) -> dict[str, int]:
        """The same value table the other way round: name -> code."""
        return {name: code for code, name in self.choices(message, signal).items()}

    def period_s(self, name: str) -> float | None:
        """How often the sender sends the message (GenMsgCycleTime); None: on event only."""
        ms = self.message(name).cycle_time
        return ms / 1000.0 if ms else None

    def timeout_s(self, name: str) -> float | None:
        """After how long without the message the receiver treats its data as missing
        (RxTimeoutMs); None when the DBC gives none."""
        msg = self.message(name)
        attrs = msg.dbc.attributes if msg.dbc is not None else {}
        attr = attrs.get("RxTimeoutMs")
        ms = int(attr.value) if attr is not None else 0
        return ms / 1000.0 if ms else None

    def decode(self, can_id: int, data: bytes | bytearray) -> Decoded:
        """Decode one frame; raises FrameError for unknown ids, bad lengths or bad data."""
        _, pgn, sa, da = split_id(can_id)
        msg = self._by_pgn.get(pgn)
        if msg is None:
            raise FrameError("unknown_id", f"unknown PGN {pgn:#06x} (id {can_id:#010x})")
        if len(data) != msg.length:
            raise FrameError(
                "bad_length", f"{msg.name}: {len(data)} bytes, expected {msg.length}"
            )
        try:
            signals = msg.decode(bytes(data), decode_choices=False, scaling=True)
        except Exception as exc:  # cantools raises several types on malformed payloads
            raise FrameError("bad_data", f"{msg.name}: {exc}") from exc
        assert isinstance(signals, dict)
        return Decoded(msg.name, pgn, sa, da, dict(signals))

    def encode(
        self, name: str, values: dict[str, Any], sa: int, da: int | None = None, priority: int = 6
    ) -> tuple[int, bytes]:
        """Encode one message -> (29-bit id, 8 data bytes); unused bits are sent as 1."""
        msg = self.message(name)
        data = bytearray(msg.encode(values, scaling=True, strict=True))
        for i, m in enumerate(self._fill_mask[name]):
            data[i] |= m
        _, pgn, _, _ = split_id(msg.frame_id)
        return join_id(priority, pgn, sa, da), bytes(data)


def _unused_bits(msg: Message) -> bytes:
    used = bytearray(msg.length)
    for sig in msg.signals:
        for bit in range(sig.start, sig.start + sig.length):  # little-endian signals only
            used[bit // 8] |= 1 << (bit % 8)
    return bytes(~b & 0xFF for b in used)
