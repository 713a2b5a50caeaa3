"""`swapd commission`: the integrator's I/O check-out of a real PLC against the contract.

Connected with the configured link (Modbus TCP or OPC UA, through the PlcLink interface
only), holding the machine stopped (`stop_request` cat2, no command), it watches every
contract input for a while (a live table: decoded value, unit, age), judges both
heartbeats, runs a few harmless NOOP command round trips with their handshake timings and
compares the PLC's set-points with the configuration. The result is a report the
integrator can file (text, markdown or JSON), every section PASS or FAIL.

Two halves: `run_commission` talks to the PLC and fills an `Observation`;
`build_report` (pure, unit-tested) judges it, and `render` formats the report. The
documentation is docs/commissioning.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from drivers.plc.contract import UNKNOWN_PREFIX, PlcContract, Timing
from station.setpoints import SetpointCheck, check_setpoints

if TYPE_CHECKING:
    from drivers.plc.link import PlcLink
    from station.config import StationConfig

PASS, FAIL = "PASS", "FAIL"
FORMATS = ("text", "markdown", "json")
SAFETY_INPUTS = ("estop_ok", "safety_plc_ok", "light_curtain_clear", "doors_closed",
                 "smoke_clear")
HEARTBEAT_IN = "plc_heartbeat"
WRAP = 65536  # both heartbeats and cmd_seq are 16-bit counters
WIDTH = 96  # the text report's lines (the input table excepted)
SAMPLE_S = 0.01  # how often the link's acknowledged writes are sampled
FIRST_IMAGE_S = 10.0  # the first input image after connecting, at the latest

# What a stopped station writes: the machine holds still, no command.
STOPPED_OUTPUTS: dict[str, Any] = {"stop_request": "cat2", "cmd_code": "NONE",
                                   "cmd_param1": 0, "cmd_param2": 0}


class CommissionError(Exception):
    """Commissioning cannot run: the one-line reason (exit code 1)."""


# --------------------------------------------------------------------------- observation


@dataclass
class InputSeen:
    """One contract input as watched: its last value, when it last changed (the monotonic
    time of the read that brought it) and was last read, how often it changed."""

    value: Any
    changed_at: float
    read_at: float
    changes: int = 0


@dataclass
class RoundTrip:
    """One NOOP command. Times in ms from the moment its write was started."""

    seq: int
    ack_ms: float | None = None  # the PLC acknowledged the write carrying the new cmd_seq
    echo_ms: float | None = None  # an input read with cmd_ack_seq = seq
    done_ms: float | None = None  # ... with cmd_status done or error
    status: str | None = None  # the last cmd_status seen for seq
    error: str | None = None  # cmd_error_code when status is error
    problem: str | None = None  # what went wrong before the PLC could answer
    safety_open: list[str] = field(default_factory=list)  # safety inputs 0 when refused
    stop_restored: bool = False  # stop_request cat2 acknowledged again afterwards


@dataclass
class Observation:
    """Everything `run_commission` saw; `build_report` judges it."""

    station_id: str
    station_name: str
    endpoint: str
    protocol: str
    contract_version: str
    swapd_version: str
    date: str  # ISO 8601, UTC
    watched_s: float
    heartbeat_period_s: float  # [plc] heartbeat_period_s: swapd's ctrl_heartbeat period
    wrote: list[str]
    inputs: dict[str, InputSeen]
    ended_at: float  # monotonic time the observation ended (ages are taken from it)
    started_at: float  # monotonic time of the first input image
    plc_heartbeat: list[tuple[float, int]]  # (read time, value): the first read and changes
    ctrl_writes: list[float]  # times acknowledged writes were seen (sampled every sample_s)
    ctrl_write_errors: int
    round_trips: list[RoundTrip]
    setpoints: list[SetpointCheck]
    sample_s: float = SAMPLE_S
    addressing: list[str] = field(default_factory=list)  # the probe's problems


# ------------------------------------------------------------------------- formatting


def _num(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def format_value(value: Any) -> str:
    """A decoded input for the table: bools as 1/0, enums by name, arrays compactly
    (all equal: `12 x 0`; bools: a bit string with the count of ones)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return _num(value)
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        if all(isinstance(v, bool) for v in value):
            bits = "".join("1" if v else "0" for v in value)
            return f"{bits} ({sum(bool(v) for v in value)} of {len(value)} set)"
        items = [format_value(v) for v in value]
        if len(set(items)) == 1:
            return f"{len(items)} x {items[0]}"
        return "[" + ", ".join(items) + "]"
    return str(value)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def input_rows(contract: PlcContract, inputs: Mapping[str, InputSeen],
               now: float) -> list[dict[str, Any]]:
    """One row per contract input, in contract order: signal (name[N] for an array),
    value, unit, age (seconds since it last changed), changes; value None: never read."""
    rows: list[dict[str, Any]] = []
    for sig in contract.inputs():
        name = f"{sig.name}[{sig.count}]" if sig.count > 1 else sig.name
        seen = inputs.get(sig.name)
        if seen is None:
            rows.append({"signal": name, "value": None, "unit": sig.unit, "age_s": None,
                         "read_age_s": None, "changes": 0})
            continue
        rows.append({"signal": name, "value": format_value(seen.value), "unit": sig.unit,
                     "age_s": round(max(now - seen.changed_at, 0.0), 3),
                     "read_age_s": round(max(now - seen.read_at, 0.0), 3),
                     "changes": seen.changes})
    return rows


def _age(row: dict[str, Any]) -> str:
    if row["age_s"] is None:
        return "never read"
    unchanged = " (unchanged)" if row["changes"] == 0 else ""
    return f"{row['age_s']:.1f} s{unchanged}"


def table_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The input table as aligned plain-text lines (the live view and the text report)."""
    cells = [("signal", "value", "unit", "age")] + [
        (r["signal"], "-" if r["value"] is None else r["value"], r["unit"] or "", _age(r))
        for r in rows]
    widths = [max(len(c[i]) for c in cells[:]) for i in range(3)]
    widths[1] = min(widths[1], 48)
    return [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip()
            for a, b, c, d in cells]


# ------------------------------------------------------------------------- the judge


def _section(sid: str, title: str, ok: bool, lines: list[str], **data: Any) -> dict[str, Any]:
    return {"id": sid, "title": title, "verdict": PASS if ok else FAIL, "lines": lines,
            **data}


def _inputs_section(obs: Observation, contract: PlcContract) -> dict[str, Any]:
    rows = input_rows(contract, obs.inputs, obs.ended_at)
    names = [s.name for s in contract.inputs()]
    missing = [n for n in names if n not in obs.inputs]
    unknown = []
    for n in names:
        seen = obs.inputs.get(n)
        values = seen.value if seen is not None and isinstance(seen.value, list) else (
            [seen.value] if seen is not None else [])
        if any(isinstance(v, str) and v.startswith(UNKNOWN_PREFIX) for v in values):
            unknown.append(f"{n} = {format_value(seen.value if seen else None)}")
    lines = [f"{len(names) - len(missing)} of {len(names)} contract inputs read and decoded "
             f"over {obs.watched_s:.1f} s; age = time since the value last changed"]
    reads = [seen.read_at for seen in obs.inputs.values()]
    if reads:
        lines.append(f"the last input image was read {1000 * (obs.ended_at - max(reads)):.0f}"
                     " ms before the end")
    if missing:
        lines.append(f"never read: {', '.join(missing)}")
    if unknown:
        lines.append("a code the contract does not know (enumeration): " + "; ".join(unknown))
    open_ = [n for n in SAFETY_INPUTS if n in obs.inputs and obs.inputs[n].value is False]
    if open_:
        lines.append(f"note: safety chain open ({', '.join(f'{n} = 0' for n in open_)}): "
                     "every command is refused while it is")
    return _section("inputs", "Inputs", not missing and not unknown, lines, rows=rows)


def _gaps(times: Sequence[float], end: float) -> float | None:
    """The largest gap between successive times, the trailing one to `end` included."""
    if not times:
        return None
    pts = [*times, end]
    return max(b - a for a, b in itertools.pairwise(pts))


def _heartbeat_section(obs: Observation, timing: Timing) -> dict[str, Any]:
    lines: list[str] = []
    ok = True
    # plc_heartbeat, PLC -> swapd
    hb = obs.plc_heartbeat
    period, timeout = timing.plc_heartbeat_period_ms, timing.plc_heartbeat_timeout_ms
    plc: dict[str, Any] = {"changes": max(len(hb) - 1, 0), "rate_per_s": None,
                           "largest_gap_ms": None, "period_ms": period, "timeout_ms": timeout}
    if len(hb) < 2:
        ok = False
        lines.append(f"plc_heartbeat: FAIL: never changed in {obs.watched_s:.1f} s "
                     f"(value {hb[0][1] if hb else 'never read'}); the contract wants a new "
                     f"value at least every {period} ms")
    else:
        steps = sum((b[1] - a[1]) % WRAP for a, b in itertools.pairwise(hb))
        span = hb[-1][0] - hb[0][0]
        rate = steps / span if span > 0 else 0.0
        gap_ms = 1000 * (_gaps([t for t, _ in hb], obs.ended_at) or 0.0)
        plc.update(rate_per_s=round(rate, 1), largest_gap_ms=round(gap_ms, 1))
        verdict = PASS
        if gap_ms > timeout:
            ok, verdict = False, FAIL
        lines.append(f"plc_heartbeat: {verdict}: {len(hb) - 1} changes seen, counting "
                     f"{rate:.1f}/s; largest gap between changes {gap_ms:.0f} ms (contract: "
                     f"a change at least every {period} ms, judged dead after {timeout} ms)")
        if gap_ms > period and gap_ms <= timeout:
            lines.append(f"  note: the largest gap is longer than the {period} ms period "
                         "(it includes up to one read period of swapd's own sampling)")
    # ctrl_heartbeat, swapd -> PLC
    w = obs.ctrl_writes
    cperiod, ctimeout = timing.ctrl_heartbeat_period_ms, timing.ctrl_heartbeat_timeout_ms
    ctrl: dict[str, Any] = {"writes_acknowledged": len(w), "write_errors": obs.ctrl_write_errors,
                            "largest_gap_ms": None, "period_ms": cperiod,
                            "timeout_ms": ctimeout,
                            "configured_period_ms": round(obs.heartbeat_period_s * 1000, 1)}
    if not w:
        ok = False
        lines.append(f"ctrl_heartbeat: FAIL: no write acknowledged by the PLC "
                     f"({obs.ctrl_write_errors} write errors)")
    else:
        gap_ms = 1000 * (_gaps(w, obs.ended_at) or 0.0)
        ctrl["largest_gap_ms"] = round(gap_ms, 1)
        verdict = PASS
        if gap_ms > ctimeout:
            ok, verdict = False, FAIL
        lines.append(f"ctrl_heartbeat: {verdict}: written every "
                     f"{obs.heartbeat_period_s * 1000:g} ms; {len(w)} writes acknowledged, "
                     f"{obs.ctrl_write_errors} errors, largest gap between acknowledged writes "
                     f"{gap_ms:.0f} ms (sampled every {obs.sample_s * 1000:g} ms; contract: "
                     f"at least every {cperiod} ms, the PLC stops after {ctimeout} ms)")
    taken = [t for t in obs.round_trips if t.echo_ms is not None]
    done = [t for t in taken if t.status == "done"]
    lines.append("The PLC's view of ctrl_heartbeat cannot be read (the contract has no echo "
                 "of it); the PLC refuses every command without a live ctrl_heartbeat, so a "
                 "NOOP done shows it sees one:")
    if done:
        lines.append(f"  confirmed: {len(done)} of {len(obs.round_trips)} NOOP commands done")
    else:
        ok = False
        lines.append("  not confirmed: no NOOP command was done (see the round trip)")
    return _section("heartbeat", "Heartbeats", ok, lines, plc=plc, ctrl=ctrl)


def _round_trip_section(obs: Observation, timing: Timing) -> dict[str, Any]:
    limit = timing.handshake_timeout_ms
    lines = [f"NOOP (moves nothing) with a new cmd_seq each time, stop_request lifted to none "
             f"for the command only; times from the write; the contract: echoed within "
             f"{limit} ms (handshake_timeout_ms)"]
    ok = bool(obs.round_trips)
    if not obs.round_trips:
        lines.append("no round trip was run")
    for t in obs.round_trips:
        good = (t.problem is None and t.status == "done" and t.echo_ms is not None
                and t.echo_ms <= limit and t.stop_restored)
        ok = ok and good
        head = f"[{PASS if good else FAIL}] seq {t.seq}:"
        if t.problem is not None:
            lines.append(f"{head} {t.problem}")
        else:
            what = t.status or "no answer"
            if t.status == "error":
                what = f"error {t.error}"
            lines.append(f"{head} write acknowledged {_ms(t.ack_ms)}, echo seen {_ms(t.echo_ms)}"
                         f", {what} seen {_ms(t.done_ms)}")
            if t.echo_ms is not None and t.echo_ms > limit:
                lines.append(f"  echoed after {t.echo_ms:.0f} ms, later than the contract's "
                             f"{limit} ms")
            if t.echo_ms is None:
                lines.append(f"  the PLC did not echo cmd_seq {t.seq} within {limit} ms")
            if t.status == "error" and t.error == "refused":
                why = (f"safety chain open: {', '.join(t.safety_open)}" if t.safety_open else
                       "no safety input open: a stale ctrl_heartbeat or a stop_request the PLC"
                       " still sees?")
                lines.append(f"  refused: {why}")
        if not t.stop_restored:
            lines.append("  stop_request cat2 was not acknowledged again after the command")
    stats: dict[str, Any] = {}
    for key in ("ack_ms", "echo_ms", "done_ms"):
        vals = [getattr(t, key) for t in obs.round_trips if getattr(t, key) is not None]
        if vals:
            stats[key] = {"min": round(min(vals), 1),
                          "median": round(statistics.median(vals), 1),
                          "max": round(max(vals), 1), "n": len(vals)}
    label = {"ack_ms": "write acknowledged", "echo_ms": "echo seen", "done_ms": "done seen"}
    for key, s in stats.items():
        lines.append(f"{label[key]}: min {s['min']:.1f} / median {s['median']:.1f} / max "
                     f"{s['max']:.1f} ms over {s['n']}")
    return _section("round_trip", "Command round trip (NOOP)", ok, lines,
                    trips=[asdict(t) for t in obs.round_trips], stats=stats,
                    handshake_timeout_ms=limit)


def _setpoints_section(obs: Observation) -> dict[str, Any]:
    lines = []
    checks = []
    for c in obs.setpoints:
        lines.append(f"[{PASS if c.ok else FAIL}] {c.describe()} (rule: {c.rule})")
        checks.append({"signal": c.signal, "config_key": c.config_key,
                       "plc": list(c.plc) if isinstance(c.plc, tuple) else c.plc,
                       "config": list(c.config) if isinstance(c.config, tuple) else c.config,
                       "rule": c.rule, "unit": c.unit, "ok": c.ok})
    ok = bool(obs.setpoints) and all(c.ok for c in obs.setpoints)
    if not obs.setpoints:
        lines.append("no set-point read")
    return _section("setpoints", "Set-points against the configuration", ok, lines,
                    checks=checks)


def build_report(obs: Observation, contract: PlcContract) -> dict[str, Any]:
    """Judge an observation: a JSON-able report, every section PASS or FAIL, and the whole."""
    sections: list[dict[str, Any]] = []
    if obs.addressing:
        sections.append(_section(
            "addressing", "Addressing (the probe)", False,
            [*obs.addressing, f"{len(obs.addressing)} problem(s): the PLC does not serve the "
             "addressing as the file says; nothing else was checked"]))
    else:
        sections += [_inputs_section(obs, contract),
                     _heartbeat_section(obs, contract.timing),
                     _round_trip_section(obs, contract.timing),
                     _setpoints_section(obs)]
    verdict = PASS if all(s["verdict"] == PASS for s in sections) else FAIL
    return {
        "report": "swapd commissioning",
        "station": {"id": obs.station_id, "name": obs.station_name},
        "plc": {"endpoint": obs.endpoint, "protocol": obs.protocol,
                "contract_version": obs.contract_version},
        "date": obs.date,
        "swapd_version": obs.swapd_version,
        "watched_s": round(obs.watched_s, 2),
        "wrote": obs.wrote,
        "verdict": verdict,
        "sections": sections,
    }


# ------------------------------------------------------------------------- rendering


def _header(report: dict[str, Any]) -> list[tuple[str, str]]:
    st, plc = report["station"], report["plc"]
    return [("Station", f"{st['id']} ({st['name']})"),
            ("PLC", f"{plc['endpoint']} ({plc['protocol']}), contract {plc['contract_version']}"),
            ("Date", report["date"]),
            ("swapd", report["swapd_version"]),
            ("Watched", f"{report['watched_s']:g} s"),
            ("Wrote", "; ".join(report["wrote"])),
            ("Verdict", report["verdict"])]


def render_text(report: dict[str, Any]) -> str:
    title = f"swapd commissioning report: {report['verdict']}"
    out = [title, "=" * len(title)]
    for k, v in _header(report):
        out += textwrap.wrap(v, WIDTH, initial_indent=f"{k + ':':<9} ",
                             subsequent_indent=" " * 10, break_on_hyphens=False)
    for i, s in enumerate(report["sections"], 1):
        out += ["", f"{i}. {s['title']}: {s['verdict']}"]
        for line in s["lines"]:
            indent = "   " + " " * (len(line) - len(line.lstrip()))
            out += textwrap.wrap(line.strip(), WIDTH, initial_indent=indent,
                                 subsequent_indent=indent + "  ", break_on_hyphens=False)
        if s["id"] == "inputs":
            out += [""] + [f"   {line}" for line in table_lines(s["rows"])]
    failed = [s["title"] for s in report["sections"] if s["verdict"] == FAIL]
    out += ["", f"Overall: {report['verdict']}" + (f" ({', '.join(failed)} failed)"
                                                    if failed else "")]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: dict[str, Any]) -> str:
    out = [f"# swapd commissioning report: {report['verdict']}", "",
           "| | |", "|---|---|"]
    out += [f"| {k} | {_md(v)} |" for k, v in _header(report)]
    for i, s in enumerate(report["sections"], 1):
        out += ["", f"## {i}. {s['title']}: {s['verdict']}", ""]
        out += [f"- {_md(line)}" if not line.startswith("  ") else f"  - {_md(line.strip())}"
                for line in s["lines"]]
        if s["id"] == "inputs":
            out += ["", "| Signal | Value | Unit | Age |", "|---|---|---|---|"]
            out += [f"| `{r['signal']}` | {_md('-' if r['value'] is None else r['value'])} | "
                    f"{r['unit']} | {_age(r)} |" for r in s["rows"]]
    failed = [s["title"] for s in report["sections"] if s["verdict"] == FAIL]
    out += ["", f"**Overall: {report['verdict']}**" + (f" ({', '.join(failed)} failed)"
                                                        if failed else "")]
    return "\n".join(out) + "\n"


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    if fmt == "markdown":
        return render_markdown(report)
    return render_text(report)


def exit_code(report: dict[str, Any]) -> int:
    return 0 if report["verdict"] == PASS else 2


# ------------------------------------------------------------------------- the live view


class LiveView:
    """The input table while watching: redrawn in place on a terminal; elsewhere one plain
    line per input change (the PLC heartbeat left out: it changes every scan)."""

    def __init__(self, contract: PlcContract, stream: IO[str], tty: bool) -> None:
        self.contract = contract
        self.stream = stream
        self.tty = tty
        self._drawn = 0

    def draw(self, inputs: Mapping[str, InputSeen], now: float, remaining: float) -> None:
        if not self.tty:
            return
        lines = [f"watching the PLC's inputs: {remaining:4.1f} s left"]
        lines += table_lines(input_rows(self.contract, inputs, now))
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines) + "\x1b[J")
        self.stream.flush()
        self._drawn = len(lines)

    def changed(self, name: str, old: Any, new: Any, since: float) -> None:
        if self.tty or name == HEARTBEAT_IN:
            return
        self.stream.write(f"+{since:7.3f} s  {name}: {format_value(old)} -> "
                          f"{format_value(new)}\n")
        self.stream.flush()


# ------------------------------------------------------------------------- the runner


def swapd_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("swapstation")
    except PackageNotFoundError:
        return "unknown"


def _next_seq(seq: int, avoid: int) -> int:
    """The next command number after `seq`: 1..65535, never 0, never `avoid`."""
    while True:
        seq = seq % (WRAP - 1) + 1
        if seq != avoid:
            return seq


class _Watcher:
    """The link's on_inputs: every input's value and age, the PLC heartbeat's changes,
    and the answer to the round trip under way."""

    def __init__(self, view: LiveView | None) -> None:
        self.inputs: dict[str, InputSeen] = {}
        self.heartbeat: list[tuple[float, int]] = []
        self.latest: dict[str, Any] = {}
        self.first_at: float | None = None
        self.image = asyncio.Event()
        self.trip: RoundTrip | None = None
        self.trip_t0 = 0.0
        self.answered = asyncio.Event()
        self.view = view

    def __call__(self, values: dict[str, Any], t: float) -> None:
        if self.first_at is None:
            self.first_at = t
        for name, value in values.items():
            seen = self.inputs.get(name)
            if seen is None:
                self.inputs[name] = InputSeen(value, t, t)
            else:
                if value != seen.value:
                    if self.view is not None:
                        self.view.changed(name, seen.value, value, t - self.first_at)
                    seen.value, seen.changed_at = value, t
                    seen.changes += 1
                seen.read_at = t
        hb = values.get(HEARTBEAT_IN)
        if isinstance(hb, int) and (not self.heartbeat or self.heartbeat[-1][1] != hb):
            self.heartbeat.append((t, hb))
        self.latest = values
        self.image.set()
        trip = self.trip
        if trip is not None and values.get("cmd_ack_seq") == trip.seq:
            ms = (t - self.trip_t0) * 1000
            if trip.echo_ms is None:
                trip.echo_ms = ms
            trip.status = str(values.get("cmd_status"))
            if trip.status in ("done", "error") and trip.done_ms is None:
                trip.done_ms = ms
                if trip.status == "error":
                    trip.error = str(values.get("cmd_error_code"))
                    trip.safety_open = [n for n in SAFETY_INPUTS if values.get(n) is False]
                self.answered.set()


async def _round_trip(link: PlcLink, w: _Watcher, seq: int, timeout_s: float) -> RoundTrip:
    trip = RoundTrip(seq)
    link.set_outputs({"stop_request": "none"})
    if await link.write_now() is None:
        trip.problem = "stop_request none not acknowledged by the PLC: no command written"
    else:
        w.answered.clear()
        w.trip, w.trip_t0 = trip, time.monotonic()
        link.set_outputs({"cmd_code": "NOOP", "cmd_param1": 0, "cmd_param2": 0,
                          "cmd_seq": seq})
        acked = await link.write_now()
        if acked is None:
            trip.problem = f"the write of NOOP seq {seq} was not acknowledged by the PLC"
        else:
            trip.ack_ms = (acked - w.trip_t0) * 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.answered.wait(), timeout_s)
        w.trip = None
    link.set_outputs(STOPPED_OUTPUTS)
    trip.stop_restored = await link.write_now() is not None
    return trip


async def run_commission(cfg: StationConfig, *, duration_s: float, round_trips: int,
                         log: Callable[[str], None], view_stream: IO[str] | None = None,
                         tty: bool = False,
                         guard: Callable[[], Awaitable[str | None]] | None = None,
                         outcome: dict[str, bool] | None = None,
                         ) -> tuple[Observation, PlcContract]:
    """Connect, hold the machine stopped, watch, run the round trips, read the set-points.
    Raises CommissionError (one line) when the PLC cannot be reached, or when `guard` (asked
    before every round trip: a daemon that came up meanwhile) says why not to go on.
    `outcome["stopped"]` says whether the last write (stop_request cat2) was acknowledged."""
    from drivers.plc.contract import load_contract
    from drivers.plc.registry import create_link

    contract = load_contract(cfg.plc.contract)
    endpoint = cfg.plc.endpoint
    date = datetime.now(UTC).isoformat(timespec="seconds")
    period = cfg.plc.heartbeat_period_s
    wrote = ["stop_request cat2 (held; none only for each NOOP), cmd_code NONE, "
             "cmd_param1 0, cmd_param2 0, cmd_seq 0 (starts nothing)",
             f"ctrl_heartbeat counting every {period * 1000:g} ms",
             f"{round_trips} x NOOP (code {contract.command_code('NOOP')}, moves nothing) "
             "with new cmd_seq values"]

    def observation(**kw: Any) -> Observation:
        base: dict[str, Any] = dict(
            station_id=cfg.station.id, station_name=cfg.station.name, endpoint=endpoint,
            protocol=cfg.plc.protocol, contract_version=contract.version,
            swapd_version=swapd_version(), date=date, watched_s=0.0,
            heartbeat_period_s=period, wrote=wrote, inputs={}, ended_at=0.0, started_at=0.0,
            plc_heartbeat=[], ctrl_writes=[], ctrl_write_errors=0, round_trips=[],
            setpoints=[])
        return Observation(**{**base, **kw})

    # Connect once to check the addressing and get a clear reason when there is no PLC.
    log(f"connecting to the PLC at {endpoint} ({cfg.plc.protocol}) to check its addressing")
    try:
        problems = await create_link(cfg.plc, clock=time.monotonic).probe()
    except ConnectionError as exc:
        raise CommissionError(f"[plc] {endpoint}: cannot connect: {exc}") from None
    except Exception as exc:  # a broken answer: one line
        raise CommissionError(f"[plc] {endpoint}: cannot connect: {type(exc).__name__}: "
                              f"{exc}") from None
    if problems:
        return observation(addressing=problems), contract

    log("will write the PLC's output block: " + "; ".join(wrote))
    view = LiveView(contract, view_stream, tty) if view_stream is not None else None
    w = _Watcher(view)
    link = create_link(cfg.plc, clock=time.monotonic)
    link.on_inputs = w
    link.set_outputs({**STOPPED_OUTPUTS, "cmd_seq": 0})
    runner = asyncio.create_task(link.run(), name="commission-link")
    writes: list[float] = []
    try:
        image = asyncio.create_task(w.image.wait())
        done, _ = await asyncio.wait([image, runner], timeout=FIRST_IMAGE_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        image.cancel()
        if runner in done:
            raise CommissionError(f"[plc] {endpoint}: the link stopped: "
                                  f"{runner.exception()!r}")
        if not w.image.is_set():
            raise CommissionError(
                f"[plc] {endpoint}: no input image within {FIRST_IMAGE_S:g} s of connecting"
                f" ({link.stats.last_error or 'no error reported'})")
        sampler = asyncio.create_task(_sample_writes(link, writes))
        try:
            if view is not None and not tty:
                log(f"watching the PLC's inputs for {duration_s:g} s (changes below)")
            loop = asyncio.get_running_loop()
            end = loop.time() + duration_s
            while (left := end - loop.time()) > 0:
                if view is not None:
                    view.draw(w.inputs, time.monotonic(), left)
                await asyncio.sleep(min(0.25, left))
            if view is not None:
                view.draw(w.inputs, time.monotonic(), 0.0)
            log(f"running {round_trips} NOOP round trip(s)")
            trips = []
            seq = int(w.latest.get("cmd_ack_seq") or 0)
            timeout_s = contract.timing.handshake_timeout_ms / 1000
            for _ in range(round_trips):
                why = await guard() if guard is not None else None
                if why is not None:  # e.g. systemd restarted swapd during the session
                    raise CommissionError(f"stopped before a round trip: {why}; two "
                                          "controllers must not write the PLC's output block")
                seq = _next_seq(seq, int(w.latest.get("cmd_ack_seq") or 0))
                trips.append(await _round_trip(link, w, seq, timeout_s))
                if runner.done():
                    break
            ended = time.monotonic()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        assert w.first_at is not None
        obs = observation(
            watched_s=ended - w.first_at, inputs=w.inputs, ended_at=ended,
            started_at=w.first_at, plc_heartbeat=w.heartbeat, ctrl_writes=writes,
            ctrl_write_errors=link.stats.write_errors, round_trips=trips,
            setpoints=check_setpoints(w.latest, cfg))
    finally:
        # however it ends (Ctrl-C in a round trip included): the machine is left stopped
        link.set_outputs(STOPPED_OUTPUTS)
        stopped = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.write_now(), 2)
            stopped = True
        if outcome is not None:
            outcome["stopped"] = stopped
        await link.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(runner, 5)
    return obs, contract


async def _sample_writes(link: PlcLink, out: list[float]) -> None:
    """Note the time whenever the count of acknowledged writes grows (every write carries
    ctrl_heartbeat; the link owns it and counts it up once per period)."""
    seen = link.stats.writes
    while True:
        await asyncio.sleep(SAMPLE_S)
        n = link.stats.writes
        if n != seen:
            seen = n
            out.append(time.monotonic())


# ------------------------------------------------------------------------- the daemon


async def daemon_answers(path: str) -> str | None:
    """Why commissioning must not run: a swapd daemon answers on its local socket (or the
    socket exists and cannot be asked); None when no daemon listens there."""
    from station.local_api import LocalApiError, request

    try:
        resp = await request(path, {"cmd": "status"}, timeout=2.0)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        return (f"a swapd socket exists at {path} and this user may not open it: a daemon may "
                "be running against this PLC")
    except (OSError, TimeoutError, LocalApiError) as exc:
        return (f"something listens on {path} but did not answer ({exc or type(exc).__name__})"
                ": a daemon may be running against this PLC")
    state = resp.get("status", {}).get("packml_state", "?") if isinstance(resp, dict) else "?"
    return f"a swapd daemon answers on {path} (state {state})"


def commission_main(cfg: StationConfig, *, duration_s: float, round_trips: int,
                    fmt: str, report_path: str | None) -> int:
    """`swapd commission`: 0 every section passed, 2 one failed, 1 it could not run."""
    from station.local_api import default_socket_path

    def log(text: str) -> None:
        print(f"swapd commission: {text}", file=sys.stderr, flush=True)

    socket = str(cfg.api.socket) if cfg.api.socket is not None else default_socket_path()
    why = asyncio.run(daemon_answers(socket))
    if why is not None:
        print(f"swapd commission: refused: {why}; two controllers writing the PLC's output "
              "block is dangerous: stop the daemon first (systemctl stop swapd)",
              file=sys.stderr)
        return 1
    left: dict[str, bool] = {}
    try:
        obs, contract = asyncio.run(run_commission(
            cfg, duration_s=duration_s, round_trips=round_trips, log=log,
            view_stream=sys.stderr, tty=sys.stderr.isatty(),
            guard=lambda: daemon_answers(socket), outcome=left))
    except CommissionError as exc:
        print(f"swapd commission: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the link was closed on the way out: nothing more is written
        if left.get("stopped"):
            print("swapd commission: interrupted: no report (the PLC was left with "
                  "stop_request cat2 and a ctrl_heartbeat that no longer counts)",
                  file=sys.stderr)
        else:
            print("swapd commission: interrupted: no report; the last write (stop_request "
                  "cat2) was NOT acknowledged: the PLC may still hold stop_request none; its "
                  "ctrl_heartbeat timeout stops the machine", file=sys.stderr)
        return 1
    report = build_report(obs, contract)
    text = render(report, fmt)
    if report_path is not None:
        try:
            with open(report_path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            print(f"swapd commission: --report {report_path}: {exc.strerror or exc}",
                  file=sys.stderr)
            sys.stdout.write(text)
            return 1
        log(f"report written to {report_path}")
    sys.stdout.write(text)
    return exit_code(report)


__all__ = ["CommissionError", "InputSeen", "Observation", "RoundTrip", "build_report",
           "commission_main", "daemon_answers", "format_value", "render", "run_commission"]
