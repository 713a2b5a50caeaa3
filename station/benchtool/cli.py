"""swap-bench: run scenarios on the simulator or a bench, write JUnit and HTML reports.

    swap-bench run scenarios/ --target sim --junit out.xml --report out.html
    swap-bench run scenarios/estop_during_lift.toml --target bench --bench-config bench.toml
    swap-bench check scenarios/        # read every file, report errors, run nothing
    swap-bench list scenarios/         # name, what it covers, its description

Exit codes: 0 every scenario run passed (and, with --strict, none was left not run);
1 a scenario failed, errored (or, with --strict, was not run); 2 bad usage or a scenario
or bench file that cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from station.benchtool.result import ScenarioResult
from station.benchtool.scenario import Scenario, ScenarioError, load_scenarios

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
VERDICT_WORD = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "not_run": "NOT RUN"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swap-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios on a target")
    run.add_argument("scenarios", nargs="+", help="scenario files or directories of them")
    run.add_argument("--target", choices=("sim", "bench"), default="sim")
    run.add_argument("--bench-config", type=Path, help="the bench's TOML (--target bench)")
    run.add_argument("--junit", type=Path, help="write a JUnit XML report here")
    run.add_argument("--report", type=Path, help="write an HTML report with plots here")
    run.add_argument("-k", dest="select", action="append", default=[],
                     help="run only scenarios whose name matches this glob (repeatable)")
    run.add_argument("--plc", choices=("modbus", "opcua"),
                     help="sim: the PLC protocol (default: the scenario's, else Modbus)")
    run.add_argument("--keep", type=Path,
                     help="sim: keep each scenario's work directory (journal, logs) here")
    run.add_argument("--yes", action="store_true",
                     help="bench: prompt the engineer even when stdin is not a terminal")
    run.add_argument("--strict", action="store_true",
                     help="a scenario not run counts as a failure (CI on the simulator)")
    for word, text in (("check", "read the scenario files and report errors"),
                       ("list", "list the scenarios")):
        sp = sub.add_parser(word, help=text)
        sp.add_argument("scenarios", nargs="+")
    return p


def select(scenarios: list[Scenario], patterns: list[str]) -> list[Scenario]:
    if not patterns:
        return scenarios
    return [s for s in scenarios if any(fnmatch.fnmatch(s.name, p) for p in patterns)]


def _make_target(args: argparse.Namespace) -> Any:
    if args.target == "sim":
        from station.benchtool.sim_target import SimTarget

        return SimTarget(plc=args.plc, keep_dir=args.keep)
    from station.benchtool.adapters import PromptAdapter
    from station.benchtool.bench_config import load_bench_config
    from station.benchtool.bench_target import BenchTarget

    if args.bench_config is None:
        raise ScenarioError("--target bench needs --bench-config FILE")
    cfg = load_bench_config(args.bench_config)
    interactive = args.yes or sys.stdin.isatty()
    prompt = PromptAdapter(timeout_s=cfg.bench.prompt.timeout_s) if interactive else None
    return BenchTarget(cfg, prompt=prompt)


def progress_line(r: ScenarioResult) -> str:
    passed = sum(1 for c in r.checks if c.passed and not c.skipped)
    line = (f"{VERDICT_WORD[r.verdict]:7} {r.name}  ({r.duration_s:.1f} s, "
            f"{passed}/{len(r.checks)} checks)")
    if r.verdict == "failed":
        return line + "".join(f"\n        {c.name}: {c.detail}" for c in r.failures)
    return line + (f"\n        {r.reason}" if r.reason else "")


async def run_all(scenarios: list[Scenario], target: Any,
                  out: TextIO = sys.stdout) -> list[ScenarioResult]:
    from station.benchtool.runner import run_scenario

    results: list[ScenarioResult] = []
    for i, sc in enumerate(scenarios, 1):
        print(f"[{i}/{len(scenarios)}] {sc.name} on {target.name}: "
              f"{sc.scenario.description.splitlines()[0][:100]}", file=out, flush=True)
        r = await run_scenario(sc, target)
        results.append(r)
        print(progress_line(r), file=out, flush=True)
    return results


def summary(results: list[ScenarioResult]) -> str:
    counts = {v: sum(1 for r in results if r.verdict == v) for v in VERDICT_WORD}
    return (f"{len(results)} scenarios: {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['error']} errors, {counts['not_run']} not run")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        scenarios = load_scenarios(args.scenarios)
    except ScenarioError as exc:
        print(f"swap-bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        print(f"{len(scenarios)} scenarios read, no errors")
        return EXIT_OK
    if args.command == "list":
        for s in scenarios:
            covers = f" [{', '.join(s.scenario.covers)}]" if s.scenario.covers else ""
            print(f"{s.name}{covers}\n    {s.scenario.description.splitlines()[0]}")
        return EXIT_OK
    scenarios = select(scenarios, args.select)
    if not scenarios:
        print("swap-bench: no scenario selected", file=sys.stderr)
        return EXIT_USAGE
    from station.logs import configure_logging

    configure_logging("warning", "console")
    # the simulator's and the links' connection noise at shutdown is not the report's
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        target = _make_target(args)
    except (ScenarioError, ValueError) as exc:
        print(f"swap-bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    results = asyncio.run(run_all(scenarios, target))
    if args.junit is not None:
        from station.benchtool.junit import write_junit

        write_junit(results, args.junit)
        print(f"JUnit report: {args.junit}")
    if args.report is not None:
        from station.benchtool.html_report import write_html

        write_html(results, args.report)
        print(f"HTML report: {args.report}")
    print(summary(results))
    bad = {"failed", "error"} | ({"not_run"} if args.strict else set())
    return EXIT_FAILED if any(r.verdict in bad for r in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
