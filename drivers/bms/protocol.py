"""The pack CAN protocol: J1939-style frames described by a DBC file, coded with cantools.

Frames are matched by PGN, not by whole identifier, because the source address says where
a pack is connected (vehicle bay or rack slot) and a DBC carries one example address.
The protocol is data: a new pack vendor is a new DBC file with the same message names.
The DBC is the one source of the value tables (VAL_: chemistry codes, pack states, control
commands), the periods (GenMsgCycleTime) and the timeouts (RxTimeoutMs); read them through
`PackProtocol.choices`, `codes`, `period_s` and `timeout_s`, never retype them.

A message longer than 8 bytes (VehicleIdentification, PackIdentityText, PackCellVoltages,
PackCellTemperatures) travels in a J1939-21 transport (drivers/bms/j1939_tp.py): a BAM to
every node or RTS/CTS to one; `encode_frames` splits it for a BAM, `decode_transfer`
decodes the reassembled payload, and `decode` refuses it as a single frame.

Two kinds of signal the DBC format has no word for, described by signal attributes:
- text (TextEncoding, e.g. "ascii"): a byte-aligned little-endian field whose first
  character is its lowest byte, decoded to and encoded from `str`; with TextPad (e.g. " ")
  a shorter text is padded on the right and the padding stripped when decoded;
- arrays (ArrayLength n, ArrayScale, ArrayOffset): a raw field of n equal unsigned
  elements, element i at bit start + i x (length / n), each scaled like a signal; decoded to
  and encoded from a tuple, an element of all ones (J1939 "not available") as None. Why not
  one signal per cell: 240 generated signals (Cell001..Cell120) would bloat the DBC and the
  contract and cost 240 signal decodes per message; one signal with three attributes keeps
  the DBC the one source of the layout, and a tool that does not know the attributes still
  sees the message, its length and a raw field.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cantools
from cantools.database.can import Database, Message

from drivers.bms import j1939_tp

DEFAULT_DBC = "swap_pack.dbc"

STATION_SA = 0x56  # the station's charging controller (GB/T 27930 charger address)
VEHICLE_PACK_SA = 0xF4  # the pack in the vehicle's bay (GB/T 27930 BMS address)
RACK_SA_BASE = 0x80  # rack slot n (1-based) answers at RACK_SA_BASE + n - 1
MAX_RACK_SLOTS = 0x60

REQUEST = "Request"  # J1939 Request (PGN 0xEA00): "send me this PGN now"
ACKNOWLEDGEMENT = "Acknowledgement"  # J1939-21 Acknowledgement (PGN 0xE800): the NACK
ACK_NACK = "nack"  # AckControl's name of a NACK in the DBC's value table
ACK_GROUP_FUNCTION_NA = 0xFF  # the group function byte of an answer to a Request

PDU1_LIMIT = 0xF0  # PF below 0xF0: destination-specific (PS byte is the destination)
FRAME_BYTES = 8  # classic CAN; a longer message needs J1939-21 transport
TRANSPORT_PGNS = (j1939_tp.TP_CM_PGN, j1939_tp.TP_DT_PGN)
# their data page and PDU format (identifier bits 16-25), for a test of a frame's id that
# costs one shift and one mask on the CAN ingest path
TRANSPORT_DP_PF = frozenset(pgn >> 8 for pgn in TRANSPORT_PGNS)


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
        self._text: dict[str, dict[str, tuple[str, int, str]]] = {}  # msg -> sig -> (enc, n, pad)
        self._arrays: dict[str, dict[str, _Array]] = {}  # message -> signal -> its layout
        for msg in self.db.messages:
            _, pgn, _, _ = split_id(msg.frame_id)
            self._by_pgn[pgn] = msg
            self._fill_mask[msg.name] = _unused_bits(msg)
            if msg.length > FRAME_BYTES and not \
                    j1939_tp.MIN_SIZE <= msg.length <= j1939_tp.MAX_SIZE:
                raise ValueError(f"{msg.name}: {msg.length} bytes; J1939-21 transport carries "
                                 f"{j1939_tp.MIN_SIZE}..{j1939_tp.MAX_SIZE}")
            fields = {sig.name: _text_field(msg, sig) for sig in msg.signals
                      if _text_encoding(sig)}
            if fields:
                self._text[msg.name] = fields
            arrays = {sig.name: _array_field(msg, sig) for sig in msg.signals
                      if _sig_attr(sig, "ArrayLength")}
            if arrays:
                self._arrays[msg.name] = arrays
            for sig in msg.signals:
                if sig.choices:
                    self._choices[msg.name, sig.name] = {
                        int(code): str(name) for code, name in sig.choices.items()
                    }
        self._special = frozenset(self._text) | frozenset(self._arrays)  # more than decode

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

    def long_messages(self) -> dict[int, int]:
        """PGN -> length of every message longer than one frame (sent in a BAM)."""
        return {split_id(m.frame_id)[1]: m.length for m in self.db.messages
                if m.length > FRAME_BYTES}

    def decode(self, can_id: int, data: bytes | bytearray) -> Decoded:
        """Decode one frame; raises FrameError for unknown ids, bad lengths or bad data.
        A message longer than a frame is bad_length here: it comes only in a transport."""
        _, pgn, sa, da = split_id(can_id)
        msg = self._by_pgn.get(pgn)
        if msg is None:
            raise FrameError("unknown_id", f"unknown PGN {pgn:#06x} (id {can_id:#010x})")
        if msg.length > FRAME_BYTES:
            raise FrameError("bad_length", f"{msg.name}: {len(data)} bytes in one frame; "
                             f"its {msg.length} bytes come only in a J1939-21 BAM")
        return self._decode(msg, pgn, sa, da, data)

    def decode_transfer(self, pgn: int, sa: int, payload: bytes, da: int | None = None
                        ) -> Decoded:
        """Decode a message reassembled from a J1939-21 transport (a BAM: no destination;
        RTS/CTS: `da`, the node it was sent to)."""
        msg = self._by_pgn.get(pgn)
        if msg is None:
            raise FrameError("unknown_id", f"unknown PGN {pgn:#06x} in a transport")
        return self._decode(msg, pgn, sa, da, payload)

    def array_length(self, message: str, signal: str) -> int:
        """Elements of an array signal (its ArrayLength); KeyError for another signal."""
        return self._arrays[message][signal].count

    def _decode(self, msg: Message, pgn: int, sa: int, da: int | None,
                data: bytes | bytearray) -> Decoded:
        if len(data) != msg.length:
            raise FrameError(
                "bad_length", f"{msg.name}: {len(data)} bytes, expected {msg.length}"
            )
        try:
            # the CAN ingest path (thousands of frames/s): decode_simple (no container
            # message in a pack DBC), codes not choice names, and cantools' dict is ours
            out: dict[str, Any] = msg.decode_simple(
                data if type(data) is bytes else bytes(data), decode_choices=False)
        except Exception as exc:  # cantools raises several types on malformed payloads
            raise FrameError("bad_data", f"{msg.name}: {exc}") from exc
        if msg.name not in self._special:
            return Decoded(msg.name, pgn, sa, da, out)
        for sig, (encoding, n, pad) in self._text.get(msg.name, {}).items():
            raw = int(out[sig]).to_bytes(n, "little")
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise FrameError("bad_data", f"{msg.name}.{sig}: not {encoding}: "
                                 f"{raw!r}") from exc
            out[sig] = text.rstrip(pad) if pad else text
        for sig, arr in self._arrays.get(msg.name, {}).items():
            out[sig] = arr.decode(int(out[sig]))
        return Decoded(msg.name, pgn, sa, da, out)

    def encode(
        self, name: str, values: dict[str, Any], sa: int, da: int | None = None, priority: int = 6
    ) -> tuple[int, bytes]:
        """Encode one message -> (29-bit id, its data bytes: 8 for a frame, more for a
        message that needs transport); unused bits are sent as 1. Text signals take str."""
        msg = self.message(name)
        values = dict(values)
        for sig, (encoding, n, pad) in self._text.get(name, {}).items():
            raw = str(values[sig]).encode(encoding)
            if pad and len(raw) < n:
                raw += pad.encode(encoding) * (n - len(raw))
            if len(raw) != n:
                raise ValueError(f"{name}.{sig}: {len(raw)} bytes of {encoding}, needs {n}")
            values[sig] = int.from_bytes(raw, "little")
        for sig, arr in self._arrays.get(name, {}).items():
            values[sig] = arr.encode(f"{name}.{sig}", values[sig])
        data = bytearray(msg.encode(values, scaling=True, strict=True))
        for i, m in enumerate(self._fill_mask[name]):
            data[i] |= m
        _, pgn, _, _ = split_id(msg.frame_id)
        return join_id(priority, pgn, sa, da), bytes(data)

    def nack_values(self, pgn: int, requester: int) -> dict[str, Any]:
        """The Acknowledgement's signals of a NACK to `requester`'s Request for `pgn`
        (J1939-21: sent to the global address, the requester named in byte 5)."""
        return {"AckControl": self.codes(ACKNOWLEDGEMENT, "AckControl")[ACK_NACK],
                "GroupFunction": ACK_GROUP_FUNCTION_NA, "AckAddress": requester,
                "AckPgn": pgn}

    def encode_frames(self, name: str, values: dict[str, Any], sa: int,
                      da: int | None = None) -> list[tuple[int, bytes]]:
        """A message as the frames that carry it: one frame, or a J1939-21 BAM (TP.CM then
        the TP.DT packets, to the global address) for a message longer than 8 bytes. The
        caller spaces a BAM's frames (j1939_tp.BAM_GAP_MIN_S..BAM_GAP_MAX_S)."""
        can_id, data = self.encode(name, values, sa, da)
        if len(data) <= FRAME_BYTES:
            return [(can_id, data)]
        if da not in (None, j1939_tp.GLOBAL_DA):
            raise ValueError(f"{name}: a BAM goes to every node, not to {da:#04x}")
        return j1939_tp.bam_frames(self.pgn_of(name), data, sa)


def _sig_attr(sig: Any, name: str) -> Any:
    attrs = sig.dbc.attributes if sig.dbc is not None else {}
    attr = attrs.get(name)
    return attr.value if attr is not None else None


def _text_encoding(sig: Any) -> str:
    value = _sig_attr(sig, "TextEncoding")
    return str(value) if value else ""


@dataclass(frozen=True)
class _Array:
    count: int
    bits: int
    scale: float
    offset: float

    def decode(self, raw: int) -> tuple[float | None, ...]:
        mask = (1 << self.bits) - 1
        out: list[float | None] = []
        for _ in range(self.count):
            e = raw & mask
            raw >>= self.bits
            out.append(None if e == mask else round(e * self.scale + self.offset, 6))
        return tuple(out)

    def encode(self, where: str, values: Any) -> int:
        items = list(values)
        if len(items) > self.count:
            raise ValueError(f"{where}: {len(items)} elements, at most {self.count}")
        mask = (1 << self.bits) - 1
        raw = 0
        for i in range(self.count):
            v = items[i] if i < len(items) else None
            e = mask if v is None else round((float(v) - self.offset) / self.scale)
            if not 0 <= e <= mask or (v is not None and e == mask):
                raise ValueError(f"{where}[{i}]: {v} outside the array's range")
            raw |= e << (i * self.bits)
        return raw


def _array_field(msg: Message, sig: Any) -> _Array:
    """The layout of an array signal; ValueError for one that cannot be one."""
    count = int(_sig_attr(sig, "ArrayLength"))
    scale = _sig_attr(sig, "ArrayScale")
    offset = _sig_attr(sig, "ArrayOffset")
    if sig.byte_order != "little_endian" or sig.length % count or sig.scale != 1 or \
            sig.offset != 0 or sig.is_signed:
        raise ValueError(f"{msg.name}.{sig.name}: an array signal must be {count} equal "
                         "little-endian unsigned elements, the signal's scale 1, offset 0")
    return _Array(count, sig.length // count, float(scale if scale is not None else 1),
                  float(offset if offset is not None else 0))


def _text_field(msg: Message, sig: Any) -> tuple[str, int, str]:
    """(encoding, bytes, pad) of a text signal; ValueError for one that is no byte field."""
    encoding = _text_encoding(sig)
    try:
        "".encode(encoding)
    except LookupError:
        raise ValueError(f"{msg.name}.{sig.name}: unknown TextEncoding {encoding!r}") from None
    if sig.byte_order != "little_endian" or sig.start % 8 or sig.length % 8 or \
            sig.scale != 1 or sig.offset != 0 or sig.is_signed:
        raise ValueError(f"{msg.name}.{sig.name}: a text signal must be whole little-endian "
                         "unsigned bytes, scale 1, offset 0")
    pad = str(_sig_attr(sig, "TextPad") or "")
    if len(pad) > 1:
        raise ValueError(f"{msg.name}.{sig.name}: TextPad is one character")
    return encoding, sig.length // 8, pad


def _unused_bits(msg: Message) -> bytes:
    used = bytearray(msg.length)
    for sig in msg.signals:
        for bit in range(sig.start, sig.start + sig.length):  # little-endian signals only
            used[bit // 8] |= 1 << (bit % 8)
    return bytes(~b & 0xFF for b in used)
