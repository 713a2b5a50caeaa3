"""The scenario runner's results as one self-contained HTML page with a timeline per scenario.

No external files: the CSS is inline and each figure is a PNG in a `data:` URI, so the page
can be attached to a CI run or mailed as is. Figures use matplotlib's object API
(`Figure`, no pyplot): no global state, no GUI backend, safe from any thread.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from station.benchtool.junit import xml_safe
from station.benchtool.result import Check, Marker, Sample, ScenarioResult
from station.sequence import STEP_NAMES

# The PackML states in the order a reader follows a cycle (the y axis of the state plot).
PACKML_ORDER: tuple[str, ...] = (
    "Idle", "Starting", "Execute", "Completing", "Complete", "Resetting", "Holding", "Held",
    "Unholding", "Suspending", "Suspended", "Unsuspending", "Stopping", "Stopped",
    "Aborting", "Aborted", "Clearing",
)

MARKER_COLOURS: dict[str, str] = {
    "fault": "red", "fault_clear": "green", "command": "tab:blue", "cloud": "tab:blue",
    "action": "grey", "alarm": "orange", "event": "tab:purple",
}

VERDICT_COLOURS: dict[str, str] = {
    "passed": "#2e7d32", "failed": "#c62828", "error": "#6a1b9a", "not_run": "#757575",
}

MAX_PACK_LINES = 8  # rack locations plotted besides the bay (the ones that varied most)
FIG_WIDTH_IN = 11.0
FIG_DPI = 80
BAY = "bay"

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.verdict { font-weight: bold; color: #fff; padding: 0.1em 0.5em; border-radius: 3px; }
""" + "".join(f".verdict.{v} {{ background: {c}; }}\n" for v, c in VERDICT_COLOURS.items()) + """
.check.passed { color: #2e7d32; } .check.failed { color: #c62828; font-weight: bold; }
.check.skipped { color: #757575; }
.description { white-space: pre-wrap; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; }
"""


def _e(text: object) -> str:
    return html.escape(xml_safe(str(text)), quote=True)


def _anchor(index: int) -> str:
    return f"scenario-{index}"


def _check_status(check: Check) -> str:
    return "skipped" if check.skipped else ("passed" if check.passed else "failed")


def _verdict(verdict: str) -> str:
    return f'<span class="verdict {_e(verdict)}">{_e(verdict.replace("_", " "))}</span>'


def _num(value: float | None) -> float:
    """A plottable number: None becomes NaN, which matplotlib draws as a gap."""
    return math.nan if value is None else float(value)


# --- figure ----------------------------------------------------------------------------


def _state_order(samples: list[Sample]) -> list[str]:
    seen = list(dict.fromkeys(s.state for s in samples))
    known = [s for s in PACKML_ORDER if s in seen]
    return known + [s for s in seen if s not in PACKML_ORDER]


def _step_spans(samples: list[Sample]) -> list[tuple[float, float, str]]:
    """(start, end, step) of each run of samples in the same swap step."""
    spans: list[tuple[float, float, str]] = []
    current: str | None = None
    start = 0.0
    for s in samples:
        if s.step != current:
            if current is not None:
                spans.append((start, s.t, current))
            current, start = s.step, s.t
    if current is not None:
        spans.append((start, samples[-1].t, current))
    return spans


def _pack_series(samples: list[Sample], key: str) -> dict[str, list[float]]:
    locations = list(dict.fromkeys(loc for s in samples for loc in s.packs))
    return {loc: [_num(s.packs.get(loc, {}).get(key)) for s in samples] for loc in locations}


def _spread(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) - min(finite) if finite else -1.0


def select_locations(samples: list[Sample], limit: int = MAX_PACK_LINES) -> tuple[list[str], int]:
    """The bay plus the `limit` other locations whose temperature and SOC varied most;
    also how many locations there were in all (for the caption)."""
    temps, socs = _pack_series(samples, "temp_c"), _pack_series(samples, "soc_pct")
    others = [loc for loc in temps if loc != BAY]
    # °C and % are summed as they are: a rough score, it only orders the lines to draw.
    score = {loc: max(_spread(temps[loc]), 0) + max(_spread(socs[loc]), 0) for loc in others}
    chosen = sorted(others, key=lambda loc: -score[loc])[:limit]
    chosen.sort(key=others.index)
    return ([BAY] if BAY in temps else []) + chosen, len(temps)


def _draw_markers(axes: list[Axes], markers: list[Marker]) -> None:
    for ax in axes:
        for m in markers:
            ax.axvline(m.t, color=MARKER_COLOURS.get(m.kind, "black"), lw=0.9, alpha=0.8)
    top = axes[0]
    trans = blended_transform_factory(top.transData, top.transAxes)
    for m in markers:
        label = m.label if len(m.label) <= 28 else m.label[:27] + "…"
        top.text(m.t, 1.02, label, transform=trans, rotation=60, fontsize=6,
                 ha="left", va="bottom", color=MARKER_COLOURS.get(m.kind, "black"))


def _plot_state(ax: Axes, samples: list[Sample], t: list[float]) -> None:
    order = _state_order(samples)
    ax.step(t, [order.index(s.state) for s in samples], where="post", color="black", lw=1.2)
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ax.set_ylim(-0.8, len(order) - 0.2)
    ax.set_ylabel("PackML state", fontsize=8)
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    step_index = {n.upper(): i for i, n in enumerate(STEP_NAMES)}
    for start, end, step in _step_spans(samples):
        shade = "#e3f2fd" if step_index.get(step.upper(), 0) % 2 == 0 else "#fff3e0"
        ax.axvspan(start, end, color=shade, zorder=0)
        ax.text((start + end) / 2, 0.03, step.upper(), transform=trans, rotation=90,
                fontsize=6, ha="center", va="bottom", color="#444")


def _plot_motion(ax: Axes, samples: list[Sample], t: list[float]) -> None:
    ax.plot(t, [_num(s.lift_height_mm) for s in samples], color="tab:green", lw=1.2)
    ax.set_ylabel("lift height (mm)", color="tab:green", fontsize=8)
    ax2 = ax.twinx()
    ax2.plot(t, [_num(s.shuttle_position_mm) for s in samples], color="tab:brown", lw=1.2)
    ax2.set_ylabel("shuttle position (mm)", color="tab:brown", fontsize=8)


def _plot_packs(ax: Axes, samples: list[Sample], t: list[float], key: str, label: str,
                locations: list[str], total: int) -> None:
    series = _pack_series(samples, key)
    for loc in locations:
        ax.plot(t, series[loc], lw=1.0 if loc != BAY else 1.8, label=loc)
    ax.set_ylabel(label, fontsize=8)
    if total > len(locations):
        ax.set_title(f"{label}: the bay and the {len(locations) - (BAY in locations)} of "
                     f"{total - (BAY in series)} rack locations that varied most",
                     fontsize=8, loc="left")
    if locations:
        ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=7, frameon=False)


def timeline_png(result: ScenarioResult) -> bytes:
    """The scenario's timeline as PNG bytes (its samples must not be empty)."""
    samples = sorted(result.samples, key=lambda s: s.t)
    t = [s.t for s in samples]
    fig = Figure(figsize=(FIG_WIDTH_IN, 10.0), dpi=FIG_DPI, layout="constrained")
    axes = list(fig.subplots(4, 1, sharex=True, height_ratios=[1.3, 1, 1, 1]))
    locations, total = select_locations(samples)
    _plot_state(axes[0], samples, t)
    _plot_motion(axes[1], samples, t)
    _plot_packs(axes[2], samples, t, "temp_c", "pack temperature (C)", locations, total)
    _plot_packs(axes[3], samples, t, "soc_pct", "pack SOC (%)", locations, total)
    _draw_markers(axes, result.markers)
    axes[-1].set_xlabel("station seconds since start", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    return buf.getvalue()


# --- page ------------------------------------------------------------------------------


def _summary(results: list[ScenarioResult]) -> str:
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICT_COLOURS}
    line = (f'<p class="counts">{len(results)} scenarios: '
            + ", ".join(f"{_verdict(v)} {n}" for v, n in counts.items()) + "</p>")
    rows = []
    for i, r in enumerate(results):
        n_pass = sum(c.passed and not c.skipped for c in r.checks)
        rows.append(
            f'<tr><td><a href="#{_anchor(i)}">{_e(r.name)}</a></td><td>{_e(r.target)}</td>'
            f"<td>{_verdict(r.verdict)}</td><td>{r.duration_s:.1f} s</td>"
            f"<td>{n_pass}</td><td>{len(r.failures)}</td><td>{_e(r.reason)}</td></tr>")
    return line + (
        "<table><tr><th>scenario</th><th>target</th><th>verdict</th><th>duration</th>"
        "<th>checks passed</th><th>checks failed</th><th>reason</th></tr>"
        + "".join(rows) + "</table>")


def _section(index: int, r: ScenarioResult) -> str:
    parts = [
        f'<section id="{_anchor(index)}"><h2>{_e(r.name)} {_verdict(r.verdict)}</h2>',
        f"<p>{_e(r.file)}, target {_e(r.target)}, speed {r.speed:g}, "
        f"{r.duration_s:.1f} s</p>",
        f'<p class="description">{_e(r.description)}</p>',
    ]
    if r.reason:
        parts.append(f'<p class="reason"><b>Reason:</b> {_e(r.reason)}</p>')
    if r.checks:
        rows = "".join(
            f'<tr><td>{_e(c.name)}</td><td class="check {_check_status(c)}">'
            f"{_check_status(c)}</td><td>{_e(c.detail)}</td></tr>" for c in r.checks)
        parts.append(f"<table><tr><th>check</th><th>result</th><th>detail</th></tr>{rows}"
                     "</table>")
    if r.samples:
        png = base64.b64encode(timeline_png(r)).decode("ascii")
        parts.append(f'<img alt="timeline of {_e(r.name)}" src="data:image/png;base64,{png}">')
    else:
        parts.append('<p class="no-timeline">no timeline recorded</p>')
    if r.log_tail and r.verdict in ("failed", "error"):
        parts.append(f"<details><summary>swapd log tail</summary><pre>{_e(r.log_tail)}</pre>"
                     "</details>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(results: list[ScenarioResult], title: str = "Swap bench report") -> str:
    """The whole page as a string."""
    sections = "\n".join(_section(i, r) for i, r in enumerate(results))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{_e(title)}</h1>\n{_summary(results)}\n{sections}\n</body></html>\n")


def write_html(results: list[ScenarioResult], path: Path,
               title: str = "Swap bench report") -> None:
    """Write `results` as one self-contained HTML page at `path` (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(results, title), encoding="utf-8")
