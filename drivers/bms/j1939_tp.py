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

Connection mode (RTS/CTS, J1939-21 5.10.3.1-5.10.3.5), destination-specific (PDU1 to one
node): the originator sends TP.CM_RTS (control 16: size, packets, most packets per CTS,
PGN); the responder answers TP.CM_CTS (17: packets it can take now, the next packet's
number; 0 packets = hold), takes the TP.DT it asked for, asks again or for more, and ends
with TP.CM_EndOfMsgAck (19: size, packets, PGN). Either side ends a connection with
TP.Conn_Abort (255: the reason, `ABORT_REASONS`). `ConnectionReceiver` is the responder
(the station), `ConnectionSender` one originator's transfer (a simulated pack or car).
Both return the frames to send and are driven by `poll(t)` for their timers: T1, T2, Th on
the responder, T3, T4 on the originator, with J1939-21's values by default.

Why our own and not a library: can-j1939 (PyPI) runs its own threads on the wall clock,
owns the python-can bus, and sends only abort reasons 1-3 (no retransmission, no hold
timing); this module is pure, so the station's asyncio bus reader, the simulator and the
tests drive it with their own clocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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


# ---------------------------------------------------------------- connection mode (RTS/CTS)

CM_RTS = 16
CM_CTS = 17
CM_EOMA = 19

T2_S = 1.250  # responder: longest wait for a TP.DT after its CTS
T3_S = 1.250  # originator: longest wait for a CTS (after RTS or its last packet) or EOMA
T4_S = 1.050  # originator: longest wait for the next CTS after a hold (CTS of 0 packets)
TH_S = 0.500  # responder: a hold is repeated at least this often
MAX_RETRANSMITS = 2  # a packet asked for again at most this often, then abort 5
CTS_WINDOW = 16  # packets the station takes per CTS
MAX_CONNECTIONS = 32  # connections the station holds open at once (abort 1 beyond)
MAX_ACTIVE = 8  # of those, transferring at once; the others are held (CTS of 0)
NOT_AVAILABLE = 0xFF

# J1939-21 Connection Abort reasons (byte 2 of TP.Conn_Abort): code -> our name
ABORT_REASONS: dict[int, str] = {
    1: "busy",  # already in one or more connection-managed sessions, cannot take another
    2: "resources",  # system resources were needed for another task
    3: "timeout",  # a timeout occurred (T1..T4)
    4: "cts_while_sending",  # a CTS received while a data transfer is in progress
    5: "max_retransmit",  # the retransmit request limit reached
    6: "unexpected_dt",  # a TP.DT not asked for (before a CTS, or during a hold)
    7: "bad_sequence",  # a TP.DT (or a CTS) numbered outside what was asked for
    8: "duplicate_sequence",  # a TP.DT received twice
    9: "too_large",  # total message size above 1785 bytes
    250: "other",  # any other reason (here: a size or PGN the receiver does not take)
}
ABORT_CODES: dict[str, int] = {name: code for code, name in ABORT_REASONS.items()}

# Why the responder dropped a frame or a connection: counters in `ConnectionReceiver.stats`
# (a received abort of a code J1939-21 does not name counts as `abort_received_other`).
CM_DROP_REASONS = (
    *(f"abort_sent_{name}" for name in ABORT_REASONS.values()),
    *(f"abort_received_{name}" for name in ABORT_REASONS.values()),
    "cm_bad_frame",  # a TP.CM or TP.DT to us that is not 8 bytes
    "cm_no_session",  # a TP.DT to us with no connection open from its source
    "cm_unexpected",  # a CTS or EndOfMsgAck to us: we never send in connection mode
    "cm_restarted",  # a new RTS for the same PGN mid-connection: the old one is dropped
    "retransmit_request",  # packets missing in a window: asked for again (not a drop)
)
CM_COUNTERS = ("cm_completed", "cm_cts_sent", "cm_holds_sent", "cm_eoma_sent")

Frame = tuple[int, bytes]


def _cm_id(pgn: int, sa: int, da: int) -> int:
    return (TP_PRIORITY << 26) | (pgn << 8) | ((da & 0xFF) << 8) | (sa & 0xFF)


def _pgn_bytes(pgn: int) -> bytes:
    return bytes([pgn & 0xFF, (pgn >> 8) & 0xFF, (pgn >> 16) & 0xFF])


def rts_frame(pgn: int, size: int, sa: int, da: int, max_per_cts: int = NOT_AVAILABLE
              ) -> Frame:
    return (_cm_id(TP_CM_PGN, sa, da), bytes([CM_RTS, size & 0xFF, size >> 8,
                                              packets_for(size), max_per_cts])
            + _pgn_bytes(pgn))


def cts_frame(pgn: int, count: int, next_seq: int, sa: int, da: int) -> Frame:
    """CTS: `count` packets from `next_seq` on; count 0 = hold (next_seq sent as 0xFF)."""
    return (_cm_id(TP_CM_PGN, sa, da), bytes([CM_CTS, count, next_seq if count else 0xFF,
                                              0xFF, 0xFF]) + _pgn_bytes(pgn))


def eoma_frame(pgn: int, size: int, sa: int, da: int) -> Frame:
    return (_cm_id(TP_CM_PGN, sa, da), bytes([CM_EOMA, size & 0xFF, size >> 8,
                                              packets_for(size), 0xFF]) + _pgn_bytes(pgn))


def abort_frame(pgn: int, reason: str, sa: int, da: int) -> Frame:
    """TP.Conn_Abort; bytes 3-5 (the role, in later J1939-21 revisions) not available."""
    return (_cm_id(TP_CM_PGN, sa, da), bytes([CM_ABORT, ABORT_CODES[reason], 0xFF, 0xFF,
                                              0xFF]) + _pgn_bytes(pgn))


def dt_frame(payload: bytes, seq: int, sa: int, da: int) -> Frame:
    chunk = payload[(seq - 1) * PACKET_BYTES: seq * PACKET_BYTES]
    return (_cm_id(TP_DT_PGN, sa, da),
            bytes([seq]) + chunk + b"\xff" * (PACKET_BYTES - len(chunk)))


def cm_pgn(data: bytes) -> int:
    return data[5] | data[6] << 8 | data[7] << 16


@dataclass
class _Inbound:
    pgn: int
    size: int
    packets: int
    max_per_cts: int  # the originator's limit from its RTS (0xFF: none)
    started: float
    deadline: float
    timer: str  # which timer runs: "T1", "T2" or "Th" (held)
    window: tuple[int, int] = (0, -1)  # the packets the last CTS asked for, first..last
    data: bytearray = field(default_factory=bytearray)
    got: set[int] = field(default_factory=set)
    retransmits: int = 0

    @property
    def held(self) -> bool:
        return self.timer == "Th"


class ConnectionReceiver:
    """The responder's side of J1939-21 connection mode, for one node (`own_address`).

    One connection per originator (source address) at a time, at most `max_connections`
    in all (a further RTS is aborted: busy) and at most `max_active` transferring at once
    (the others are held with CTS of 0 packets, repeated every `th_s`, and resumed as
    connections end). Each CTS asks for at most `window` packets (and no more than the
    originator's RTS allows). Packets missing from a window when its last packet arrives
    are asked for again (a CTS from the first missing one), at most `max_retransmits`
    times per connection (then abort 5). `sizes` as for `BamReceiver`. Memory is bounded
    by max_connections x max_size bytes.

    `feed` and `poll` return the frames to send (CTS, EndOfMsgAck, abort), in order.
    """

    def __init__(
        self,
        own_address: int,
        *,
        t1_s: float = T1_S,
        t2_s: float = T2_S,
        th_s: float = TH_S,
        window: int = CTS_WINDOW,
        max_connections: int = MAX_CONNECTIONS,
        max_active: int = MAX_ACTIVE,
        max_retransmits: int = MAX_RETRANSMITS,
        max_size: int = MAX_SIZE,
        sizes: Mapping[int, int] | None = None,
        on_drop: Callable[[Drop], None] | None = None,
    ) -> None:
        if min(t1_s, t2_s, th_s) <= 0:
            raise ValueError("T1, T2 and Th must be > 0")
        if not 1 <= window <= MAX_PACKETS or max_active < 1 or max_connections < max_active:
            raise ValueError("window 1..255, max_active >= 1, max_connections >= max_active")
        if not MIN_SIZE <= max_size <= MAX_SIZE:
            raise ValueError(f"max_size {max_size}: J1939-21 allows {MIN_SIZE}..{MAX_SIZE}")
        self.own_address = own_address
        self.t1_s, self.t2_s, self.th_s = t1_s, t2_s, th_s
        self.window = window
        self.max_connections = max_connections
        self.max_active = max_active
        self.max_retransmits = max_retransmits
        self.max_size = max_size
        self.sizes = dict(sizes) if sizes is not None else None
        self.on_drop = on_drop
        self.stats: dict[str, int] = dict.fromkeys((*CM_COUNTERS, *CM_DROP_REASONS), 0)
        self._conns: dict[int, _Inbound] = {}

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def next_deadline(self) -> float | None:
        """When `poll` next has something to do (None: no connection open)."""
        return min((c.deadline for c in self._conns.values()), default=None)

    def feed(self, tp_pgn: int, sa: int, data: bytes, t: float
             ) -> tuple[Transfer | None, list[Frame]]:
        """One TP.CM or TP.DT frame from `sa` to this node, received at `t`. Returns the
        transfer it completes (if any) and the frames to send."""
        out = self.poll(t)
        if len(data) != FRAME_BYTES:
            self._drop(sa, "cm_bad_frame", None, f"{len(data)} bytes in a TP frame")
            return None, out
        if tp_pgn == TP_DT_PGN:
            return self._packet(sa, data, t, out), out
        if tp_pgn != TP_CM_PGN:
            raise ValueError(f"PGN {tp_pgn:#x} is no transport PGN")
        control = data[0]
        if control == CM_RTS:
            self._rts(sa, data, t, out)
        elif control == CM_ABORT:
            code = data[1]
            name = ABORT_REASONS.get(code, "other")
            conn = self._conns.pop(sa, None)
            pgn = cm_pgn(data)
            self._drop(sa, f"abort_received_{name}", pgn,
                       f"abort code {code}" + ("" if conn else " with no connection open"))
            if conn is not None:
                self._resume(t, out)
        else:  # CTS, EOMA, BAM to us, reserved codes: we are never the originator
            self._drop(sa, "cm_unexpected", cm_pgn(data), f"TP.CM control {control}")
        return None, out

    def poll(self, t: float) -> list[Frame]:
        """Timers: a connection past T1 or T2 is aborted (timeout); a hold is repeated
        (or the connection resumed, when a transfer slot is free) at Th."""
        out: list[Frame] = []
        if not self._conns:
            return out
        for sa, c in list(self._conns.items()):
            if t < c.deadline:
                continue
            if c.held:
                c.deadline = t + self.th_s
                out.append(cts_frame(c.pgn, 0, 0, self.own_address, sa))
                self.stats["cm_holds_sent"] += 1
                continue
            del self._conns[sa]
            self._abort(sa, c.pgn, "timeout", f"{c.timer} passed: packet "
                        f"{min(set(range(1, c.packets + 1)) - c.got)} of {c.packets} not seen",
                        out)
        self._resume(t, out)
        return out

    # ------------------------------------------------------------------ internals
    def _rts(self, sa: int, data: bytes, t: float, out: list[Frame]) -> None:
        size, packets, per_cts, pgn = data[1] | data[2] << 8, data[3], data[4], cm_pgn(data)
        old = self._conns.get(sa)
        if old is not None:
            if old.pgn != pgn:  # J1939-21: one connection per pair; the new one is refused
                self._abort(sa, pgn, "busy", f"RTS for {pgn:#06x} during {old.pgn:#06x}", out)
                return
            del self._conns[sa]  # the same PGN again: the originator started over
            self._drop(sa, "cm_restarted", pgn, f"new RTS after {len(old.got)} of "
                       f"{old.packets} packets")
        if size > self.max_size:
            self._abort(sa, pgn, "too_large", f"{size} bytes announced", out)
            return
        if size < MIN_SIZE or packets != packets_for(size) or per_cts == 0:
            self._abort(sa, pgn, "other", f"{size} bytes in {packets} packets, "
                        f"{per_cts} per CTS", out)
            return
        if self.sizes is not None and self.sizes.get(pgn) != size:
            want = self.sizes.get(pgn)
            self._abort(sa, pgn, "other", f"PGN {pgn:#06x} not taken" if want is None
                        else f"{size} bytes, the message has {want}", out)
            return
        if len(self._conns) >= self.max_connections:
            self._abort(sa, pgn, "busy", f"{len(self._conns)} connections open", out)
            return
        c = _Inbound(pgn, size, packets, per_cts, t, t + self.th_s, "Th")
        self._conns[sa] = c
        if self._active() < self.max_active:
            self._ask(sa, c, 1, t, out)
        else:
            out.append(cts_frame(pgn, 0, 0, self.own_address, sa))
            self.stats["cm_holds_sent"] += 1

    def _active(self) -> int:
        return sum(1 for c in self._conns.values() if not c.held)

    def _resume(self, t: float, out: list[Frame]) -> None:
        """Held connections take the transfer slots that are free, oldest first."""
        free = self.max_active - self._active()
        if free <= 0:
            return
        for sa, c in sorted(self._conns.items(), key=lambda kv: kv[1].started):
            if free <= 0:
                break
            if c.held:
                self._ask(sa, c, 1 if not c.got else max(c.got) + 1, t, out)
                free -= 1

    def _ask(self, sa: int, c: _Inbound, first: int, t: float, out: list[Frame]) -> None:
        n = min(self.window, c.packets - first + 1,
                c.max_per_cts if c.max_per_cts != NOT_AVAILABLE else MAX_PACKETS)
        c.window = (first, first + n - 1)
        c.got -= set(range(first, first + n))
        c.timer, c.deadline = "T2", t + self.t2_s
        out.append(cts_frame(c.pgn, n, first, self.own_address, sa))
        self.stats["cm_cts_sent"] += 1

    def _packet(self, sa: int, data: bytes, t: float, out: list[Frame]) -> Transfer | None:
        c = self._conns.get(sa)
        seq = data[0]
        if c is None:
            self._drop(sa, "cm_no_session", None, f"TP.DT {seq} with no connection")
            return None
        first, last = c.window
        if c.held or not c.window[1] >= c.window[0]:
            self._fail(sa, c, "unexpected_dt", f"TP.DT {seq} during a hold", out, t)
            return None
        if not first <= seq <= last:
            self._fail(sa, c, "bad_sequence", f"TP.DT {seq}, asked for {first}..{last}",
                       out, t)
            return None
        if seq in c.got:
            self._fail(sa, c, "duplicate_sequence", f"TP.DT {seq} twice", out, t)
            return None
        offset = (seq - 1) * PACKET_BYTES
        if len(c.data) < offset:
            c.data.extend(b"\xff" * (offset - len(c.data)))
        c.data[offset:offset + PACKET_BYTES] = data[1:]
        c.got.add(seq)
        c.timer, c.deadline = "T1", t + self.t1_s
        if seq != last:
            return None
        missing = [n for n in range(first, last + 1) if n not in c.got]
        if missing:  # the window's last packet came, some before it did not: ask again
            c.retransmits += 1
            if c.retransmits > self.max_retransmits:
                self._fail(sa, c, "max_retransmit", f"packets {missing} missing after "
                           f"{self.max_retransmits} retransmissions", out, t)
                return None
            self._drop(sa, "retransmit_request", c.pgn, f"packets {missing} missing")
            self._ask(sa, c, missing[0], t, out)
            return None
        if len(c.got) < c.packets:
            self._ask(sa, c, last + 1, t, out)
            return None
        del self._conns[sa]
        out.append(eoma_frame(c.pgn, c.size, self.own_address, sa))
        self.stats["cm_eoma_sent"] += 1
        self.stats["cm_completed"] += 1
        self._resume(t, out)
        return Transfer(sa, c.pgn, bytes(c.data[:c.size]), c.started, t)

    def _fail(self, sa: int, c: _Inbound, reason: str, detail: str, out: list[Frame],
              t: float) -> None:
        del self._conns[sa]
        self._abort(sa, c.pgn, reason, detail, out)
        self._resume(t, out)

    def _abort(self, sa: int, pgn: int, reason: str, detail: str, out: list[Frame]) -> None:
        out.append(abort_frame(pgn, reason, self.own_address, sa))
        self._drop(sa, f"abort_sent_{reason}", pgn, detail)

    def _drop(self, sa: int, reason: str, pgn: int | None, detail: str) -> None:
        self.stats[reason] += 1
        if self.on_drop is not None:
            self.on_drop(Drop(sa, reason, pgn, detail))


class ConnectionSender:
    """The originator's side of one J1939-21 connection-mode transfer: `payload` of `pgn`
    from `sa` to `da`.

    `start(t)` gives the RTS; `feed` takes the responder's TP.CM (CTS, EndOfMsgAck,
    abort); `next_packet(t)` gives the next TP.DT asked for (the caller paces them);
    `poll(t)` runs T3 (after the RTS or the last packet of a CTS) and T4 (after a hold).
    A CTS that comes while asked packets are still unsent is answered with abort 4, one
    asking for packets the message does not have with abort 7, a retransmission beyond
    `max_retransmits` with abort 5. `state` ends as "done" or "aborted" (`abort_reason`,
    `aborted_by` "self" or "peer").
    """

    def __init__(self, pgn: int, payload: bytes, sa: int, da: int, *,
                 max_per_cts: int = NOT_AVAILABLE, t3_s: float = T3_S, t4_s: float = T4_S,
                 max_retransmits: int = MAX_RETRANSMITS) -> None:
        if not MIN_SIZE <= len(payload) <= MAX_SIZE:
            raise ValueError(f"payload of {len(payload)} bytes: J1939-21 carries "
                             f"{MIN_SIZE}..{MAX_SIZE} bytes")
        if da == GLOBAL_DA:
            raise ValueError("connection mode goes to one node; to all, use a BAM")
        self.pgn, self.payload, self.sa, self.da = pgn, payload, sa, da
        self.packets = packets_for(len(payload))
        self.max_per_cts = max_per_cts
        self.t3_s, self.t4_s = t3_s, t4_s
        self.max_retransmits = max_retransmits
        self.state = "idle"  # idle, wait_cts, sending, wait_eoma, done, aborted
        self.deadline: float | None = None
        self.abort_reason: str | None = None
        self.aborted_by: str | None = None
        self.retransmits = 0
        self.holds = 0
        self.sent_packets = 0  # TP.DT frames sent, retransmissions included
        self._queue: list[int] = []
        self._highest = 0  # highest packet number sent so far

    @property
    def finished(self) -> bool:
        return self.state in ("done", "aborted")

    def start(self, t: float) -> list[Frame]:
        self.state, self.deadline = "wait_cts", t + self.t3_s
        return [rts_frame(self.pgn, len(self.payload), self.sa, self.da, self.max_per_cts)]

    def feed(self, data: bytes, t: float) -> list[Frame]:
        if self.finished or len(data) != FRAME_BYTES:
            return []
        control = data[0]
        if control == CM_ABORT:
            self._end("aborted", ABORT_REASONS.get(data[1], "other"), "peer")
            return []
        if control == CM_EOMA:
            if self.state == "wait_eoma":
                self._end("done")
            return []
        if control != CM_CTS:
            return []
        if self.state == "sending":
            return self._abort("cts_while_sending")
        count, first = data[1], data[2]
        if count == 0:
            self.holds += 1
            self.state, self.deadline = "wait_cts", t + self.t4_s
            return []
        if not 1 <= first <= self.packets or first + count - 1 > self.packets:
            return self._abort("bad_sequence")
        if first <= self._highest:
            self.retransmits += 1
            if self.retransmits > self.max_retransmits:
                return self._abort("max_retransmit")
        if self.max_per_cts != NOT_AVAILABLE:
            count = min(count, self.max_per_cts)
        self._queue = list(range(first, first + count))
        self.state, self.deadline = "sending", None
        return []

    def next_packet(self, t: float) -> Frame | None:
        if self.state != "sending" or not self._queue:
            return None
        seq = self._queue.pop(0)
        self._highest = max(self._highest, seq)
        self.sent_packets += 1
        if not self._queue:
            self.state = "wait_eoma" if seq == self.packets else "wait_cts"
            self.deadline = t + self.t3_s
        return dt_frame(self.payload, seq, self.sa, self.da)

    def poll(self, t: float) -> list[Frame]:
        if self.deadline is None or self.finished or t < self.deadline:
            return []
        return self._abort("timeout")

    def _abort(self, reason: str) -> list[Frame]:
        self._end("aborted", reason, "self")
        return [abort_frame(self.pgn, reason, self.sa, self.da)]

    def _end(self, state: str, reason: str | None = None, by: str | None = None) -> None:
        self.state, self.abort_reason, self.aborted_by = state, reason, by
        self.deadline = None
        self._queue = []
