"""The Prometheus metrics of swapd (docs/operations.md, "Metrics").

One `CollectorRegistry` per daemon (never the process-wide one: several daemons may share a
process), served over HTTP by prometheus_client's own server thread, so a scrape never
runs in the event loop. What that thread reads must be safe to read from another thread:
prometheus_client's metric objects (they lock), and at scrape time only plain attributes
(floats, strings) and copies of dicts of ints (`dict(d)` of a dict is one step under the
GIL in CPython). Everything else (link state, the rack, the outbox) is copied into gauges
by the daemon at a slow tick, in the loop.

Durations are real seconds of this process (monotonic clock differences of the events'
`t`): on a station that is the machine's time; on a simulator running at speed N the
simulated mechanics took N times as long (the journal's summary reports those).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from drivers.bms import j1939_tp
from drivers.bms.canbus import BUS_STATES, REJECT_KINDS
from station.commands import Origin
from station.events import (
    Alarm,
    CommandAccepted,
    CommandRefused,
    Event,
    Fault,
    Inhibit,
    StateChanged,
    StepDone,
    StepStarted,
    SwapEnded,
)
from station.interlocks import INTERLOCKS
from station.packml import State
from station.sequence import STEP_NAMES

# seconds: a step takes 1-60 s on a station, a whole swap about 150 s
SHUTDOWN_POLL_S = 0.1  # the endpoint thread notices a stop this fast (10 wake-ups a second)
DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0,
                    600.0)
SWAP_OUTCOMES = ("completed", "aborted", "stopped")  # SwapEnded.outcome
COMMAND_RESULTS = ("accepted", "refused")
# station/events.py Alarm.alarm
PACK_ALARMS = ("fault_flag", "over_temp", "temp_rise", "insulation", "charge_stalled",
               "identity_conflict", "ratings_conflict", "soc_implausible",
               "readings_implausible", "overcurrent", "alarms_suppressed", "disk_low",
               "can_error_passive", "can_bus_off", "can_bus_down")
# station/core.py rack_status(): a slot's state; chemistry as the DBC names it
SLOT_STATES = ("locked_out", "empty", "untrusted", "unknown", "isolated", "ready",
               "charging", "waiting")
CHEMISTRIES = ("nmc", "lfp", "sodium_ion", "unknown")
# the frames a bus counts (drivers/bms/canbus.py stats), by kind
CAN_FRAME_KINDS = ("received", "decoded", "ignored", "rejected", "sent", "send_error",
                   "error_frame")
CAN_REJECT_REASONS = (*REJECT_KINDS, *(f"tp_{r}" for r in j1939_tp.DROP_REASONS),
                      *(f"tp_{r}" for r in j1939_tp.CM_DROP_REASONS))
INTERLOCK_IDS = tuple(il.id for il in INTERLOCKS)
INHIBIT_PREFIX = "interlocks active: "  # station/core.py: the start inhibit naming them
ORIGINS = tuple(o.value for o in Origin)


def origin_label(origin: str) -> str:
    """A command event's origin is "<Origin>: <sender>" (station/commands.py): the label is
    the Origin alone; the sender is free text and would make a series per client."""
    head = origin.split(": ", 1)[0]
    return head if head in ORIGINS else "other"


class BusLike(Protocol):
    """What the collector reads of a drivers.bms.canbus.PackBus."""

    state: str
    stats: dict[str, int]


class _Live(Collector):
    """Read at scrape time, in the HTTP thread: the CAN buses' own counters and the age of
    the PLC inputs. Only attribute reads and dict copies (see the module's docstring)."""

    def __init__(self, buses: Mapping[str, BusLike], plc_read_at: Callable[[], float | None],
                 clock: Callable[[], float]) -> None:
        self._buses = dict(buses)
        self._plc_read_at = plc_read_at
        self._clock = clock

    def collect(self) -> Iterator[Any]:
        frames = CounterMetricFamily("swapd_can_frames", "CAN frames counted by the bus",
                                     labels=["bus", "kind"])
        rejected = CounterMetricFamily("swapd_can_rejected_frames",
                                       "CAN frames rejected by the bus, by reason",
                                       labels=["bus", "reason"])
        state = GaugeMetricFamily("swapd_can_bus_state", "1 for the bus's current state",
                                  labels=["bus", "state"])
        for name, bus in self._buses.items():
            st = dict(bus.stats)  # a copy: the loop's thread keeps counting
            now_state = bus.state
            reasons = {r: st.get(r, 0) for r in CAN_REJECT_REASONS}
            reasons.update({k: v for k, v in st.items() if k.startswith("tp_")
                            and k not in ("tp_frames", "tp_completed")})
            kinds = {"received": st.get("received", 0), "decoded": st.get("decoded", 0),
                     "ignored": st.get("own", 0) + st.get("other_destination", 0),
                     "rejected": sum(reasons.values()), "sent": st.get("sent", 0),
                     "send_error": st.get("send_errors", 0),
                     "error_frame": st.get("error_frames", 0)}
            for kind, n in kinds.items():
                frames.add_metric([name, kind], n)
            for reason, n in sorted(reasons.items()):
                rejected.add_metric([name, reason], n)
            for s in BUS_STATES:
                state.add_metric([name, s], 1.0 if s == now_state else 0.0)
        yield frames
        yield rejected
        yield state
        read_at = self._plc_read_at()
        yield GaugeMetricFamily(
            "swapd_plc_input_age_seconds", "age of the last PLC input read (NaN: none yet)",
            value=float("nan") if read_at is None else max(0.0, self._clock() - read_at))


class StationMetrics:
    """The metrics of one daemon: a live event sink (`on_event`), setters for what the
    daemon polls, and the HTTP endpoint (`start`, `stop`)."""

    def __init__(self, *, buses: Mapping[str, BusLike],
                 plc_read_at: Callable[[], float | None], clock: Callable[[], float],
                 info: Mapping[str, str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.swaps = Counter("swapd_swaps", "swaps ended, by outcome", ["outcome"], registry=r)
        self.swap_duration = Histogram(
            "swapd_swap_duration_seconds", "completed swaps: identify to the car released "
            "(real seconds of this process)", buckets=DURATION_BUCKETS, registry=r)
        self.step_duration = Histogram(
            "swapd_step_duration_seconds", "steps done: started to done (real seconds of "
            "this process)", ["step"], buckets=DURATION_BUCKETS, registry=r)
        self.interlock_trips = Counter("swapd_interlock_trips", "interlocks tripped",
                                       ["interlock"], registry=r)
        self.pack_alarms = Counter("swapd_pack_alarms", "alarms raised (packs, CAN buses, "
                                   "the station's disk)", ["alarm"], registry=r)
        self.command_results = Counter("swapd_command_results", "commands by origin and result",
                                       ["origin", "result"], registry=r)
        self.packml_state = Gauge("swapd_packml_state", "1 for the current PackML state",
                                  ["state"], registry=r)
        self.plc_connected = Gauge("swapd_plc_connected", "1 while the PLC link is up",
                                   registry=r)
        self.plc_reconnects = Counter("swapd_plc_reconnects", "PLC connection attempts after a "
                                      "failure", registry=r)
        self.plc_round_trip = Gauge(
            "swapd_plc_read_round_trip_seconds", "the last PLC input read: request to reply "
            "(NaN: not measured, OPC UA pushes its inputs)", registry=r)
        self.packs = Gauge("swapd_packs", "rack slots by state and chemistry",
                           ["state", "chemistry"], registry=r)
        self.outbox_backlog = Gauge("swapd_outbox_backlog_events", "journal events the cloud "
                                    "has not acknowledged (0: no cloud link)", registry=r)
        if info:
            Info("swapd", "this swapd", registry=r).info(dict(info))
        r.register(_Live(buses, plc_read_at, clock))
        # every label combination known up front exists at zero from the start
        for outcome in SWAP_OUTCOMES:
            self.swaps.labels(outcome)
        for step in STEP_NAMES:
            self.step_duration.labels(step)
        for il in INTERLOCK_IDS:
            self.interlock_trips.labels(il)
        for alarm in PACK_ALARMS:
            self.pack_alarms.labels(alarm)
        for origin in (*ORIGINS, "other"):
            for result in COMMAND_RESULTS:
                self.command_results.labels(origin, result)
        for s in State:
            self.packml_state.labels(s.label)
        self.set_packs([])
        self.plc_round_trip.set(float("nan"))
        self._reconnects_seen = 0
        self._started: dict[str, float] = {}  # swap_id -> when it began (identify)
        self._steps: dict[tuple[str, str], float] = {}  # (swap_id, step) -> started
        self._inhibiting: frozenset[str] = frozenset()  # interlocks the start inhibit names
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None  # the bound port once started

    # ---- the event sink (in the loop) -----------------------------------------------
    def on_event(self, ev: Event) -> None:
        match ev:
            case StepStarted():
                self._steps[(ev.swap_id, ev.step)] = ev.t
                self._started.setdefault(ev.swap_id, ev.t)  # identify comes first
            case StepDone():
                t0 = self._steps.pop((ev.swap_id, ev.step), None)
                if t0 is not None:
                    self.step_duration.labels(ev.step).observe(max(0.0, ev.t - t0))
            case SwapEnded():
                self.swaps.labels(ev.outcome).inc()
                t0 = self._started.pop(ev.swap_id, None)
                if ev.outcome == "completed" and t0 is not None:
                    self.swap_duration.observe(max(0.0, ev.t - t0))
                for key in [k for k in self._steps if k[0] == ev.swap_id]:
                    del self._steps[key]
            case Fault() if ev.code in INTERLOCK_IDS:  # an interlock's abort or hold
                self.interlock_trips.labels(ev.code).inc()
            case Inhibit():  # the start held back: count the interlocks newly named
                named: frozenset[str] = frozenset()
                if ev.reason is not None and ev.reason.startswith(INHIBIT_PREFIX):
                    named = frozenset(ev.reason.removeprefix(INHIBIT_PREFIX).split(", "))
                for il in sorted((named - self._inhibiting) & set(INTERLOCK_IDS)):
                    self.interlock_trips.labels(il).inc()
                self._inhibiting = named
            case Alarm():
                self.pack_alarms.labels(ev.alarm).inc()
            case CommandAccepted():
                self.command_results.labels(origin_label(ev.origin), "accepted").inc()
            case CommandRefused():
                self.command_results.labels(origin_label(ev.origin), "refused").inc()
            case StateChanged():
                self.set_state(ev.new)
            case _:
                pass

    # ---- what the daemon polls (in the loop) -----------------------------------------
    def set_state(self, label: str) -> None:
        for s in State:
            self.packml_state.labels(s.label).set(1.0 if s.label == label else 0.0)

    def set_plc(self, connected: bool, reconnects: int, round_trip_s: float | None) -> None:
        self.plc_connected.set(1.0 if connected else 0.0)
        if reconnects > self._reconnects_seen:  # the link's own count: add what is new
            self.plc_reconnects.inc(reconnects - self._reconnects_seen)
            self._reconnects_seen = reconnects
        self.plc_round_trip.set(float("nan") if round_trip_s is None else round_trip_s)

    def set_packs(self, slots: Iterable[Mapping[str, Any]]) -> None:
        """The rack from core.rack_status()["slots"]: slots counted by state and chemistry."""
        counts = {(s, c): 0 for s in SLOT_STATES for c in CHEMISTRIES}
        for slot in slots:
            chem = slot.get("chemistry") or "unknown"
            key = (str(slot.get("state")), chem if chem in CHEMISTRIES else "unknown")
            counts[key] = counts.get(key, 0) + 1
        for (state, chem), n in counts.items():
            self.packs.labels(state, chem).set(n)

    def set_outbox_backlog(self, events: int) -> None:
        self.outbox_backlog.set(max(0, events))

    # ---- the endpoint ----------------------------------------------------------------
    def start(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0: any free port) in a thread; returns the port.
        OSError when it cannot bind. prometheus_client's own start_http_server polls for
        its shutdown every 0.5 s, which a stop then waits out: this loop polls every
        SHUTDOWN_POLL_S."""
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client import make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape is not a log line

        server = make_server(host, port, make_wsgi_app(self.registry), ThreadingWSGIServer,
                             handler_class=QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="metrics-http",
                                  kwargs={"poll_interval": SHUTDOWN_POLL_S}, daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # waits for serve_forever to return
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
