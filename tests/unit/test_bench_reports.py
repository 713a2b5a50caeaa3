"""The scenario runner's reports (JUnit XML, HTML with timelines) rendered from hand-made
results: a unit test of rendering, so the data is built here rather than recorded."""

from __future__ import annotations

import base64
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from station.benchtool.html_report import (
    PACKML_ORDER,
    VERDICT_COLOURS,
    render_html,
    select_locations,
    write_html,
)
from station.benchtool.junit import write_junit, xml_safe
from station.benchtool.result import Check, Marker, Sample, ScenarioResult
from station.packml import State
from station.sequence import STEP_NAMES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONTROL_TAIL = "swapd: lift fault\x1b[31m red\x00 nul\x07 bell\x0b vt\nlast line"


def _samples(n: int = 200, slots: int = 20) -> list[Sample]:
    steps = [s.upper() for s in STEP_NAMES]
    out = []
    for i in range(n):
        state = "Idle" if i < 10 else "Execute" if i < 150 else "Held" if i < 170 else "Aborted"
        step = steps[min((i - 10) // 12, len(steps) - 1)] if 10 <= i < 150 else None
        packs: dict[str, dict[str, float | None]] = {
            "bay": {"soc_pct": 20 + i * 0.1, "temp_c": 30 + 5 * math.sin(i / 20)}}
        for k in range(slots):
            # slot:k varies k times as much as slot:1; slot:0 is flat
            packs[f"slot:{k}"] = {"soc_pct": 60.0 + k * 0.01 * (i % 7),
                                  "temp_c": None if i == 100 else 25 + k * 0.1 * math.sin(i / 9)}
        out.append(Sample(t=i * 0.75, state=state, step=step,
                          lift_height_mm=None if 60 < i < 65 else min(i, 100) * 2.0,
                          shuttle_position_mm=(i % 40) * 10.0, packs=packs))
    return out


MARKERS = [
    Marker(30.0, "fault", "lift_overcurrent"), Marker(50.0, "fault_clear", "lift ok"),
    Marker(80.0, "command", "hold"), Marker(90.0, "alarm", "estop"),
    Marker(100.0, "action", "open door"), Marker(110.0, "cloud", "stop from cloud"),
]


def _results() -> list[ScenarioResult]:
    failed = ScenarioResult(
        name="lift overcurrent", file="scenarios/lift_overcurrent.toml",
        description="Lift draws too much <script>alert(1)</script> & holds", target="sim",
        verdict="failed", reason="1 of 3 checks failed", duration_s=12.5, speed=20,
        checks=[Check("state_after_fault", True, "Held as expected"),
                Check("alarm_raised", False, "expected alarm lift_overcurrent, saw none"),
                Check("ground_truth_bolts", True, "not on this target", skipped=True)],
        samples=_samples(), markers=MARKERS, log_tail=CONTROL_TAIL)
    passed = ScenarioResult(
        name="plain swap", file="scenarios/plain.toml", description="one swap", target="sim",
        verdict="passed", duration_s=8.0, checks=[Check("swap_completed", True, "1 swap")],
        samples=_samples(60, slots=2), markers=[])
    not_run = ScenarioResult(
        name="can bus off", file="scenarios/bus_off.toml", description="bus off", target="bench",
        verdict="not_run", reason="the bench cannot make fault can_bus_off")
    error = ScenarioResult(
        name="broken", file="scenarios/broken.toml", description="x", target="bench",
        verdict="error", reason="swapd exited with code 2 at start", duration_s=1.0,
        log_tail="config error\x01")
    return [failed, passed, not_run, error]


# --- JUnit ----------------------------------------------------------------------------


@pytest.fixture
def junit_root(tmp_path: Path) -> ET.Element:
    path = tmp_path / "out" / "junit.xml"
    write_junit(_results(), path, suite="swap-bench-sim")
    return ET.parse(path).getroot()  # parses: the control characters did not break it


def test_junit_counts_match(junit_root: ET.Element) -> None:
    assert junit_root.tag == "testsuites"
    (suite,) = junit_root.findall("testsuite")
    assert suite.get("name") == "swap-bench-sim"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"),
            suite.get("skipped")) == ("4", "1", "1", "1")
    assert float(suite.get("time", "0")) == pytest.approx(21.5)
    assert suite.get("timestamp")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [r.name for r in _results()]
    assert cases[0].get("classname") == "scenarios.sim"
    assert cases[2].get("classname") == "scenarios.bench"
    assert cases[0].get("file") == "scenarios/lift_overcurrent.toml"
    assert cases[0].get("time") == "12.500"


def test_junit_failure_names_what_differed(junit_root: ET.Element) -> None:
    case = junit_root.findall("testsuite/testcase")[0]
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("type") == "ExpectationFailed"
    assert failure.get("message") == (
        "alarm_raised: expected alarm lift_overcurrent, saw none")
    text = failure.text or ""
    # failing checks first, then the passed ones: the reader sees the whole
    assert text.index("alarm_raised") < text.index("state_after_fault")
    assert "ground_truth_bolts" in text
    out = case.findtext("system-out") or ""
    assert "swapd: lift fault" in out and "last line" in out


def test_junit_control_characters_escaped_visibly(junit_root: ET.Element) -> None:
    out = junit_root.findall("testsuite/testcase")[0].findtext("system-out") or ""
    assert "\\x1b[31m red\\x00 nul\\x07 bell\\x0b vt\nlast line" in out
    assert xml_safe("a\tb\nc\rd\x00\ufffe") == "a\tb\nc\rd\\x00\\xfffe"


def test_junit_error_skipped_and_passed(junit_root: ET.Element) -> None:
    _, passed, not_run, error = junit_root.findall("testsuite/testcase")
    assert passed.find("failure") is None and passed.find("error") is None
    assert passed.findtext("system-out") == "swap_completed: passed: 1 swap"
    skipped = not_run.find("skipped")
    assert skipped is not None
    assert skipped.get("message") == "the bench cannot make fault can_bus_off"
    err = error.find("error")
    assert err is not None
    assert err.get("type") == "ScenarioError"
    assert err.get("message") == "swapd exited with code 2 at start"
    assert "config error\\x01" in (error.findtext("system-out") or "")


# --- HTML -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("html") / "report" / "index.html"
    write_html(_results(), path, title="Bench <run> 7")
    return path.read_text(encoding="utf-8")


def test_html_one_png_per_scenario_with_samples(page: str) -> None:
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # failed and passed have samples; not_run and error none
    for b64 in images:
        assert base64.b64decode(b64, validate=True).startswith(PNG_MAGIC)


def test_html_is_self_contained(page: str) -> None:
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<link" not in page and "<script" not in page


def test_html_escapes_text(page: str) -> None:
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; holds" in page
    assert "<title>Bench &lt;run&gt; 7</title>" in page
    assert "\x00" not in page and "\x1b" not in page


def test_html_verdicts_and_summary(page: str) -> None:
    assert '<p class="counts">4 scenarios: ' in page
    for verdict in VERDICT_COLOURS:
        assert re.search(rf'<span class="verdict {verdict}">[^<]*</span> 1\b', page), verdict
        assert f".verdict.{verdict} {{ background: {VERDICT_COLOURS[verdict]}; }}" in page
    # each summary row links to its section
    for i in range(4):
        assert f'href="#scenario-{i}"' in page and f'id="scenario-{i}"' in page
    # the failed row: 1 check passed, 1 failed (the skipped one counts in neither)
    row = re.search(r'<tr><td><a href="#scenario-0">.*?</tr>', page)
    assert row is not None
    assert "<td>1</td><td>1</td><td>1 of 3 checks failed</td>" in row.group()
    assert '<td class="check failed">failed</td>' in page
    assert '<td class="check skipped">skipped</td>' in page


def test_html_log_tail_only_for_failed_and_error(page: str) -> None:
    assert page.count("<details>") == 2
    assert "swapd: lift fault\\x1b[31m red" in page


def test_html_empty_timeline() -> None:
    page = render_html([_results()[2]])
    assert "no timeline recorded" in page
    assert "data:image/png" not in page


def test_location_selection_bay_and_most_varied() -> None:
    chosen, total = select_locations(_samples(40, slots=20))
    assert total == 21
    assert chosen == ["bay"] + [f"slot:{k}" for k in range(12, 20)]


def test_packml_order_covers_every_state() -> None:
    assert sorted(PACKML_ORDER) == sorted(s.label for s in State)


def test_timeline_of_sparse_samples_still_renders() -> None:
    # one instant, an unknown state, no packs, every value None: still a figure, no crash
    sparse = ScenarioResult(
        name="sparse", file="f", description="d", target="bench", verdict="passed",
        samples=[Sample(0.0, "Idle", None),
                 Sample(1.0, "NotAPackMLState", "lift",
                        packs={"slot:1": {"soc_pct": None, "temp_c": None}})],
        markers=[Marker(0.5, "event", "journal event")])
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', render_html([sparse]))
    assert len(images) == 1
    assert base64.b64decode(images[0]).startswith(PNG_MAGIC)
