"""The vcan tier: tests marked `vcan` run on a real SocketCAN vcan0 (vm.py).

Where they run:
- inside the VM ($SWAP_IN_VCAN_VM=1, set by its /init), or on a host whose kernel has
  vcan0 up (a bench: deploy/vcan0.sh): as ordinary tests;
- anywhere else (these machines: no CAN in the kernel): each selected vcan test is
  replaced by a proxy; the first proxy to run boots ONE VM that runs all of them
  (`pytest -m vcan <node ids>`), and every proxy reports its own test's outcome in the VM
  (failure text included). The terminal summary says how the tier went.

Without qemu, a kernel with the CAN modules or a static busybox the proxies are skipped
with the reason and the summary says "vcan tier NOT RUN"; with CI=true they fail instead.
Never a silent pass."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.vcan import vm
from tests.vcan.support import native_vcan

RESULTS_ENV = "SWAP_VCAN_RESULTS"  # in the VM: where each test's outcome is appended
TIMEOUT_ENV = "SWAP_VCAN_TIMEOUT"
VM_TIMEOUT_S = 480.0  # the whole tier; it takes ~2-3 min (see README, bench section)


@dataclass
class Tier:
    """The host's one VM run for the session."""

    items: list[pytest.Item] = field(default_factory=list)
    ran: bool = False
    not_run: str | None = None  # why the VM could not run
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    result: vm.VmResult | None = None
    work: Path | None = None
    error: str | None = None  # the VM ran but did not end normally


TIER = pytest.StashKey[Tier]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class VcanProxy(pytest.Item):
    """Stands for a vcan test on a host without SocketCAN: its outcome is the VM's."""

    def __init__(self, *, test_location: tuple[Any, int | None, str], **kw: Any) -> None:
        super().__init__(**kw)
        self._location = test_location

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self._location

    def runtest(self) -> None:
        tier = self.config.stash[TIER]
        if not tier.ran:
            tier.items = [i for i in self.session.items if isinstance(i, VcanProxy)]
            _run_tier(self.config, tier)
        if tier.not_run is not None:
            msg = f"vcan tier NOT RUN: {tier.not_run}; install: {vm.INSTALL_HINT}"
            if _in_ci():
                pytest.fail(msg + " (CI=true: the tier must run)", pytrace=False)
            pytest.skip(msg)
        got = tier.results.get(self.nodeid)
        if got is None:
            tail = "\n".join((tier.result.output if tier.result else "").splitlines()[-60:])
            pytest.fail(f"no result from the VM for this test ({tier.error or 'not run'});"
                        f" the VM's console ends:\n{tail}", pytrace=False)
        if got["outcome"] == "failed":
            pytest.fail(f"failed in the vcan VM ({got['when']}):\n{got['longrepr']}",
                        pytrace=False)
        if got["outcome"] == "skipped":
            pytest.skip(f"skipped in the vcan VM: {got['longrepr']}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Off SocketCAN: each vcan test becomes a proxy of its VM run (markers kept, so -m
    and -k select the same)."""
    if native_vcan():
        return
    config.stash.setdefault(TIER, Tier())
    for i, item in enumerate(items):
        if item.get_closest_marker("vcan") is None or isinstance(item, VcanProxy):
            continue
        assert item.parent is not None
        proxy = VcanProxy.from_parent(item.parent, name=item.name,
                                      test_location=item.reportinfo())
        for mark in item.own_markers:  # the parents' (module pytestmark) are shared
            if mark.name != "timeout":
                proxy.own_markers.append(mark)
                proxy.keywords[mark.name] = mark
        # the first proxy waits for the whole VM run
        proxy.add_marker(pytest.mark.timeout(_timeout() + 120))
        items[i] = proxy


def _timeout() -> float:
    return float(os.environ.get(TIMEOUT_ENV, VM_TIMEOUT_S))


def _run_tier(config: pytest.Config, tier: Tier) -> None:
    tier.ran = True
    why = vm.missing()
    if why:
        tier.not_run = "; ".join(why)
        return
    tier.work = Path(tempfile.mkdtemp(prefix="swap-vcan-"))
    results = tier.work / "results.jsonl"
    log = tier.work / "console.log"
    argv = [str(vm.VENV_BIN / "python"), "-m", "pytest", "-p", "no:cacheprovider",
            "-m", "vcan", "-q", "-rfEs", f"--junitxml={tier.work / 'vcan.xml'}",
            *[i.nodeid for i in tier.items]]
    echo = config.getoption("capture") == "no"
    with log.open("w") as logf:
        def line(text: str) -> None:
            logf.write(text + "\n")
            logf.flush()
            if echo:
                print(f"[vcan] {text}", file=sys.__stderr__, flush=True)

        try:
            tier.result = vm.run(argv, work=tier.work, cwd=config.rootpath,
                                 env={RESULTS_ENV: str(results)}, timeout=_timeout(),
                                 on_line=line)
        except vm.VmUnavailable as exc:
            tier.not_run = str(exc)
            return
    if results.exists():
        for raw in results.read_text().splitlines():
            rec = json.loads(raw)
            # a failed teardown after a passed call is the test's outcome
            if rec["nodeid"] not in tier.results or rec["outcome"] != "passed":
                tier.results[rec["nodeid"]] = rec
    res = tier.result
    if res.timed_out:
        tier.error = f"the VM was killed after {_timeout():g} s"
    elif res.status is None:
        tier.error = "the VM ended without the command's exit status"
    elif res.status not in (0, 1):
        tier.error = f"pytest in the VM exited with {res.status}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tier = config.stash.get(TIER, None)
    if tier is None or not tier.ran:
        return
    tr = terminalreporter
    if tier.not_run is not None:
        tr.write_line(f"vcan tier NOT RUN: {tier.not_run}, install: {vm.INSTALL_HINT}"
                      + (" (CI=true: failed)" if _in_ci() else ""),
                      red=_in_ci(), yellow=not _in_ci(), bold=True)
        return
    res = tier.result
    assert res is not None and tier.work is not None
    counts: dict[str, int] = {}
    for rec in tier.results.values():
        counts[rec["outcome"]] = counts.get(rec["outcome"], 0) + 1
    boot = "?" if res.boot_s is None else f"{res.boot_s:.1f}"
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no results"
    ok = tier.error is None and counts.get("failed", 0) == 0 and \
        len(tier.results) == len(tier.items)
    tr.write_line(f"vcan tier: {summary} of {len(tier.items)} in the VM on vcan0 "
                  f"(boot {boot} s, total {res.total_s:.1f} s)"
                  + ("" if tier.error is None else f"; {tier.error}"),
                  green=ok, red=not ok, bold=True)
    if config.getoption("verbose") > 0:
        for nodeid, rec in tier.results.items():
            tr.write_line(f"  {rec['duration']:6.1f} s in the VM  {rec['outcome']:7}  {nodeid}")
    if ok:
        shutil.rmtree(tier.work, ignore_errors=True)
    else:
        tr.write_line(f"vcan tier: the VM's console and results are kept in {tier.work}")


# ---- inside the VM (or on a bench): each test's outcome for the host ------------------

def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not path or not (report.failed or report.skipped or report.when == "call"):
        return
    rec = {"nodeid": report.nodeid, "outcome": report.outcome, "when": report.when,
           "duration": report.duration, "at": time.time(),
           "longrepr": _skip_reason(report) if report.skipped else report.longreprtext}
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _skip_reason(report: pytest.TestReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return report.longreprtext
