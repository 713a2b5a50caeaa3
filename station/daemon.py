"""swapd: wires the drivers to the core, one asyncio process.

Scan loop: wait for new input (or a tick), run the core once, journal its events, then
write its outputs. A new PLC command is written at once (write_now) so the controller's
dead time between steps is one scan, not one poll period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from drivers.bms.adapter import BmsAdapter, pack_summary
from drivers.bms.canbus import BUS_BACK_AFTER_S, BUS_DOWN, PackBus
from drivers.bms.commander import PackCommander
from drivers.bms.details import DetailRequester
from drivers.bms.protocol import Decoded, PackProtocol
from drivers.plc.contract import load_contract
from drivers.plc.link import PlcLink
from drivers.plc.registry import create_link
from station.buslayout import addresses
from station.cloud.link import CloudLink, disk_free_mb
from station.commands import CommandEntry, CommandRequest, CommandResult, Origin
from station.config import StationConfig
from station.core import IDENTIFY_KINDS, CommandRefused, Decision, ResumePoint, StationCore
from station.eventbus import EventBus
from station.events import (
    Alarm,
    Event,
    Fault,
    Recovery,
    StateChanged,
    StepStarted,
    SwapEnded,
    SwapStarted,
)
from station.image import Location, ProcessImage, StopRequest
from station.journal import Journal
from station.local_api import LocalApiServer, handle_request
from station.logs import bind_swap
from station.metrics import StationMetrics
from station.pack_commands import PackCommandKind, PackRequest
from station.pack_trust import charge_granted_ah
from station.packml import Cmd, State
from station.plan import PackInfo, SwapPlan
from station.recovery import Interrupted
from station.scan_wake import ScanWake
from station.sd_notify import SystemdNotifier, status_line
from station.sequence import SEQUENCE, step_index

log = structlog.get_logger("swapd")

TICK_S = 0.05  # scan at least this often, for timeouts and staleness
# A rising stop request goes out before its decision is journaled: the scan waits this long
# at most for the PLC to acknowledge it (a PLC that does not answer must not hold back the
# record; the write goes on, and the link's cycle writes the outputs again anyway).
STOP_ACK_WAIT_S = 0.1
STOP_SCAN_S = 5.0  # at shutdown the scan finishes its decision within this, else it is cut
STOP_TASKS_S = 5.0  # the other tasks' (links, writes) cancellation may take this long
CLOUD_DRAIN_S = 2.0  # at shutdown the cloud link may deliver its backlog for this long
DISK_CHECK_S = 30.0  # free space under the journal is checked this often
METRICS_TICK_S = 1.0  # the metrics of polled things (PLC link, rack, outbox) this often
SOFTWARE_VERSION = "0.1.0"


CLEAN_END_STATES = (None, "Idle", "Resetting", "Complete", "Completing")


def swap_plan(swap: Any) -> SwapPlan:
    """A swap's plan from its journal row."""
    return SwapPlan(swap["swap_id"], int(swap["vehicle_token"]),
                    PackInfo(**json.loads(swap["pack_out"])),
                    PackInfo(**json.loads(swap["pack_in"])),
                    int(swap["store_slot"]), int(swap["fetch_slot"]), 0.0,
                    vin=swap["vin"])  # the journal has the column (added to older ones)


def interrupted_swap(journal: Journal) -> Interrupted | None:
    """The last swap, when it ended before its end: its plan and the step it was in."""
    row = journal.interrupted_swap()
    if row is None:
        return None
    return Interrupted(swap_plan(row), row["last_step"], str(row["outcome"]))


def unfinished_maintenance(journal: Journal) -> dict[str, Any] | None:
    """The last maintenance command the journal shows started and never ended (done or
    failed): swapd stopped or died while it ran. Its maintenance_started data, or None."""
    row = journal.db.execute(
        "SELECT kind, data FROM events WHERE kind IN ('maintenance_started', "
        "'maintenance_done', 'maintenance_failed') ORDER BY id DESC LIMIT 1").fetchone()
    if row is None or row["kind"] != "maintenance_started":
        return None
    data: dict[str, Any] = json.loads(row["data"])
    return data


def resume_point(swap: Any, steps: list[Any]) -> ResumePoint:
    """Where an unfinished swap stands, from its journal rows."""
    plan = swap_plan(swap)
    last = steps[-1] if steps else None
    if last is None or last["step"] == "identify":
        index = 0
    else:
        index = step_index(last["step"]) + (1 if last["done_mono"] is not None else 0)
    return ResumePoint(plan, min(index, len(SEQUENCE) - 1))


def describe_readback(p: dict[str, Any], cfg: StationConfig) -> str:
    """The machine as the PLC reports it, in words for the operator."""
    h = float(p.get("lift_height", 0) or 0)
    car = ("car lifted" if h >= cfg.sequence.swap_height_mm - cfg.sequence.height_tolerance_mm
           else "car down" if h <= cfg.sequence.height_tolerance_mm else f"lift at {h:.0f} mm")
    if not p.get("vehicle_present"):
        car = "no car on the platform"
    tight, n = int(p.get("bolts_tight", 0) or 0), int(p.get("bolt_count", 0) or 0)
    pos = float(p.get("shuttle_position", 0) or 0)
    shuttle = "home" if pos <= cfg.sequence.shuttle_home_tolerance_mm else f"at {pos:.0f} mm"
    load = "with a pack" if p.get("shuttle_pack_present") else "empty"
    bay = "pack in the bay" if p.get("vehicle_pack_present") else "bay empty"
    return f"{car}, {tight} of {n} bolts tight, {bay}, shuttle {shuttle} {load}"


# the PLC inputs the status shows (a bench tool plots them)
STATUS_INPUTS = ("lift_height", "shuttle_position", "stacker_slot", "vehicle_present",
                 "vehicle_pack_present", "shuttle_pack_present", "bolts_tight")


class Daemon:
    def __init__(
        self,
        cfg: StationConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: Callable[[Event], None] | None = None,
        link: PlcLink | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.protocol = PackProtocol(cfg.can.dbc)
        self.adapter = BmsAdapter(self.protocol)
        self.image = ProcessImage(pack_timeouts=self.adapter.timeouts())
        self.journal = Journal(cfg.journal.path)
        self.events = EventBus(self.journal)
        self.events.subscribe("log", self._log_event)
        if observer is not None:
            self.events.subscribe("observer", observer)
        state, reason, resume = self._recover()
        self._recovering = resume is not None
        self.core = StationCore(
            cfg, next_swap_number=self.journal.next_swap_number(), initial_state=state,
            reason=reason, resume=resume,
            charge_period_s=self.adapter.control_period_s(),
            last_seq=self.journal.last_command_seq(),
            locked_out={slot: f"{row['cause']}: {row['reason']}"
                        for slot, row in self.journal.active_lockouts().items()},
            authorisations=self.journal.authorisations(), power_cap=self.journal.power_cap(),
            reservations=self.journal.active_reservations(),
            unit_mode=self.journal.last_unit_mode() or "Production",
            interrupted=interrupted_swap(self.journal),
        )
        self.commands = CommandEntry(self.core, self.journal, self.apply, clock)
        self.link: PlcLink = link or create_link(cfg.plc, clock=clock)
        self.link.on_inputs = self._on_inputs
        self.link.on_connection = self._on_connection
        self.buses = self._open_buses(cfg, clock)
        self.bus = next(iter(self.buses.values()))  # the first (with one bus: the bus)
        self.packs = PackCommander(self.bus, self.adapter, clock=clock, routes={
            sa: self.buses[name] for name, sas in self._bus_sources.items() for sa in sas}
            if len(self.buses) > 1 else None)
        # the packs' nameplates and cell arrays, asked by address (J1939-21 RTS/CTS)
        self.details = DetailRequester(self.adapter, self._request_detail)
        self.notifier = SystemdNotifier()
        self.started_wall = time.time()
        self.metrics: StationMetrics | None = None
        if cfg.metrics.enabled:
            self.metrics = StationMetrics(
                buses=self.buses, plc_read_at=lambda: self.image.plc_read_at, clock=clock,
                info={"station": cfg.station.id, "version": SOFTWARE_VERSION,
                      "plc_protocol": cfg.plc.protocol})
            self.metrics.set_state(self.core.state.label)
            self.events.subscribe("metrics", self.metrics.on_event)
        self.cloud: CloudLink | None = None
        if cfg.cloud.enabled:  # a key file readable by others stops the start (CloudConfigError)
            self.cloud = CloudLink(
                cfg, self.journal, status=self.core.status, rack=self._rack_status,
                submit=self.submit, record=self._record_events, contracts=self._contracts(),
                software_version=SOFTWARE_VERSION, started_wall=self.started_wall)
            self.events.subscribe("cloud", self.cloud.notify)
        unfinished = unfinished_maintenance(self.journal)
        if unfinished is not None:
            # never resumed: recorded failed, and the machine kept stopped (cat2)
            log.warning("recovery.unfinished_maintenance_command", seq=unfinished.get("seq"),
                        command=unfinished.get("command"))
            d = self.core.maintenance.after_restart(unfinished, clock())
            self.events.publish(d.events)
            if d.outputs is not None:
                self.link.set_outputs(d.outputs)
        self._disk_low = False
        self._wake = asyncio.Event()
        self._scan_wake = ScanWake(cfg)
        # _on_inputs: a read wakes the scan when it can change a decision (issue 11)
        self._plc_first_read = True
        self._plc_gap_s = 2 * cfg.plc.link_section().update_period_s  # more: a read missed
        self._scanned_state = self.core.state  # the state the last scan began in
        self._last_scan = clock()
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False  # run() is stopping: the scan loop ends after its decision
        self._apply_lock = asyncio.Lock()  # decisions are journaled in the order taken
        self._stop_value: Any = self.core.outputs["stop_request"]  # of the last decision
        self._stop_level = StopRequest(self._stop_value).severity
        self._reset_pending = (state == State.STOPPED and self.core.reason is None
                               and cfg.operation.reset_on_start)

    # ---- start-up ---------------------------------------------------------------------
    def _open_buses(self, cfg: StationConfig, clock: Callable[[], float]) -> dict[str, PackBus]:
        """One PackBus per `[can]` bus. With several, each takes frames only from the
        addresses of the locations it serves (the bay's is the car's pack's and the car's):
        a known location's frame on another bus is rejected as wrong_bus."""
        self._bus_slots = cfg.can.served_slots()  # bus -> locations (0: bay, n: slot n)
        self._bus_sources = {name: addresses(slots) for name, slots in self._bus_slots.items()}
        known = frozenset().union(*self._bus_sources.values())
        several = len(self._bus_slots) > 1
        self._bus_alarmed: dict[str, str | None] = {}  # bus -> the bad state last alarmed
        self._bus_recovery: dict[str, asyncio.TimerHandle] = {}  # bus -> its "back" timer
        buses: dict[str, PackBus] = {}
        for b in cfg.can.bus_list():
            kwargs = {"port": b.udp_port} if b.interface == "udp_multicast" and b.udp_port \
                else None
            bus = PackBus(b.interface, b.channel, self.protocol, bitrate=b.bitrate, clock=clock,
                          bus_kwargs=kwargs, name=b.name,
                          accept_sources=self._bus_sources[b.name] if several else None,
                          known_sources=known)
            bus.on_message = self._on_message
            bus.on_state = functools.partial(self._on_bus_state, b.name)
            buses[b.name] = bus
        return buses

    def _recover(self) -> tuple[State, str | None, ResumePoint | None]:
        """Rebuild from the journal. A swap it shows unfinished means the last run ended
        mid-swap: hold it at the step it was in (the reason follows from the PLC's
        read-back) and never move again without an operator's unhold."""
        row = self.journal.unfinished_swap()
        if row is None:
            last = self.journal.last_state()
            if last not in CLEAN_END_STATES:
                return State.STOPPED, (f"previous run ended in {last}: check the machine, "
                                       "then reset"), None
            return State.STOPPED, None, None
        resume = resume_point(row, self.journal.steps(row["swap_id"]))
        # The pack to give may have charged in its slot since the plan read its SOC; if the
        # stacker has it now, this run never hears it there: the journal's grants are all
        # that bounds its SOC when it arrives in the car. The last grant may still be drawn
        # on until the PackControl timeout after now.
        until = time.time() + self.adapter.control_timeout_s()
        pack_in = resume.plan.pack_in.serial
        resume = dataclasses.replace(resume, granted_ah={pack_in: charge_granted_ah(
            self.journal.pack_grants(pack_in, resume.plan.swap_id), until,
            self.cfg.sequence.speed_factor)})
        step = SEQUENCE[resume.step_index].name
        log.warning("recovery.unfinished_swap", swap_id=row["swap_id"], step=step)
        return State.HELD, f"restart during {step}: waiting for the PLC read-back", resume

    def _contracts(self) -> dict[str, str]:
        """The versions of the contracts this station speaks (its birth message says)."""
        return {"plc_contract": load_contract(self.cfg.plc.contract).version,
                "can_protocol": str(self.protocol.db.version or "unversioned")}

    def _rack_status(self) -> dict[str, Any]:
        return self.core.rack_status(self.image, self.clock())

    async def _record_events(self, events: list[Event]) -> None:
        """Events a transport records itself (a cloud message refused before it became a
        command): journaled in order with the decisions, then to the sinks."""
        await self.apply(Decision(events=events))

    def status(self) -> dict[str, Any]:
        """The operator's status: the core's, plus the links."""
        out = self.core.status()
        stats = self.link.stats
        out["plc"] = {"protocol": self.cfg.plc.protocol, "endpoint": self.cfg.plc.endpoint,
                      "connected": self.link.connected, "reconnects": stats.reconnects,
                      "last_error": stats.last_error}
        if self.cloud is not None:
            out["cloud"] = self.cloud.describe()
        now = self.clock()
        out["pack_details"] = [pack_summary(rep, now) for _, rep in sorted(
            self.image.packs.items())]
        vin_at = self.image.vehicle_vin_at
        out["vehicle_vin"] = {"vin": self.image.vehicle_vin,
                              "age_s": None if vin_at is None else round(now - vin_at, 1)}
        out["can"] = {name: bus.counters() for name, bus in self.buses.items()}
        read_at = self.image.plc_read_at
        out["inputs"] = {k: self.image.plc.get(k) for k in STATUS_INPUTS}
        out["inputs_age_s"] = None if read_at is None else round(now - read_at, 3)
        return out

    def journal_events(self, after: int, limit: int) -> list[dict[str, Any]]:
        """The journal's events after id `after` (the local API's "events" query)."""
        return [{"id": r["id"], "wall": r["wall"], "t": r["mono"], "kind": r["kind"],
                 "data": json.loads(r["data"])}
                for r in self.journal.events_after(after, limit)]

    def _request_detail(self, pgn: int, da: int) -> None:
        """A J1939 Request for a pack detail (drivers/bms/details.py), on the pack's bus."""
        for bus in self.packs.buses_for(da):
            bus.send("Request", {"RequestedPgn": pgn}, da=da)

    # ---- driver callbacks (run in the event loop) --------------------------------------
    def _on_inputs(self, values: dict[str, Any], t: float) -> None:
        """Every read is folded in and stamped (the staleness of the PLC's inputs is judged
        per read); the scan is woken only by a read that can change a decision now (issue
        11: 50 reads/s each running a whole scan over every pack was most of swapd's idle
        cost): an input's value changed, the first read after a (re)connection, a read
        after a gap (a read missed: the staleness may end), or a PackML state not yet
        scanned (a command's or the last scan's transition: the next one comes on the next
        read, as before). Whatever else depends on time only (staleness, heartbeat, step,
        handshake and grace timeouts) is judged on the scan's tick, TICK_S."""
        last_at = self.image.plc_read_at
        changed = values != self.image.plc
        self.image.plc = values
        self.image.plc_read_at = t
        if (changed or self._plc_first_read or last_at is None
                or t - last_at > self._plc_gap_s or self.core.state != self._scanned_state):
            self._plc_first_read = False
            self._wake.set()

    def _on_connection(self, up: bool) -> None:
        log.info("plc.connection", connected=up)
        self._plc_first_read = True
        self._wake.set()

    # a bus in these states is reported by an Alarm (warning is only logged: it still works)
    BUS_ALARMS = {"passive": "can_error_passive", "bus_off": "can_bus_off",
                  "closed": "can_bus_down"}
    BUS_SEVERITY = {"passive": 1, "bus_off": 2, "closed": 2}

    def _on_bus_state(self, name: str, state: str, detail: str) -> None:
        """A bus changed state. Down (closed, bus-off): its packs are stale at once, so the
        interlocks judge them as silent packs. A bad state (error passive, bus-off, down)
        raises an alarm once per episode (a worse state again): the episode ends when the
        bus has been error active for BUS_BACK_AFTER_S (a bus that goes bus-off at every
        reopen is one episode). Back up: the packs on it are asked who they are."""
        slots = self._bus_slots.get(name, frozenset())
        pending = self._bus_recovery.pop(name, None)
        if pending is not None:
            pending.cancel()
        if state in BUS_DOWN:
            expired = self.image.expire(Location(s) for s in sorted(slots))
            if expired:
                log.warning("can.packs_stale", bus=name, state=state,
                            locations=[str(loc) for loc in expired])
            self._wake.set()
        alarmed = self._bus_alarmed.get(name)
        alarm = self.BUS_ALARMS.get(state)
        if state == "active":
            if alarmed is not None:
                self.packs.request(PackRequest(None, IDENTIFY_KINDS))  # heard anew
                self._bus_recovery[name] = asyncio.get_running_loop().call_later(
                    BUS_BACK_AFTER_S, self._bus_recovered, name, alarmed)
            return
        if alarm is None or self._stopping or (
                alarmed is not None and
                self.BUS_SEVERITY[state] <= self.BUS_SEVERITY.get(alarmed, 0)):
            return
        self._bus_alarmed[name] = state
        bus = self.buses[name]
        reason = {"passive": "error passive (its controller's error counter is above 127: "
                             "frames are lost or damaged)",
                  "bus_off": "bus-off (its controller left the bus); closed, reopened with "
                             "back-off",
                  "closed": "down (it could not be opened or read); reopened with back-off",
                  }[state]
        self._spawn(self.apply(Decision(events=[Alarm(
            t=self.clock(), location=f"can:{name}", slot=None, serial=None, alarm=alarm,
            reason=f"CAN bus {name} ({bus.interface}:{bus.channel}) {reason}; {detail}",
            action="check the bus wiring, termination and the nodes on it; the packs on it "
                   "count as silent until it is back")])))

    def _bus_recovered(self, name: str, was: str) -> None:
        self._bus_recovery.pop(name, None)
        self._bus_alarmed[name] = None
        log.info("can.bus_recovered", bus=name, was=was)

    def _on_message(self, msg: Decoded, t: float) -> None:
        loc = self.adapter.apply(self.image, msg, t)
        # folded in and stamped at once; the scan woken only by what can change a decision
        # now (station/scan_wake.py), else it judges the frame at its next tick (or at a
        # PLC read that wakes it)
        if loc is not None and self._scan_wake.wakes(
                loc, self.adapter.kind_of(msg.name), self.image.packs.get(loc)):
            self._wake.set()

    # ---- the scan ---------------------------------------------------------------------
    async def scan(self) -> None:
        self._last_scan = self.clock()
        self._scanned_state = self.core.state
        if self._recovering and self.image.plc_read_at is not None:
            self._recovering = False
            await self._explain_restart()
        self.image.wall_time = time.time()  # network policy dates (UTC); never a timeout
        await self.apply(self.core.update(self.image, self.clock()))
        self.image.scanned()  # the latched one-frame readings have been judged
        self.details.tick(self.image, self.clock())
        if self._reset_pending and self.image.plc_read_at is not None:
            self._reset_pending = False
            result = await self.submit(CommandRequest("reset", Origin.STARTUP, "start-up"))
            if not result.accepted:  # stays Stopped, and the status says why
                log.warning("startup.reset_refused", reason=result.reason)
                self.core.reason = f"start-up {result.reason}; check the machine, then reset"

    async def _explain_restart(self) -> None:
        """First PLC read-back after a restart mid-swap: say what we found; abort when the
        machine no longer matches the journal (another car, or the car gone too early)."""
        plan, step = self.core.plan, self.core.step
        if plan is None or step is None:
            return  # already aborted before the read-back came
        p = self.image.plc
        found = describe_readback(p, self.cfg)
        now = self.clock()
        token = int(p.get("vehicle_token", 0) or 0)
        same_car = bool(p.get("vehicle_present")) and token == plan.vehicle_token
        if step.name == "release" and not same_car:
            reason = (f"restart during release: vehicle {plan.vehicle_token} has left; "
                      "swap completed")
            await self.apply(self.core.complete_after_restart(reason, now))
            self._reset_pending = self.cfg.operation.reset_on_start
            return
        if not same_car:
            reason = (f"restart during {step.name}: {found}; vehicle {token or 'none'} on the "
                      f"platform, journal says {plan.vehicle_token}: check the machine")
            await self.apply(self.core.abort(reason, now, code="restart_mismatch"))
            return
        reason = (f"restart during {step.name}: {found}; check the machine, then unhold to "
                  "resume or abort")
        self.core.reason = reason
        await self.apply(Decision(events=[Recovery(t=now, swap_id=plan.swap_id,
                                                   step=step.name, reason=reason)]))

    async def submit(self, req: CommandRequest) -> CommandResult:
        """Every command, whoever sends it, goes through the one entry."""
        return await self.commands.submit(req)

    async def command(self, cmd: Cmd, origin: str = "operator") -> None:
        """A local command (tests, benches); raises station.core.CommandRefused."""
        result = await self.submit(CommandRequest(cmd.value, Origin.LOCAL, origin))
        if not result.accepted:
            raise CommandRefused(result.reason or "refused")

    async def apply(self, d: Decision) -> None:
        # A stop request and a pack isolation are safe whatever follows: they go out before
        # the journal's fsync. Everything else is journaled before it is commanded.
        level = (StopRequest(d.outputs["stop_request"]).severity
                 if d.outputs is not None else self._stop_level)
        stopping = level > self._stop_level
        self._stop_level = level
        if d.outputs is not None:
            self._stop_value = d.outputs["stop_request"]
        stop_write = None
        if stopping:
            assert d.outputs is not None
            self.link.set_outputs(d.outputs)
            stop_write = self._spawn(self._write_now())
        for cmd in d.isolations:
            self.packs.send(cmd)
        if stop_write is None and not self._apply_lock.locked():
            self._record_and_act(d, stopping)  # the usual case: no await, no reordering
            return
        # A stop is on its way to the PLC: the decision is recorded once the PLC has it. One
        # scheduling turn is not enough: the write needs several (and waits behind a request
        # in flight, e.g. the cat2 write of the hold an abort follows). Decisions taken
        # meanwhile (a command, the next scan) wait their turn, so the journal keeps the
        # order in which they were taken.
        async with self._apply_lock:
            cancelled = False
            if stop_write is not None:
                try:
                    await asyncio.wait({stop_write}, timeout=STOP_ACK_WAIT_S)
                except asyncio.CancelledError:
                    cancelled = True  # cut short: the stop is out, its record must be too
            self._record_and_act(d, stopping)
            if cancelled:
                raise asyncio.CancelledError

    def _record_and_act(self, d: Decision, stopping: bool) -> None:
        for ev in d.events:  # context for every line the scan task logs from here on
            if isinstance(ev, StepStarted | SwapStarted):
                bind_swap(ev.swap_id, getattr(ev, "step", None))
            elif isinstance(ev, SwapEnded) or (
                    isinstance(ev, StateChanged) and ev.new in ("Idle", "Aborted")):
                bind_swap(None, None)
        self.events.journal.record(d.events)  # the record first: one transaction, fsync
        if d.outputs is not None and not stopping:
            outputs = d.outputs
            if StopRequest(outputs["stop_request"]).severity < self._stop_level:
                # taken before a stop that is out already: never lower it again
                outputs = {**outputs, "stop_request": self._stop_value}
            self.link.set_outputs(outputs)
        for cmd in d.pack_commands:
            if cmd.command != PackCommandKind.ISOLATE:
                self.packs.send(cmd)
        for req in d.pack_requests:
            self.packs.request(req)
        if d.command_issued and self.core.plan and self.core.step:
            # Written at once, but never awaited by the scan: a PLC that stops answering
            # must not stop the scan from judging it stale.
            self._spawn(self._write_command(self.core.plan.swap_id, self.core.step.name))
        elif d.command_issued:  # a maintenance command: written at once too
            self._spawn(self._write_now())
        self.events.dispatch(d.events)  # then the sinks, behind the write in the loop's queue

    async def _write_now(self) -> None:
        await self.link.write_now()

    async def _write_command(self, swap_id: str, step: str) -> None:
        t_write = await self.link.write_now()
        if t_write is not None:
            self.journal.step_commanded(swap_id, step, t_write)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @staticmethod
    def _log_event(ev: Event) -> None:
        """The log sink: one line per event, errors for faults and alarms."""
        fields = {k: v for k, v in ev.data.items() if k != "t"}
        if isinstance(ev, Fault):
            log.error("swap.fault", **fields)
        elif isinstance(ev, Alarm):
            log.error("pack.alarm", **fields)
        elif isinstance(ev, StateChanged):
            log.info("packml.state", **fields)
        else:
            log.info(f"event.{ev.kind}", **fields)

    async def _scan_loop(self) -> None:
        """Scan on every wake-up and every tick until the daemon stops: then it returns
        between two scans, never cancelled in the middle of a decision (run())."""
        while not self._stopping:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
            # that stops the daemon when the wake-up lands at the same moment
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.scan()
            except Exception:  # a bug in one scan must not kill supervision
                log.exception("scan.failed")
                await self.apply(self.core.abort("internal error in the scan (see the log)",
                                                 self.clock(), code="internal_error"))

    async def _ask_every_pack(self) -> None:
        """The bus opens in its own task: once it is up, ask every pack who it is."""
        for _ in range(40):
            await asyncio.sleep(0.05)
            if all(bus.is_open for bus in self.buses.values()):
                break
        if any(bus.is_open for bus in self.buses.values()):
            self.packs.request(PackRequest(None, IDENTIFY_KINDS))

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval_s or 5.0
        sent: str | None = None
        while True:
            # Pet the watchdog only while the scan loop is alive: a stuck scan gets us restarted.
            if self.clock() - self._last_scan < max(interval, 1.0):
                self.notifier.watchdog()
            # systemd keeps the last STATUS=: send it only when the text changes
            line = status_line(self.core.status(), self._packs_ready())
            if line != sent and self.notifier.status(line):
                sent = line
            await asyncio.sleep(interval)

    def _packs_ready(self) -> int | None:
        """Rack slots whose pack selection would give now; None while unknown."""
        try:
            slots = self._rack_status()["slots"]
        except Exception:  # the status line must never stop the watchdog
            log.exception("status.rack_failed")
            return None
        return sum(1 for s in slots if s["state"] == "ready") if slots else None

    async def _disk_loop(self) -> None:
        """Free space under the journal: below [cloud] disk_alarm_free_mb an alarm (once,
        journaled and so published); the journal is the outbox and must not fill the disk
        silently while the broker is away."""
        limit = self.cfg.cloud.disk_alarm_free_mb
        while True:
            free = disk_free_mb(self.cfg.journal.path)
            low = free < limit
            if low and not self._disk_low:
                backlog = self.cloud.outbox.backlog() if self.cloud is not None else 0
                await self.apply(Decision(events=[Alarm(
                    t=self.clock(), location="station", slot=None, serial=None,
                    alarm="disk_low",
                    reason=f"{free:.0f} MB free under the journal ({self.cfg.journal.path}), "
                    f"below {limit:g} MB; {backlog} events not yet delivered to the cloud",
                    action="free disk space: the journal keeps every undelivered event")]))
            elif not low and self._disk_low:
                log.info("disk.recovered", free_mb=round(free))
            self._disk_low = low
            await asyncio.sleep(DISK_CHECK_S)

    async def _metrics_loop(self) -> None:
        """Copy what is polled (the PLC link, the rack, the outbox) into the metrics, in the
        loop: the scrape thread reads only the metric objects."""
        assert self.metrics is not None
        while True:
            try:
                stats = self.link.stats
                self.metrics.set_plc(self.link.connected, stats.reconnects, stats.round_trip_s)
                self.metrics.set_packs(self._rack_status()["slots"])
                if self.cloud is not None:
                    outbox = self.cloud.outbox
                    self.metrics.set_outbox_backlog(
                        outbox.last_event_id() - outbox.cursor().event_id)
            except Exception:  # a bug here must not end the daemon (run() would)
                log.exception("metrics.tick_failed")
            await asyncio.sleep(METRICS_TICK_S)

    async def _start_metrics(self) -> None:
        """The endpoint; one that cannot bind (the port taken) is logged and the station
        runs on without it: metrics never stop a swap station."""
        assert self.metrics is not None
        m = self.cfg.metrics
        try:
            port = await asyncio.to_thread(self.metrics.start, m.host, m.port)
        except OSError as exc:
            log.error("metrics.bind_failed", host=m.host, port=m.port, error=str(exc))
            return
        log.info("metrics.listening", host=m.host, port=port)

    async def _cloud_loop(self) -> None:
        """The cloud link in its own task: a bug in it is logged and the link restarted; it
        never stops the station."""
        assert self.cloud is not None
        while True:
            try:
                await self.cloud.run()
            except Exception:
                log.exception("cloud.crashed")
                await asyncio.sleep(5.0)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        log.info("swapd.start", station=self.cfg.station.id, state=self.core.state.label,
                 plc=self.cfg.plc.endpoint,
                 can=", ".join(f"{n}={b.interface}:{b.channel}" for n, b in self.buses.items()))
        self.events.start()
        self._stopping = False
        scan = asyncio.create_task(self._scan_loop(), name="scan")
        tasks = [
            asyncio.create_task(self.link.run(), name="plc"),
            *(asyncio.create_task(bus.run(), name=f"can:{name}")
              for name, bus in self.buses.items()),
            scan,
            asyncio.create_task(self._watchdog_loop(), name="watchdog"),
            asyncio.create_task(self._disk_loop(), name="disk"),
        ]
        if self.cloud is not None:
            tasks.append(asyncio.create_task(self._cloud_loop(), name="cloud"))
        if self.metrics is not None:
            tasks.append(asyncio.create_task(self._metrics_loop(), name="metrics"))
        api = None
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            if self.cfg.api.socket is not None:
                api = LocalApiServer(
                    self.cfg.api.socket,
                    functools.partial(handle_request, status=self.status,
                                      submit=self.submit,
                                      recovery_plan=self.core.recovery_view,
                                      events=self.journal_events),
                    mode=self.cfg.api.socket_mode, group=self.cfg.api.group,
                )
                await api.start()
            if self.metrics is not None:
                await self._start_metrics()
            self._spawn(self._ask_every_pack())  # a one-shot: not among the tasks that must run
            self.notifier.ready(f"{self.core.state.label}")
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and not t.cancelled() and t.exception():
                    raise t.exception()  # type: ignore[misc]
        finally:
            await self._shutdown(scan, [*tasks, stopper], api)

    async def _shutdown(self, scan: asyncio.Task[None], tasks: list[asyncio.Task[Any]],
                        api: LocalApiServer | None) -> None:
        """Stop in a fixed order: no new commands; the scan ends by itself after the decision
        it is taking (journaled, its outputs handed to the link), so it is never cut in the
        middle of one and no cancellation can get lost in it (a cancellation swallowed in
        the scan, as a 3.11 wait_for or an `except Exception` can, left it running:
        `swapd.stop_stuck tasks=["scan"]`); then the links and every background write are
        cancelled, those spawned meanwhile included; then the links, sinks and journal
        close. Whatever has not ended in its time is named and cut: a stop never hangs."""
        self.notifier.stopping()
        if api is not None:
            await api.close()  # a command half carried out is let finish
        self._stopping = True
        self._wake.set()
        stuck: list[asyncio.Task[Any]] = []
        if not (await asyncio.wait({scan}, timeout=STOP_SCAN_S))[0]:
            stuck.append(scan)
            scan.cancel()
        if self.core.maintenance.running:  # stopped (cat2), recorded failed, never resumed
            await self.apply(self.core.maintenance.shutdown(self.clock()))
        if self.cloud is not None:  # the last decisions delivered, and offline said
            await self.cloud.close(CLOUD_DRAIN_S)
        others = [t for t in tasks if t is not scan]
        while pending := [t for t in (*others, *self._background) if not t.done()]:
            for t in pending:
                t.cancel()
            _, late = await asyncio.wait(pending, timeout=STOP_TASKS_S)
            if late:
                stuck += late
                break
        if stuck:  # never hang a stop (systemd would have to kill us)
            log.error("swapd.stop_stuck", tasks=[t.get_name() for t in stuck])
        await self.link.close()
        for bus in self.buses.values():
            await bus.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)  # a shutdown waits for its thread
        await self.events.close()
        if self.cloud is not None:
            self.cloud.outbox.close()
        self.journal.close()
        log.info("swapd.stopped", state=self.core.state.label)
