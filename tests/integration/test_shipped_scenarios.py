"""Every scenario shipped in scenarios/ runs on the simulator and passes, through the same
runner and target as `swap-bench run scenarios --target sim`. The session writes the JUnit
XML and the HTML report of all of them to test-artifacts/swap-bench/ (CI keeps them as
build artefacts), passed or not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from station.benchtool.html_report import write_html
from station.benchtool.junit import write_junit
from station.benchtool.result import ScenarioResult
from station.benchtool.runner import run_scenario
from station.benchtool.scenario import Scenario, load_scenarios
from station.benchtool.sim_target import SimTarget
from station.rig import artifacts_root

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = load_scenarios([ROOT / "scenarios"])
MIN_SHIPPED = 20


def test_at_least_twenty_scenarios_ship_with_unique_names() -> None:
    assert len(SCENARIOS) >= MIN_SHIPPED
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> Iterator[list[ScenarioResult]]:
    out: list[ScenarioResult] = []
    yield out
    if out:
        dest = artifacts_root(request.config.rootpath) / "swap-bench"
        write_junit(out, dest / "junit.xml")
        write_html(out, dest / "report.html", title="swap-bench: shipped scenarios on sim")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_shipped_scenario_passes_on_sim(scenario: Scenario,
                                              results: list[ScenarioResult]) -> None:
    r = await run_scenario(scenario, SimTarget())
    results.append(r)
    detail = "\n".join(f"  {c.name}: {c.detail}" for c in r.failures)
    assert r.verdict == "passed", (
        f"{r.verdict}: {r.reason}\n{detail}\n--- swapd log tail ---\n{r.log_tail[-2500:]}")
    assert r.samples, "no timeline was recorded"
