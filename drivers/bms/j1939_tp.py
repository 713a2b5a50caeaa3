"""J1939-21 transport, broadcast only (BAM): a message longer than 8 bytes as TP.CM + TP.DT.

Pure: no I/O, no clock of its own (every call is given the time). The sender splits a
payload into frames (`bam_frames`); the caller spaces them `BAM_GAP_MIN_S`..`BAM_GAP_MAX_S`
apart. The receiver (`BamReceiver`) reassembles one transfer per source address and drops,
counts and names everything J1939-21 says a receiver must not use.

Frame layouts (J1939-21 5.10.3):
- TP.CM (PGN 0xEC00, to the global address 0xFF for a BAM): control byte 32 (BAM), total
  size (2 bytes, little-endian), number of packets, reserved 0xFF, PGN of the message
  (3 bytes, little-endian);
- TP.DT (PGN 0xEB00): sequence number 1..n, then 7 bytes of the message; the last
  packet's unused bytes are 0xFF.

Connection mode (RTS/CTS) is not supported: its TP.CM is dropped as `not_bam`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

TP_CM_PGN = 0xEC00
TP_DT_PGN = 0xEB00
TP_PRIORITY = 7  # J1939-21's default priority for TP.CM and TP.DT
GLOBAL_DA = 0xFF

CM_BAM = 32
CM_ABORT = 255

PACKET_BYTES = 7
MIN_SIZE = 9  # 8 bytes or fewer travel in one frame
MAX_PACKETS = 255
MAX_SIZE = MAX_PACKETS * PACKET_BYTES  # 1785 bytes, J1939-21's largest message
FRAME_BYTES = 8

T1_S = 0.750  # J1939-21 T1: the receiver's longest wait for the next packet of a BAM
BAM_GAP_MIN_S = 0.050  # J1939-21: a BAM's packets are sent 50..200 ms apart
BAM_GAP_MAX_S = 0.200

# Why a frame or a transfer was dropped; each is a counter in `BamReceiver.stats`.
DROP_REASONS = (
    "bad_frame",  # a TP.CM or TP.DT that is not 8 bytes
    "not_bam",  # a TP.CM that is no BAM (RTS/CTS, abort, ...) or a BAM not sent to 0xFF
    "bad_size",  # size below 9, packet count not what the size needs, or a size the
    #              message's definition does not have
    "too_large",  # announced size above the bound (J1939-21: 1785 bytes)
    "unknown_pgn",  # a BAM of a PGN the receiver does not take
    "restarted",  # a new TP.CM from the same source mid-transfer: the old one is dropped
    "no_session",  # a TP.DT without a TP.CM before it (or after its transfer ended)
    "bad_sequence",  # a TP.DT whose sequence number is not the next one
    "too_many_packets",  # a TP.DT numbered beyond the packets the TP.CM announced
    "timeout",  # T1 passed without the next packet
)


def packets_for(size: int) -> int:
    return -(-size // PACKET_BYTES)


def _tp_id(pgn: int, sa: int) -> int:
    """29-bit id of a TP frame to the global address (both TP PGNs are PDU1)."""
    return (TP_PRIORITY << 26) | (pgn << 8) | (GLOBAL_DA << 8) | (sa & 0xFF)


def bam_frames(pgn: int, payload: bytes, sa: int) -> list[tuple[int, bytes]]:
    """A message as a BAM: [(29-bit id, 8 data bytes)], the TP.CM first, then the TP.DT in
    order. Raises ValueError for a payload that needs no transport or is too large."""
    size = len(payload)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"BAM payload of {size} bytes: J1939-21 carries {MIN_SIZE}.."
                         f"{MAX_SIZE} bytes")
    if not 0 <= pgn <= 0x3FFFF:
        raise ValueError(f"PGN {pgn:#x} is not 18 bits")
    n = packets_for(size)
    cm = bytes([CM_BAM, size & 0xFF, size >> 8, n, 0xFF,
                pgn & 0xFF, (pgn >> 8) & 0xFF, pgn >> 16])
    frames = [(_tp_id(TP_CM_PGN, sa), cm)]
    for seq in range(1, n + 1):
        chunk = payload[(seq - 1) * PACKET_BYTES: seq * PACKET_BYTES]
        frames.append((_tp_id(TP_DT_PGN, sa),
                       bytes([seq]) + chunk + b"\xff" * (PACKET_BYTES - len(chunk))))
    return frames


@dataclass(frozen=True)
class Transfer:
    """A reassembled message."""

    source: int
    pgn: int
    payload: bytes
    started: float  # time of its TP.CM
    finished: float  # time of its last TP.DT


@dataclass(frozen=True)
class Drop:
    source: int
    reason: str  # one of DROP_REASONS
    pgn: int | None  # the PGN of the transfer, when a TP.CM announced one
    detail: str


@dataclass
class _Session:
    pgn: int
    size: int
    packets: int
    started: float
    last: float
    wanted: bool  # False: a PGN we do not take; its packets are consumed unstored
    next_seq: int = 1
    data: bytearray | None = None


class BamReceiver:
    """Reassembles BAMs, one transfer per source address at a time.

    `sizes`: PGN -> the message's length, for the PGNs this receiver takes (a BAM of
    another PGN is dropped as `unknown_pgn`, one of another length as `bad_size`); None
    takes any PGN of MIN_SIZE..max_size bytes. Memory is bounded: at most one transfer of
    at most max_size bytes per source address (256 of them).
    """

    def __init__(
        self,
        *,
        t1_s: float = T1_S,
        max_size: int = MAX_SIZE,
        sizes: Mapping[int, int] | None = None,
        on_drop: Callable[[Drop], None] | None = None,
    ) -> None:
        if not MIN_SIZE <= max_size <= MAX_SIZE:
            raise ValueError(f"max_size {max_size}: J1939-21 allows {MIN_SIZE}..{MAX_SIZE}")
        if t1_s <= 0:
            raise ValueError(f"t1_s {t1_s} must be > 0")
        self.t1_s = t1_s
        self.max_size = max_size
        self.sizes = dict(sizes) if sizes is not None else None
        if self.sizes is not None:
            bad = {p: s for p, s in self.sizes.items() if not MIN_SIZE <= s <= max_size}
            if bad:
                raise ValueError(f"message sizes outside {MIN_SIZE}..{max_size}: {bad}")
        self.on_drop = on_drop
        self.stats: dict[str, int] = dict.fromkeys(("completed", *DROP_REASONS), 0)
        self._sessions: dict[int, _Session] = {}

    @property
    def open_transfers(self) -> int:
        return len(self._sessions)

    def feed(self, tp_pgn: int, sa: int, da: int | None, data: bytes, t: float
             ) -> Transfer | None:
        """One TP.CM or TP.DT frame from `sa` to `da`, received at `t` (seconds, monotonic).
        Returns the transfer it completes, if any; everything dropped is counted."""
        self.expire(t)
        if len(data) != FRAME_BYTES:
            self._drop(sa, "bad_frame", None, f"{len(data)} bytes in a TP frame")
            return None
        if tp_pgn == TP_CM_PGN:
            self._announce(sa, da, data, t)
            return None
        if tp_pgn == TP_DT_PGN:
            return self._packet(sa, data, t)
        raise ValueError(f"PGN {tp_pgn:#x} is no transport PGN")

    def expire(self, t: float) -> None:
        """Drop every transfer whose next packet is more than T1 late."""
        if not self._sessions:
            return
        for sa, s in list(self._sessions.items()):
            if t - s.last > self.t1_s:
                del self._sessions[sa]
                if s.wanted:
                    self._drop(sa, "timeout", s.pgn, f"packet {s.next_seq} of {s.packets} "
                               f"not seen {round((t - s.last) * 1000)} ms after the last")

    # ------------------------------------------------------------------ internals
    def _announce(self, sa: int, da: int | None, data: bytes, t: float) -> None:
        control = data[0]
        pgn = data[5] | data[6] << 8 | data[7] << 16
        old = self._sessions.pop(sa, None)  # any TP.CM ends what this source had begun
        if old is not None and old.wanted:
            self._drop(sa, "restarted", old.pgn, f"new TP.CM after packet "
                       f"{old.next_seq - 1} of {old.packets}")
        if control != CM_BAM or da not in (None, GLOBAL_DA):
            to = "global" if da in (None, GLOBAL_DA) else f"{da:#04x}"
            self._drop(sa, "not_bam", pgn, f"TP.CM control {control} to {to}")
            return
        size = data[1] | data[2] << 8
        packets = data[3]
        if size > self.max_size:
            self._drop(sa, "too_large", pgn, f"{size} bytes announced, at most {self.max_size}")
            return
        if size < MIN_SIZE or packets != packets_for(size):
            self._drop(sa, "bad_size", pgn, f"{size} bytes in {packets} packets")
            return
        wanted = True
        if self.sizes is not None:
            want = self.sizes.get(pgn)
            if want is None:
                wanted = False
                self._drop(sa, "unknown_pgn", pgn, f"BAM of PGN {pgn:#06x}")
            elif size != want:
                self._drop(sa, "bad_size", pgn, f"{size} bytes, the message has {want}")
                return
        self._sessions[sa] = _Session(pgn, size, packets, t, t, wanted,
                                      data=bytearray() if wanted else None)

    def _packet(self, sa: int, data: bytes, t: float) -> Transfer | None:
        s = self._sessions.get(sa)
        seq = data[0]
        if s is None:
            self._drop(sa, "no_session", None, f"TP.DT {seq} without a TP.CM")
            return None
        if seq > s.packets or seq != s.next_seq:
            del self._sessions[sa]
            if s.wanted:
                reason = "too_many_packets" if seq > s.packets else "bad_sequence"
                self._drop(sa, reason, s.pgn, f"TP.DT {seq}, expected {s.next_seq} of "
                           f"{s.packets}")
            return None
        s.last = t
        s.next_seq += 1
        if s.data is not None:
            s.data += data[1:]
        if seq < s.packets:
            return None
        del self._sessions[sa]
        if s.data is None:
            return None
        self.stats["completed"] += 1
        return Transfer(sa, s.pgn, bytes(s.data[:s.size]), s.started, t)

    def _drop(self, sa: int, reason: str, pgn: int | None, detail: str) -> None:
        self.stats[reason] += 1
        if self.on_drop is not None:
            self.on_drop(Drop(sa, reason, pgn, detail))
