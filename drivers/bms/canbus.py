"""The pack bus: python-can frames in, decoded pack messages out, on the asyncio loop.

`open_can_bus` is the one place that knows the interfaces' quirks. `PackBus` reads frames
with the lowest latency asyncio allows: a bus with a file descriptor (socketcan,
udp_multicast) is watched by the loop itself (add_reader, no thread hop); one without
(virtual) is read by a thread that hands each frame to the loop with call_soon_threadsafe.
Each frame is stamped with the injected clock when it is taken off the bus.

J1939-21 transport frames (TP.CM, TP.DT) never reach on_message: per bus, a BamReceiver
reassembles BAMs (to the global address) and a ConnectionReceiver answers connection mode
(RTS/CTS to the station: CTS, hold, EndOfMsgAck, abort, sent with `_send_raw`; its timers
run on a loop timer, `_tp_arm`). The message a complete transfer carries is decoded and
delivered like a frame, stamped with the time of its last packet. What the receivers drop
is counted (`stats["tp_<reason>"]`, j1939_tp.DROP_REASONS and CM_DROP_REASONS; aborts
by J1939-21 reason, sent and received) and logged, rate-limited.

J1939 Requests and Acknowledgements are the bus's own business too: the station sends
nothing on request, so a Request addressed to it is answered with a NACK (J1939-21; at
most one per requester and PGN every NACK_REPEAT_S), a global one is only counted; a NACK
(or any negative Acknowledgement) to the station's own Request is counted, logged and told
to `on_nack`. Neither reaches on_message.

The reader is hand-made rather than a can.Notifier so that a failing bus (interface down,
adapter unplugged) is reopened with back-off instead of spinning or killing a thread, and
so that an exception from the core's callback ends run() instead of vanishing in a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import can
import structlog

from drivers.bms import j1939_tp
from drivers.bms.protocol import (
    ACKNOWLEDGEMENT,
    REQUEST,
    STATION_SA,
    TRANSPORT_DP_PF,
    Decoded,
    FrameError,
    PackProtocol,
    split_id,
)
from drivers.ratelimit import RateLimitedWarnings, RateLimiter

log = structlog.get_logger(__name__)

GLOBAL_DA = 0xFF  # J1939 global (broadcast) destination
LOG_INTERVAL = 1.0  # at most one log line per rejection kind per second: a babbling node
THREAD_RECV_TIMEOUT = 0.05  # how long a reader thread takes to notice it must stop
DRAIN_LIMIT = 64  # frames taken per loop wake-up, so a flood cannot starve other tasks
# the kernel's receive queue asked for on a bus's socket: a burst, or the loop busy for a
# moment (a journal fsync, a scan), is queued rather than dropped (~2000 frames)
RECEIVE_BUFFER_BYTES = 2 << 20
NACK_REPEAT_S = 0.5  # at most one NACK per (requester, PGN) this often: a flood of
#                      Requests must not double itself on the bus
MAX_NODE_ADDRESS = 0xFD  # J1939: 0xFE is the null address, 0xFF the global one

# SocketCAN error frames (linux/can/error.h): the class is a bit of the identifier, the
# controller's status (class CRTL) is in data[1]. python-can clears CAN_ERR_FLAG and sets
# Message.is_error_frame; the bits below are what is left of the identifier.
ERROR_CLASSES = {
    0x001: "tx_timeout", 0x002: "lostarb", 0x004: "crtl", 0x008: "prot", 0x010: "trx",
    0x020: "ack", 0x040: "busoff", 0x080: "buserror", 0x100: "restarted", 0x200: "cnt",
}
CAN_ERR_CRTL = 0x004
CAN_ERR_BUSOFF = 0x040
CAN_ERR_RESTARTED = 0x100
CRTL_RX_WARNING, CRTL_TX_WARNING = 0x04, 0x08
CRTL_RX_PASSIVE, CRTL_TX_PASSIVE = 0x10, 0x20
CRTL_ACTIVE = 0x40  # back to error active
BUS_STATES = ("closed", "active", "warning", "passive", "bus_off")
BACKOFF_MIN_S = 0.1  # a failed bus is reopened after this, doubling while it keeps failing
BACKOFF_MAX_S = 5.0
BUS_BACK_AFTER_S = 2.0  # error active this long after a bad state: the bus counts as back
BUS_DOWN = frozenset({"closed", "bus_off"})  # no frame of its packs can arrive
REJECT_KINDS = ("unknown_id", "bad_length", "bad_data", "not_extended", "remote", "wrong_bus",
                "malformed_datagrams")


def classify_error_frame(can_id: int, data: bytes) -> tuple[list[str], str | None]:
    """An error frame's classes (ERROR_CLASSES names, in bit order) and the bus state it
    reports: "bus_off", "passive", "warning", "active" (back to error active, or restarted
    after bus-off), or None when it says nothing about the state (a protocol error, a
    missing ACK, ...)."""
    classes = [name for bit, name in ERROR_CLASSES.items() if can_id & bit]
    if can_id & CAN_ERR_BUSOFF:
        return classes, "bus_off"
    state: str | None = None
    if can_id & CAN_ERR_CRTL:
        ctrl = data[1] if len(data) > 1 else 0
        if ctrl & (CRTL_RX_PASSIVE | CRTL_TX_PASSIVE):
            state = "passive"
        elif ctrl & (CRTL_RX_WARNING | CRTL_TX_WARNING):
            state = "warning"
        elif ctrl & CRTL_ACTIVE:
            state = "active"
    if state is None and can_id & CAN_ERR_RESTARTED:
        state = "active"
    return classes, state


STAT_KEYS = (
    "received",
    "decoded",
    "own",
    "other_destination",
    "unknown_id",
    "bad_length",
    "bad_data",
    "not_extended",
    "remote",
    "error_frames",
    "sent",
    "send_errors",
    "bus_errors",
    "malformed_datagrams",
    "requests_received",  # J1939 Requests to the station or to every node
    "nacks_sent",  # NACKs answering a Request addressed to the station
    "nacks_received",  # negative Acknowledgements of the station's own Requests
    "acks_other",  # Acknowledgements for another requester, or positive ones
    "wrong_bus",  # a frame from a pack location another bus serves
    "opens",  # times the bus was opened (a reopen after bus-off or an error counts)
    "error_warning",  # times the controller reported error warning (error counter >= 96)
    "error_passive",  # times it went error passive (>= 128)
    "bus_off",  # times it went bus-off (the bus is then closed and reopened)
    *(f"err_{name}" for name in ERROR_CLASSES.values()),  # error frames by class bit
    "tp_frames",  # TP.CM and TP.DT frames taken by the BAM receiver
    "tp_completed",  # messages reassembled from a BAM
    *(f"tp_{reason}" for reason in j1939_tp.DROP_REASONS),
    *(f"tp_{reason}" for reason in j1939_tp.CM_DROP_REASONS),  # connection mode
    *j1939_tp.CM_COUNTERS,  # connection mode: completed, CTS, holds, EndOfMsgAck sent
)


class MalformedDatagram(can.CanOperationError):
    """One received datagram was not a CAN frame (udp_multicast): it is consumed, the bus
    is fine, the next datagram may be read."""


@functools.cache
def _tolerant_udp_multicast() -> type[can.BusABC]:
    """python-can's udp_multicast bus, with a datagram that does not unpack to a valid
    frame (not msgpack, unknown fields, an identifier wider than 29 bits, ...) raised as
    MalformedDatagram instead of the CanOperationError that also means a broken socket."""
    from can.interfaces.udp_multicast import UdpMulticastBus

    class TolerantUdpMulticastBus(UdpMulticastBus):
        def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
            try:
                return super()._recv_internal(timeout)
            except can.CanOperationError as exc:
                cause = exc.__cause__
                # The socket's own failures come as OSError (raw or as the cause); a cause
                # of any other type is the unpacking of one datagram that was read.
                if cause is None or isinstance(cause, OSError):
                    raise
                raise MalformedDatagram(f"{type(cause).__name__}: {cause}") from cause

    return TolerantUdpMulticastBus


def open_can_bus(
    interface: str, channel: str, *, bitrate: int | None = None, **kwargs: Any
) -> can.BusABC:
    """Open a python-can bus, applying what each interface needs.

    - socketcan (can0 on a station, vcan0 on a bench): the bit rate belongs to the kernel
      interface (`ip link set can0 type can bitrate 250000`), so `bitrate` is not passed.
    - virtual: in-process bus for tests; frames go to every other bus on the same channel.
    - udp_multicast: a bus over IP multicast between processes (needs python-can[multicast]).
      Channel "" means the IPv4 group (the IPv6 default rarely works in containers). It
      echoes a sender's own frames back to it; PackBus drops them by source address.
      `port` (python-can's default 43113) is what keeps two buses on one host apart: the
      port is bound on all addresses, so a bus hears every group's datagrams to its port.
      A datagram that is not a frame raises MalformedDatagram from recv() (see PackBus).
    - anything else (pcan, kvaser, slcan, ...): passed to python-can with `bitrate`.
    """
    if interface == "socketcan":
        if bitrate is not None:
            log.info("can.bitrate_ignored", channel=channel, bitrate=bitrate,
                     hint=f"ip link set {channel} type can bitrate {bitrate}")
        try:
            return can.Bus(interface="socketcan", channel=channel, **kwargs)
        except OSError as exc:
            raise can.CanInitializationError(
                f"socketcan {channel}: {exc}; a bench needs `ip link add dev vcan0 type vcan"
                f" && ip link set up vcan0`, a station `ip link set {channel} up`"
            ) from exc
    if interface == "virtual":
        kwargs.setdefault("receive_own_messages", False)
        return can.Bus(interface="virtual", channel=channel, **kwargs)
    if interface == "udp_multicast":
        from can.interfaces.udp_multicast import UdpMulticastBus

        bus_class = _tolerant_udp_multicast()
        return bus_class(channel=channel or UdpMulticastBus.DEFAULT_GROUP_IPv4, **kwargs)
    if bitrate is not None:
        kwargs["bitrate"] = bitrate
    return can.Bus(interface=interface, channel=channel, **kwargs)


class UdpPortLease:
    """A UDP port for a udp_multicast bus that no other lease on this host holds.

    python-can's udp_multicast binds its port on all addresses, so on one host the group
    does not keep two buses apart: the port does. A lease binds a socket on loopback to
    a port the kernel chooses among those no socket holds, then allows sharing it, so
    that python-can's buses (which bind with SO_REUSEADDR) can join it while no other
    lease can be given it. Bound to loopback, it receives none of the bus's datagrams.
    Close it when the run ends (a lease never closed is closed when collected, quietly:
    a rig built and never started holds one)."""

    def __init__(self) -> None:
        self._fd = -1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))  # without SO_REUSEADDR: a port nobody holds
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.port: int = sock.getsockname()[1]
            self._fd = sock.detach()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> UdpPortLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PackBus:
    """The station's pack CAN bus: decode received frames, send station messages.

    on_message(decoded, t) runs in the event loop thread; t is clock() when the frame
    was taken off the bus. on_reject(kind, arbitration_id, data) is told of every frame
    dropped as unknown_id, bad_length, bad_data, not_extended or remote. Frames from
    own_address (echoes) and PDU1 frames addressed to another node are dropped silently.
    A udp_multicast datagram that is not a CAN frame is dropped and counted
    (`stats["malformed_datagrams"]`, a rate-limited warning); the bus stays open.
    An exception raised by a callback ends run().
    """

    def __init__(
        self,
        interface: str,
        channel: str,
        protocol: PackProtocol,
        *,
        own_address: int = STATION_SA,
        bitrate: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        bus_kwargs: dict[str, Any] | None = None,
        backoff_min: float = BACKOFF_MIN_S,
        backoff_max: float = BACKOFF_MAX_S,
        logger: Any = None,
        name: str = "pack",
        accept_sources: frozenset[int] | None = None,
        known_sources: frozenset[int] | None = None,
    ) -> None:
        self.name = name
        self.interface = interface
        self.channel = channel
        self.protocol = protocol
        self.own_address = own_address
        self.bitrate = bitrate
        self.bus_kwargs = dict(bus_kwargs or {})
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._clock = clock
        self._log = (logger or log).bind(can=f"{interface}:{channel}", bus=name)
        # Source addresses of pack locations other buses serve: their frames here are
        # rejected as wrong_bus (a miswired pack, or a node pretending to be one). None:
        # this bus serves every location.
        self.accept_sources = accept_sources
        self._foreign: frozenset[int] | None = (
            None if accept_sources is None else (known_sources or frozenset()) - accept_sources)
        self.state = "closed"
        # on_state(state, detail): the bus's state changed (BUS_STATES)
        self.on_state: Callable[[str, str], None] | None = None
        self._limited = RateLimitedWarnings(self._log, LOG_INTERVAL)
        self.on_message: Callable[[Decoded, float], None] | None = None
        self.on_reject: Callable[[str, int, bytes], None] | None = None
        # on_nack(source, pgn, control, t): a pack refused one of the station's Requests
        self.on_nack: Callable[[int, int, str, float], None] | None = None
        self._request_pgn = _pgn_or_none(protocol, REQUEST)
        self._ack_pgn = _pgn_or_none(protocol, ACKNOWLEDGEMENT)
        self._ack_controls = (protocol.choices(ACKNOWLEDGEMENT, "AckControl")
                              if self._ack_pgn is not None else {})
        self._nack_limiter = RateLimiter(NACK_REPEAT_S, clock=clock)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.tp = j1939_tp.BamReceiver(t1_s=_t1(protocol), sizes=protocol.long_messages(),
                                       on_drop=self._tp_drop)
        self.tp_cm = j1939_tp.ConnectionReceiver(own_address, t1_s=_t1(protocol),
                                                 sizes=protocol.long_messages(),
                                                 on_drop=self._tp_drop)
        self._tp_timer: asyncio.TimerHandle | None = None
        self._tp_timer_at = float("inf")
        self._bus: can.BusABC | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_stop = threading.Event()
        self._fd: int | None = None
        self._closing = False
        self._stopped = asyncio.Event()
        self._exited = asyncio.Event()
        self._reader_error: Exception | None = None
        self._went_bad = float("-inf")  # clock() of the last bus-off
        self._told_down = False  # on_state has been told the bus is down
        self.retry_s = 0.0  # the last wait before a reopen (back-off)

    def counters(self) -> dict[str, Any]:
        """The operator's summary: state, frames received, decoded, rejected (by kind),
        ignored, sent, errors (error frames by class, bus errors, send errors)."""
        st = self.stats
        rejected = {k: st[k] for k in REJECT_KINDS if st.get(k)}
        rejected.update({k: v for k, v in st.items() if k.startswith("tp_") and v
                         and k not in ("tp_frames", "tp_completed")})
        return {
            "state": self.state, "interface": self.interface, "channel": self.channel,
            "received": st["received"], "decoded": st["decoded"], "rejected": rejected,
            "ignored": st["own"] + st["other_destination"], "sent": st["sent"],
            "send_errors": st["send_errors"], "bus_errors": st["bus_errors"],
            "opens": st["opens"], "error_frames": st["error_frames"],
            "errors": {k.removeprefix("err_"): v for k, v in st.items()
                       if k.startswith("err_") and v},
            "error_passive": st["error_passive"], "bus_off": st["bus_off"],
        }

    def _set_state(self, state: str, detail: str, *, force: bool = False) -> None:
        if state == self.state and not force:
            return
        old, self.state = self.state, state
        self._told_down = state in BUS_DOWN
        if state == "active":
            self._log.info("can.state", state=state, was=old, detail=detail)
        else:
            self._limited.warning(f"can.state_{state}", state=state, was=old, detail=detail)
        if self.on_state is not None:
            self.on_state(state, detail)

    @property
    def is_open(self) -> bool:
        return self._bus is not None

    async def run(self) -> None:
        """Open the bus and deliver frames until cancelled or closed; a bus that fails is
        reopened with exponential back-off."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._stopped.clear()
        self._exited.clear()
        backoff = self.backoff_min
        try:
            while not self._closing:
                try:
                    self._open()
                except (can.CanError, OSError, ValueError) as exc:
                    self.stats["bus_errors"] += 1
                    self._limited.warning("can.open_failed", error=str(exc))
                    if self.state != "bus_off":  # told once, the first time it fails
                        self._set_state("closed", f"open failed: {exc}",
                                        force=not self._told_down)
                else:
                    reader = "loop" if self._fd is not None else "thread"
                    self._log.info("can.opened", reader=reader)
                    self.stats["opens"] += 1
                    opened_at = self._clock()
                    self._set_state("active", "opened")
                    assert self._failed is not None
                    await self._failed  # done on a bus error or close(); raises a callback's error
                    self._stop_reader()
                    # a bus that goes bus-off again soon after it was opened keeps backing
                    # off; one that ran for a while (or failed otherwise) starts again from
                    # the shortest wait
                    if self.state != "bus_off" or \
                            self._went_bad - opened_at > self.backoff_max:
                        backoff = self.backoff_min
                    if self._closing:
                        break  # closed by its owner: no state change to report
                    if self.state != "bus_off":
                        self._set_state("closed", f"bus error: {self._reader_error}")
                    self._limited.warning("can.bus_error", error=str(self._reader_error))
                self.retry_s = backoff
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), backoff)
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            self._stop_reader()
            self.state = "closed"  # quietly: the owner is stopping it
            self._exited.set()

    def send(self, name: str, values: dict[str, Any], da: int | None = None) -> None:
        """Send one message with own_address as source. Bus errors are counted and logged,
        never raised; encoding errors (unknown name, value out of range) are the caller's
        bug and raise."""
        can_id, data = self.protocol.encode(name, values, self.own_address, da)
        bus = self._bus
        if bus is None:
            self.stats["send_errors"] += 1
            self._limited.warning("can.send_error", message=name, error="bus not open")
            return
        msg = can.Message(arbitration_id=can_id, data=data, is_extended_id=True)
        try:
            bus.send(msg, timeout=0)  # never block the loop; a full queue is an error
        except can.CanError as exc:
            self.stats["send_errors"] += 1
            self._limited.warning("can.send_error", message=name, error=str(exc))
            return
        self.stats["sent"] += 1

    async def close(self) -> None:
        """Stop reading and shut the bus down; run() returns."""
        self._closing = True
        self._stopped.set()
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), 1.0)
        self._stop_reader()

    # ------------------------------------------------------------------ reader

    def _open(self) -> None:
        loop = self._loop
        assert loop is not None
        bus = open_can_bus(self.interface, self.channel, bitrate=self.bitrate, **self.bus_kwargs)
        self._bus = bus
        self._failed = loop.create_future()
        self._reader_error = None
        try:
            fd = bus.fileno()
        except NotImplementedError:
            fd = -1
        if fd >= 0:
            self.receive_buffer = grow_receive_buffer(fd, RECEIVE_BUFFER_BYTES)
            loop.add_reader(fd, self._drain, bus)
            self._fd = fd
        else:
            self._thread_stop = threading.Event()
            self._thread = threading.Thread(
                target=self._rx_thread,
                args=(bus, loop, self._thread_stop),
                name=f"PackBus {self.interface}:{self.channel}",
                daemon=True,
            )
            self._thread.start()

    def _stop_reader(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self._thread is not None:
            self._thread_stop.set()
            self._thread.join(THREAD_RECV_TIMEOUT * 4)
            self._thread = None
        if self._bus is not None:
            bus, self._bus = self._bus, None
            with contextlib.suppress(can.CanError, OSError):
                bus.shutdown()

    def _drain(self, bus: can.BusABC) -> None:
        """Loop reader for buses with a file descriptor: take what is there, then return."""
        for _ in range(DRAIN_LIMIT):
            try:
                msg = bus.recv(0)
            except MalformedDatagram as exc:
                self._malformed(exc)
                continue
            except (can.CanError, OSError) as exc:
                self._reader_failed(exc)
                return
            if msg is None:
                return
            self._deliver(msg, self._clock())
            if self._failed is None or self._failed.done():
                return

    def _rx_thread(
        self, bus: can.BusABC, loop: asyncio.AbstractEventLoop, stop: threading.Event
    ) -> None:
        """Thread reader for buses without a file descriptor (virtual)."""
        try:
            while not stop.is_set():
                try:
                    msg = bus.recv(THREAD_RECV_TIMEOUT)
                except MalformedDatagram as exc:
                    loop.call_soon_threadsafe(self._malformed, exc)
                    continue
                if msg is not None:
                    loop.call_soon_threadsafe(self._deliver, msg, self._clock())
        except (can.CanError, OSError) as exc:
            if not stop.is_set():
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(self._reader_failed, exc)
        except RuntimeError:
            pass  # the loop closed under us: nobody left to deliver to

    def _malformed(self, exc: MalformedDatagram) -> None:
        """A datagram that is not a CAN frame: dropped and counted, the bus stays open (a
        reopen would lose the packs' frames meanwhile, and anyone may send one)."""
        self.stats["malformed_datagrams"] += 1
        self._limited.warning("can.malformed_datagram", error=str(exc),
                              malformed_datagrams=self.stats["malformed_datagrams"])

    def _reader_failed(self, exc: Exception) -> None:
        self._reader_error = exc
        self.stats["bus_errors"] += 1
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)  # a broken socket stays readable: stop spinning
            self._fd = None
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(None)

    def _deliver(self, msg: can.Message, t: float) -> None:
        if self._bus is None or self._failed is None or self._failed.done():
            return  # closing or failed: frames still queued are dropped
        try:
            self._handle(msg, t)
        except Exception as exc:  # a callback raised: end run() with it
            self._failed.set_exception(exc)

    def _handle(self, msg: can.Message, t: float) -> None:
        st = self.stats
        st["received"] += 1
        can_id = msg.arbitration_id
        if msg.is_error_frame:
            self._error_frame(can_id, bytes(msg.data))
            return
        if not msg.is_extended_id:
            self._reject("not_extended", msg, "11-bit identifier")
            return
        if msg.is_remote_frame:
            self._reject("remote", msg, "remote frame")
            return
        if can_id & 0xFF == self.own_address:
            st["own"] += 1  # our own frames echoed back (udp_multicast, loopback)
            return
        if self._foreign is not None and can_id & 0xFF in self._foreign:
            self._reject("wrong_bus", msg, f"source {can_id & 0xFF:#04x} is served by "
                         f"another bus, not {self.name}")
            return
        data = bytes(msg.data)
        if self.tp.open_transfers:
            self.tp.expire(t)  # T1 runs whatever else is on the bus
        if (can_id >> 16) & 0x3FF in TRANSPORT_DP_PF:  # the id is split once, by decode
            _, pgn, sa, da = split_id(can_id)
            self._transport(pgn, sa, da, can_id, data, t)
            return
        try:
            decoded = self.protocol.decode(can_id, data)
        except FrameError as exc:
            self._reject(exc.kind, msg, str(exc))
            return
        if decoded.destination not in (None, self.own_address, GLOBAL_DA):
            st["other_destination"] += 1  # J1939: a PDU1 message for another node
            return
        st["decoded"] += 1
        if decoded.pgn == self._request_pgn:
            self._requested(decoded)
            return
        if decoded.pgn == self._ack_pgn:
            self._acknowledged(decoded, t)
            return
        if self.on_message is not None:
            self.on_message(decoded, t)

    def _error_frame(self, can_id: int, data: bytes) -> None:
        """An error frame from the CAN controller: counted by class, logged (rate-limited),
        and the bus state it reports taken; bus-off closes the bus, which run() reopens."""
        st = self.stats
        st["error_frames"] += 1
        classes, state = classify_error_frame(can_id, data)
        for name in classes:
            st[f"err_{name}"] += 1
        self._limited.warning("can.error_frame", id=f"{can_id:#x}", classes=classes,
                              data=data.hex(), error_frames=st["error_frames"])
        if state is None or state == self.state or self.state in BUS_DOWN:
            return
        detail = "+".join(classes) + (f" ctrl={data[1]:#04x}" if len(data) > 1 and data[1]
                                      else "")
        if state == "bus_off":
            st["bus_off"] += 1
            self._went_bad = self._clock()
            self._set_state("bus_off", detail)
            self._reader_failed(can.CanOperationError(f"bus-off ({detail})"))
            return
        if state == "passive":
            st["error_passive"] += 1
        elif state == "warning":
            st["error_warning"] += 1
        self._set_state(state, detail)

    def _requested(self, req: Decoded) -> None:
        """A J1939 Request to the station (or to every node). The station sends nothing on
        request: one addressed to it is answered with a NACK, to the global address with
        the requester in byte 5; a global one is not answered (J1939-21)."""
        st = self.stats
        st["requests_received"] += 1
        if req.destination != self.own_address or self._ack_pgn is None:
            return
        pgn = int(req.signals["RequestedPgn"])
        if req.source > MAX_NODE_ADDRESS or pgn > 0x3FFFF:
            return  # no node can be answered, or no PGN was asked for
        if self._nack_limiter.allow((req.source, pgn)) is None:
            return
        self.send(ACKNOWLEDGEMENT, self.protocol.nack_values(pgn, req.source),
                  da=GLOBAL_DA)
        st["nacks_sent"] += 1

    def _acknowledged(self, ack: Decoded, t: float) -> None:
        """An Acknowledgement: a negative one for the station's Request is counted, logged
        and told to on_nack; the station waits for nothing more from that Request."""
        s = ack.signals
        code = int(s["AckControl"])
        control = self._ack_controls.get(code, f"code_{code}")
        if int(s["AckAddress"]) != self.own_address or control == "ack":
            self.stats["acks_other"] += 1
            return
        self.stats["nacks_received"] += 1
        pgn = int(s["AckPgn"])
        self._limited.warning("can.request_refused", source=f"{ack.source:#04x}",
                              pgn=f"{pgn:#06x}", control=control,
                              nacks_received=self.stats["nacks_received"])
        if self.on_nack is not None:
            self.on_nack(ack.source, pgn, control, t)

    def _transport(self, pgn: int, sa: int, da: int | None, can_id: int, data: bytes,
                   t: float) -> None:
        st = self.stats
        if da not in (None, self.own_address, j1939_tp.GLOBAL_DA):
            st["other_destination"] += 1  # a connection between two other nodes
            return
        st["tp_frames"] += 1
        if da == self.own_address and (pgn == j1939_tp.TP_DT_PGN or data[:1] != _BAM):
            # connection mode to the station (a BAM sent to one node is the BAM
            # receiver's to refuse: not_bam)
            transfer, frames = self.tp_cm.feed(pgn, sa, data, t)
            self._tp_out(frames)
            how = "rts_cts"
        else:
            transfer, how = self.tp.feed(pgn, sa, da, data, t), "bam"
        if transfer is None:
            return
        st["tp_completed"] += 1
        try:
            decoded = self.protocol.decode_transfer(
                transfer.pgn, sa, transfer.payload, self.own_address if how == "rts_cts" else None)
        except FrameError as exc:
            self.stats[exc.kind] = self.stats.get(exc.kind, 0) + 1
            self._limited.warning(f"can.{exc.kind}", id=f"{can_id:#x}", transport=how,
                                  size=len(transfer.payload), why=str(exc))
            if self.on_reject is not None:
                self.on_reject(exc.kind, can_id, transfer.payload)
            return
        st["decoded"] += 1
        if self.on_message is not None:
            self.on_message(decoded, t)

    def _tp_out(self, frames: list[j1939_tp.Frame]) -> None:
        """Send what the connection-mode receiver answers, then re-arm its timer."""
        if frames and self._bus is not None:
            for can_id, data in frames:
                self._send_raw(can_id, data, "TP.CM")
        cm = self.tp_cm.stats
        for key in j1939_tp.CM_COUNTERS:
            self.stats[key] = cm[key]
        self._tp_arm()

    def _tp_arm(self) -> None:
        """A loop timer for the connection-mode timers (T1, T2, Th): they run whether or
        not another frame comes."""
        deadline = self.tp_cm.next_deadline()
        loop = self._loop
        if deadline is None or loop is None or deadline >= self._tp_timer_at:
            return
        if self._tp_timer is not None:
            self._tp_timer.cancel()
        self._tp_timer_at = deadline
        self._tp_timer = loop.call_later(max(0.0, deadline - self._clock()), self._tp_tick)

    def _tp_tick(self) -> None:
        self._tp_timer, self._tp_timer_at = None, float("inf")
        self._tp_out(self.tp_cm.poll(self._clock()))

    def _send_raw(self, can_id: int, data: bytes, what: str) -> bool:
        """One frame as it is (a transport answer); counted like send(), never raises."""
        bus = self._bus
        if bus is None:
            self.stats["send_errors"] += 1
            self._limited.warning("can.send_error", message=what, error="bus not open")
            return False
        try:
            bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True),
                     timeout=0)
        except can.CanError as exc:
            self.stats["send_errors"] += 1
            self._limited.warning("can.send_error", message=what, error=str(exc))
            return False
        self.stats["sent"] += 1
        return True

    def _tp_drop(self, drop: j1939_tp.Drop) -> None:
        key = f"tp_{drop.reason}"
        self.stats[key] = self.stats.get(key, 0) + 1
        pgn = None if drop.pgn is None else f"{drop.pgn:#06x}"
        self._limited.warning(f"can.{key}", source=f"{drop.source:#04x}", pgn=pgn,
                              why=drop.detail)

    def _reject(self, kind: str, msg: can.Message, why: str) -> None:
        self.stats[kind] = self.stats.get(kind, 0) + 1
        data = bytes(msg.data)
        self._limited.warning(f"can.{kind}", id=f"{msg.arbitration_id:#x}", dlc=len(data), why=why)
        if self.on_reject is not None:
            self.on_reject(kind, msg.arbitration_id, data)


_BAM = bytes([j1939_tp.CM_BAM])


def grow_receive_buffer(fd: int, size: int) -> int:
    """Ask for a receive queue of `size` bytes on the socket `fd` (SO_RCVBUFFORCE where
    allowed, CAP_NET_ADMIN; else SO_RCVBUF, which net.core.rmem_max caps). Returns the size
    the kernel granted (it doubles a request for its bookkeeping); 0 for an fd that is no
    socket (an interface reading a device). Never raises: the default queue still works."""
    try:
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a dup of fd
            for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
                if opt is None:
                    continue
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                    break
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError:
        return 0


def _pgn_or_none(protocol: PackProtocol, name: str) -> int | None:
    """The PGN of a message the DBC may lack (an older DBC without the Acknowledgement)."""
    try:
        return protocol.pgn_of(name)
    except KeyError:
        return None


def _t1(protocol: PackProtocol) -> float:
    """T1 of the BAM receiver: the DBC's RxTimeoutMs of TP_DT, else J1939-21's 750 ms."""
    try:
        t1 = protocol.timeout_s("TP_DT")
    except KeyError:
        t1 = None
    return t1 if t1 is not None else j1939_tp.T1_S
