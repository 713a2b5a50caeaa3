"""The scenario runner's results as JUnit XML, for CI (one <testcase> per scenario).

Written with the standard library only. Log tails and check details come from swapd and
the PLC, so they may hold bytes XML 1.0 forbids (NUL, ESC of a colour code, ...): those
are written as a visible `\\xNN` so the file always parses and the reader still sees them.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from station.benchtool.result import Check, ScenarioResult

# Everything outside XML 1.0's Char production (tab, LF and CR are allowed).
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 cannot hold replaced by a visible escape."""
    return _XML_FORBIDDEN.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_line(check: Check) -> str:
    """One check as a line: `name: passed|FAILED|skipped: detail`."""
    status = "skipped" if check.skipped else ("passed" if check.passed else "FAILED")
    return f"{check.name}: {status}: {check.detail}"


def failure_message(result: ScenarioResult) -> str:
    """One line naming the first failing check and what differed (or the run's reason)."""
    failures = result.failures
    if failures:
        return _one_line(f"{failures[0].name}: {failures[0].detail}")
    return _one_line(result.reason or "failed")


def _failure_text(result: ScenarioResult) -> str:
    """Every failing check, then every other check, so the reader sees the whole run."""
    lines: list[str] = []
    if result.reason:
        lines += [result.reason, ""]
    failing = result.failures
    lines.append(f"failed checks ({len(failing)}):")
    lines += [f"  {c.name}: {c.detail}" for c in failing]
    passed = [c for c in result.checks if c.passed and not c.skipped]
    skipped = [c for c in result.checks if c.skipped]
    lines.append(f"passed checks ({len(passed)}):")
    lines += [f"  {c.name}: {c.detail}" for c in passed]
    if skipped:
        lines.append(f"skipped checks ({len(skipped)}):")
        lines += [f"  {c.name}: {c.detail}" for c in skipped]
    return "\n".join(lines)


def _system_out(result: ScenarioResult) -> str:
    parts: list[str] = []
    if result.checks:
        parts.append("\n".join(check_line(c) for c in result.checks))
    if result.log_tail and result.verdict in ("failed", "error"):
        parts.append("--- swapd log tail ---\n" + result.log_tail)
    return "\n\n".join(parts)


def _testcase(result: ScenarioResult) -> ET.Element:
    case = ET.Element("testcase", {
        "classname": xml_safe(f"scenarios.{result.target}"),
        "name": xml_safe(result.name),
        "file": xml_safe(result.file),
        "time": f"{result.duration_s:.3f}",
    })
    if result.verdict == "failed":
        failure = ET.SubElement(case, "failure", {
            "message": xml_safe(failure_message(result)), "type": "ExpectationFailed"})
        failure.text = xml_safe(_failure_text(result))
    elif result.verdict == "error":
        error = ET.SubElement(case, "error", {
            "message": xml_safe(_one_line(result.reason or "error")), "type": "ScenarioError"})
        error.text = xml_safe(result.reason)
    elif result.verdict == "not_run":
        ET.SubElement(case, "skipped", {"message": xml_safe(_one_line(result.reason))})
    out = _system_out(result)
    if out and result.verdict != "not_run":
        ET.SubElement(case, "system-out").text = xml_safe(out)
    return case


def junit_tree(results: list[ScenarioResult], suite: str = "swap-bench") -> ET.ElementTree:
    """The `<testsuites>` document for `results` (one suite)."""
    counts = {
        "tests": str(len(results)),
        "failures": str(sum(r.verdict == "failed" for r in results)),
        "errors": str(sum(r.verdict == "error" for r in results)),
        "skipped": str(sum(r.verdict == "not_run" for r in results)),
        "time": f"{sum(r.duration_s for r in results):.3f}",
    }
    root = ET.Element("testsuites", {"name": xml_safe(suite), **counts})
    testsuite = ET.SubElement(root, "testsuite", {
        "name": xml_safe(suite), **counts,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
    })
    for result in results:
        testsuite.append(_testcase(result))
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(results: list[ScenarioResult], path: Path, suite: str = "swap-bench") -> None:
    """Write `results` as a JUnit XML file at `path` (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_tree(results, suite).write(path, encoding="utf-8", xml_declaration=True)
