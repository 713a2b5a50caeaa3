"""Fixtures that start real parts: the simulated station (Modbus TCP on loopback, CAN on a
python-can virtual channel) and the daemon pointed at it, through `station.rig`.

A failed test leaves its rigs' artifacts (journal copy, simulator state, daemon status,
events and log) in test-artifacts/<test name>/ under the rootdir, or $SWAP_ARTIFACTS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from drivers.bms.canbus import UdpPortLease
from station.rig import (
    PlcProtocol,
    Rig,
    artifact_dir_name,
    artifacts_root,
    begin_artifacts,
    current_artifacts,
    end_artifacts,
)

# The helper the tests use: sim, daemon, core, events, ended(), wait_for(), sim_sleep().
Station = Rig


PLC_PROTOCOLS: list[PlcProtocol] = ["modbus", "opcua"]


@pytest.fixture(params=PLC_PROTOCOLS)
def plc(request: pytest.FixtureRequest) -> PlcProtocol:
    """The PLC protocol a rig test runs over: every such test runs over both."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def station(tmp_path: Path, request: pytest.FixtureRequest,
                  plc: PlcProtocol) -> AsyncIterator[Station]:
    params = getattr(request, "param", {})
    async with Rig(speed=params.get("speed", 50.0), vehicles=params.get("vehicles", 3),
                   workdir=tmp_path, name="test", plc=plc) as rig:
        yield rig


@pytest.fixture
def can_port() -> Iterator[int]:
    """A udp_multicast port of this test's own: no other test run on the host (another
    worker, another checkout) is given it while the test runs, whatever the group."""
    with UdpPortLease() as lease:
        yield lease.port


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Rigs started from here until the test's end belong to it."""
    begin_artifacts(artifacts_root(item.config.rootpath) / artifact_dir_name(item.name))


Report = Generator[None, pytest.TestReport, pytest.TestReport]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Report:
    """Tell the rigs their test failed; once it is over (teardown), they save artifacts."""
    rep = yield
    session = current_artifacts()
    if session is None:
        return rep
    if rep.failed:
        session.mark_failed(f"{rep.when}: {rep.longreprtext}")
        if session.rigs:
            rep.sections.append(("rig artifacts", f"saved to {session.dest}"))
    if rep.when == "teardown":
        end_artifacts()
    return rep


from sim_hw.pytest_broker import broker, plain_broker  # noqa: F401, E402
