"""swap-bench's pure parts: reading scenario files (errors name the file and key), matching
event data, when triggers fire, judging expectations from what was seen, the CLI's
check/list and exit codes."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from station.benchtool import cli
from station.benchtool.runner import Run, Seen, data_matches, trigger_time, until_time
from station.benchtool.scenario import (
    Expect,
    Scenario,
    ScenarioError,
    Trigger,
    Until,
    load_scenario,
    load_scenarios,
)

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[scenario]
name = "mini"
description = "one swap"
until = { swaps_ended = 1 }

[[expect]]
swaps = true
completed = 1
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_the_shipped_scenarios_all_read() -> None:
    scenarios = load_scenarios([ROOT / "scenarios"])
    assert len(scenarios) >= 20
    for s in scenarios:
        assert s.path.endswith(".toml") and s.scenario.description


def test_a_scenario_without_expectations_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.split("[[expect]]")[0]
    with pytest.raises(ScenarioError, match="expect"):
        load_scenario(write(tmp_path, text))


@pytest.mark.parametrize("bad, words", [
    ('[[action]]\nwhen = { at_s = 1, step = "LIFT" }\ndo = "recover"', "exactly one of"),
    ('[[action]]\nwhen = { step = "LIFTING" }\ndo = "recover"', "step 'LIFTING'"),
    ('[[action]]\nwhen = { at_s = 1 }\ndo = "fault"', "needs `fault`"),
    ('[[action]]\nwhen = { at_s = 1 }\ndo = "operator"\ncommand = "explode"',
     "operator command 'explode'"),
    ('[[action]]\nwhen = { at_s = 1 }\ndo = "broker"\nstate = "kill"', "broker state"),
    ('[[action]]\nwhen = { at_s = 1 }\ndo = "recover"\nfault = "estop"', "does not apply"),
    ('[[expect]]\nstate = "Held"\ncompleted = 1', "`completed` does not apply"),
    ('[[expect]]\nstate = "("', "not a regular expression"),
    ('[[expect]]\nledger = true\npacks = { "garage" = 1 }', "ledger location"),
    ('[[expect]]\nstatus = "charging_power_kw"', "needs max, min"),
    ('[[expect]]\nevent = "fault"\nafter = 2', "there are 0 actions"),
    ('[setup]\nrack = [{ slot = 1, chemistry = "nmc", family = 20, soc = 90 },'
     ' { slot = 1, chemistry = "lfp", family = 20, soc = 90 }]', "slot is given twice"),
    ('[setup]\nambient_c = -80', "setup.ambient_c"),
    ('[setup]\npower_cap_kw = inf', "setup.power_cap_kw"),
    ('[[action]]\nwhen = { at_s = nan }\ndo = "recover"', "action.0.when.at_s"),
    ('[setup]\nvehicles = [{ vin = "IOQ00000000000000" }]', "setup.vehicles.0.vin"),
    ('[setup]\nwhatever = 1', "setup.whatever"),
])
def test_bad_scenarios_are_refused_naming_the_key(tmp_path: Path, bad: str,
                                                  words: str) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario(write(tmp_path, MINIMAL + "\n" + bad + "\n"))
    assert "s.toml" in str(err.value) and words in str(err.value)


def test_unreadable_and_duplicate_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not TOML"):
        load_scenario(write(tmp_path, "[scenario\n"))
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    d = tmp_path / "dir"
    d.mkdir()
    write(d, MINIMAL, "a.toml")
    write(d, MINIMAL, "b.toml")
    with pytest.raises(ScenarioError, match="also"):
        load_scenarios([d])


def test_needs_cloud_follows_what_the_scenario_uses(tmp_path: Path) -> None:
    assert not load_scenario(write(tmp_path, MINIMAL)).needs_cloud
    s = load_scenario(write(tmp_path, MINIMAL + "[setup]\npower_cap_kw = 30\n"))
    assert s.needs_cloud
    s = load_scenario(write(tmp_path, MINIMAL + '[[expect]]\ntelemetry = "swaps"\n'))
    assert s.needs_cloud


def test_data_matches_searches_strings_and_recurses() -> None:
    data = {"code": "estop_open", "slot": 2, "ok": True, "pack": {"family": 25, "vin": None}}
    assert data_matches(data, {"code": "estop"})
    assert data_matches(data, {"code": "^estop_open$", "slot": 2})
    assert data_matches(data, {"pack": {"family": 25}})
    assert not data_matches(data, {"pack": {"family": 20}})
    assert not data_matches(data, {"slot": 3})
    assert not data_matches(data, {"missing": 1})
    assert not data_matches(data, {"pack": {"vin": "."}})  # None is no text
    assert not data_matches(data, {"ok": 1})  # a bool is not a number
    assert not data_matches(None, {"code": "x"})


def seen_with(events: list[tuple[float, str, dict[str, Any]]]) -> Seen:
    seen = Seen(speed=10.0, wall0=1000.0)
    seen.add_events([{"id": i + 1, "wall": 1000.0 + t / 10.0, "kind": k, "data": d}
                     for i, (t, k, d) in enumerate(events)])
    return seen


SEEN = [
    (0.0, "state", {"new": "Idle", "reason": None}),
    (10.0, "state", {"new": "Execute", "reason": None}),
    (20.0, "step_started", {"step": "lift"}),
    (30.0, "fault", {"code": "estop_open"}),
    (31.0, "state", {"new": "Aborting", "reason": "estop_open"}),
    (32.0, "state", {"new": "Aborted", "reason": "interlock estop_open"}),
    (33.0, "swap_ended", {"outcome": "aborted"}),
    (60.0, "state", {"new": "Execute", "reason": None}),
]


def test_triggers_fire_at_the_nth_occurrence_plus_delay() -> None:
    seen = seen_with(SEEN)
    assert trigger_time(Trigger(at_s=5), seen) == 5
    assert trigger_time(Trigger(step="LIFT", after_s=2), seen) == pytest.approx(22.0)
    assert trigger_time(Trigger(state="Execute"), seen) == pytest.approx(10.0)
    assert trigger_time(Trigger(state="Execute", occurrence=2), seen) == pytest.approx(60.0)
    assert trigger_time(Trigger(state="Execute", occurrence=3), seen) is None
    assert trigger_time(Trigger(state="Abort.*"), seen) == pytest.approx(31.0)
    assert trigger_time(Trigger(event="fault", match={"code": "estop"}), seen) == \
        pytest.approx(30.0)
    assert trigger_time(Trigger(event="fault", match={"code": "smoke"}), seen) is None
    assert trigger_time(Trigger(swaps_ended=1), seen) == pytest.approx(33.0)
    assert trigger_time(Trigger(swaps_ended=2), seen) is None
    assert until_time(Until(state="Aborted"), seen) == pytest.approx(32.0)
    assert until_time(Until(swaps_ended=2), seen) is None


class FakeTarget:
    """Only what Run.check reads: the judging is pure."""

    name = "sim"
    speed = 10.0


def judged(expect: dict[str, Any], status: dict[str, Any] | None = None,
           truth: dict[str, Any] | None = None) -> tuple[bool, str]:
    sc = Scenario.model_validate({
        "scenario": {"name": "x", "description": "x", "until": {"at_s": 1}},
        "expect": [expect]})
    run = Run(sc, FakeTarget())  # type: ignore[arg-type]
    run.seen = seen_with(SEEN)
    run.seen.status = status or {}
    c = run.check(sc.expect[0], [], truth)
    return c.passed, c.detail


def test_expectations_are_judged_and_say_what_differed() -> None:
    assert judged({"state": "Aborted", "reason": "estop"})[0]
    ok, detail = judged({"state": "Held"})
    assert not ok and "not reached" in detail and "Aborted@32" in detail
    assert not judged({"state": "Aborted", "within_s": 20})[0]
    assert not judged({"state": "Aborted", "reason": "smoke"})[0]
    assert judged({"event": "fault", "match": {"code": "estop_open"}, "count": 1})[0]
    ok, detail = judged({"event": "fault", "match": {"code": "smoke"}})
    assert not ok and "estop_open" in detail  # shows the events of that kind it saw
    assert judged({"event": "inhibit", "count": 0})[0]
    assert not judged({"event": "fault", "max_count": 0})[0]
    ok, detail = judged({"swaps": True, "completed": 1})
    assert not ok and "completed 0, aborted or stopped 1" in detail
    assert judged({"swaps": True, "completed": 0, "aborted": 1})[0]
    assert judged({"final_state": "Idle"}, {"packml_state": "Idle"})[0]
    assert not judged({"final_state": "Idle"}, {"packml_state": "Held"})[0]


def test_ledger_compares_swapd_and_the_simulators_truth() -> None:
    status = {"packs": {"vehicle bay": 7, "slot 2": 9, "slot 3": None}}
    truth = {"packs": {"bay": 7, "slot:2": 9, "slot:3": 11, "slot:4": None}, "violations": []}
    assert judged({"ledger": True, "packs": {"bay": 7, "slot:2": 9}}, status, truth)[0]
    assert judged({"ledger": True, "packs": {"slot:3": "any", "slot:4": "empty"}},
                  status, truth)[0]
    ok, detail = judged({"ledger": True, "packs": {"slot:2": 8}}, status, truth)
    assert not ok and "ledger 9, expected 8" in detail
    ok, detail = judged({"ledger": True, "packs": {"slot:2": 9}}, status,
                        {"packs": {"slot:2": 5}})
    assert not ok and "simulator has 5" in detail
    assert not judged({"ledger": True, "packs": {"slot:5": "any"}}, status, truth)[0]


def test_observer_is_skipped_without_ground_truth() -> None:
    sc = Scenario.model_validate({
        "scenario": {"name": "x", "description": "x", "until": {"at_s": 1}},
        "expect": [{"observer": True}]})
    run = Run(sc, FakeTarget())  # type: ignore[arg-type]
    c = run.check(sc.expect[0], [], None)
    assert c.skipped and c.passed
    c = run.check(sc.expect[0], [], {"violations": ["shuttle moved under a lifted car"]})
    assert not c.passed and "1 violation" in c.detail


def test_status_bounds_over_the_samples() -> None:
    sc = Scenario.model_validate({
        "scenario": {"name": "x", "description": "x", "until": {"at_s": 1}},
        "expect": [{"status": "charging_power_kw", "max": 30, "reach": 10}]})
    run = Run(sc, FakeTarget())  # type: ignore[arg-type]
    run.statuses = [(1.0, {"charging_power_kw": 0}), (2.0, {"charging_power_kw": 29.5})]
    assert run.check(sc.expect[0], [], None).passed
    run.statuses.append((3.0, {"charging_power_kw": 31.0}))
    c = run.check(sc.expect[0], [], None)
    assert not c.passed and "31 > 30 at t=3.0" in c.detail
    run.statuses = [(1.0, {"charging_power_kw": 2.0})]
    assert "never reached 10" in run.check(sc.expect[0], [], None).detail
    run.statuses = [(1.0, {})]
    assert not run.check(sc.expect[0], [], None).passed


def test_cli_check_list_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    assert cli.main(["check", str(ROOT / "scenarios")]) == cli.EXIT_OK
    assert "scenarios read, no errors" in capsys.readouterr().out
    assert cli.main(["list", str(ROOT / "scenarios")]) == cli.EXIT_OK
    assert "one-swap" in capsys.readouterr().out
    bad = write(tmp_path, MINIMAL.replace('name = "mini"', 'name = "Not A Name"'))
    assert cli.main(["check", str(bad)]) == cli.EXIT_USAGE
    assert "scenario.name" in capsys.readouterr().err
    assert cli.main(["run", str(write(tmp_path, MINIMAL, "ok.toml")), "-k", "nothing*"]) \
        == cli.EXIT_USAGE
    assert cli.main(["run", str(ROOT / "scenarios" / "01_one_swap.toml"),
                     "--target", "bench"]) == cli.EXIT_USAGE
    assert "--bench-config" in capsys.readouterr().err


def test_select_by_glob() -> None:
    scenarios = load_scenarios([ROOT / "scenarios"])
    picked = cli.select(scenarios, ["one-*"])
    assert [s.name for s in picked] == ["one-swap"]
    assert cli.select(scenarios, []) == scenarios


def test_expect_describe_and_bounds() -> None:
    e = Expect(event="fault", match={"code": "x"}, min_count=2)
    assert e.bounds() == (2, None) and "event fault" in e.describe()
    assert Expect(event="fault").bounds() == (1, None)
    assert Expect(event="fault", count=0).bounds() == (0, 0)
    assert Expect(event="fault", max_count=0).bounds() == (0, 0)  # must never happen
    assert Expect(event="fault", max_count=2).bounds() == (0, 2)


def test_the_journals_history_before_the_run_is_not_counted() -> None:
    seen = Seen(speed=1.0, wall0=1000.0, history_before=999.0)
    seen.add_events([{"id": 1, "wall": 10.0, "kind": "fault", "data": {}},
                     {"id": 2, "wall": 999.5, "kind": "fault", "data": {}}])
    assert seen.last_event_id == 2 and len(seen.of_kind("fault")) == 1


async def test_the_state_swapd_starts_or_restarts_in_is_seen_from_its_status() -> None:
    class Statuses(FakeTarget):
        def __init__(self) -> None:
            self.answers = [{"packml_state": "Idle"}, {"packml_state": "Idle"},
                            {"packml_state": "(swapd down)", "down": True},
                            {"packml_state": "Held", "reason": "restart during store"}]

        async def status(self) -> dict[str, Any]:
            return self.answers.pop(0)

        async def events_after(self, event_id: int) -> list[dict[str, Any]]:
            return []

    sc = Scenario.model_validate({
        "scenario": {"name": "x", "description": "x", "until": {"at_s": 1}},
        "expect": [{"state": "Held"}]})
    run = Run(sc, Statuses())  # type: ignore[arg-type]
    for _ in range(4):
        await run.observe()
    assert [s for _, s, _ in run.seen.states] == ["Idle", "Held"]
    assert [s.state for s in run.result.samples][2] == "(swapd down)"


def test_the_network_set_up_is_the_same_commands_on_every_target(tmp_path: Path) -> None:
    from station.benchtool.cloud_side import fill_command_args, setup_commands

    s = load_scenario(write(tmp_path, MINIMAL + textwrap.dedent("""
        [setup]
        power_cap_kw = 30
        authorisations = [{ vin_prefix = "LJ1", families = [20] }]
        reservations = [{ vin = "LJ1EEASR5N4000222", min_soc_pct = 90, ttl_s = 600 }]
        """)))
    cmds = setup_commands(s.setup)
    assert [c for c, _ in cmds] == ["set_authorisations", "reserve_pack", "set_power_cap"]
    auth = fill_command_args(*cmds[0], now=1000.0)
    assert auth["entries"] == [{"vin_prefix": "LJ1", "families": [20]}]
    assert {"version", "valid_from", "valid_until"} <= set(auth)
    res = fill_command_args(*cmds[1], now=1000.0)
    assert "ttl_s" not in res and res["expires_at"].startswith("1970-01-01T00:26:40")
