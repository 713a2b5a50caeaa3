"""The bench target on a rehearsal bench: the simulated station with swapd as a process
(its local API on a socket, as on a bench) and the simulated relay board wired to the
simulator's faults, coil 0 opening the e-stop chain."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sim_hw.relay_board import RelayBoard, SimFaultWiring
from station.benchtool.bench_config import load_bench_config
from station.benchtool.bench_target import BenchTarget
from station.benchtool.scenario import Action, Scenario, Trigger, load_scenario
from station.benchtool.target import TargetError
from station.rig import ProcessRig

SPEED = 20.0


@dataclass
class Bench:
    rig: ProcessRig
    board: RelayBoard
    config: Path


async def until(what: str, cond: Callable[[], Any], timeout: float = 20.0) -> None:
    """Wait for an async-free condition; the timeout only bounds a failing test."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def status_until(t: BenchTarget, what: str, pred: Callable[[dict[str, Any]], bool],
                       timeout: float = 20.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        st = await t.status()
        if pred(st):
            return st
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}; status {st}")
        await asyncio.sleep(0.05)


def bench_config(tmp_path: Path, rig: ProcessRig, board: RelayBoard, coils: str) -> Path:
    p = tmp_path / "bench.toml"
    p.write_text(textwrap.dedent(f"""
        [bench]
        name = "rehearsal"
        socket = "{rig.workdir / 'swapd.sock'}"
        setup = "assume"
        [[bench.relay]]
        name = "relays-1"
        host = "127.0.0.1"
        port = {board.port}
        device_id = 1
        timeout_s = 2
        [bench.relay.coils]
    """) + textwrap.dedent(coils))
    return p


def scenario_file(tmp_path: Path, text: str) -> Scenario:
    p = tmp_path / "scenario.toml"
    p.write_text(textwrap.dedent(text))
    return load_scenario(p)


ESTOP_SCENARIO = """
    [scenario]
    name = "estop-at-rest"
    description = "The e-stop chain opens at rest: the interlock trips; closed again it clears."
    until = {at_s = 4, settle_s = 1}
    [setup]
    vehicle_count = 0
    [[action]]
    when = {at_s = 1}
    do = "fault"
    fault = "estop"
    [[action]]
    when = {at_s = 2.5}
    do = "clear_fault"
    fault = "estop"
    [[expect]]
    event = "inhibit"
    match = {reason = "estop_open"}
    count = 1
    after = 1
    [[expect]]
    final_state = "Idle"
    [[expect]]
    observer = true
"""


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    async with ProcessRig(speed=SPEED, vehicles=1, workdir=tmp_path / "rig", name="bench",
                          config={"operation": {"auto_start": False}}) as rig:
        await rig.daemon.status()  # its API answers
        wiring = SimFaultWiring(rig.sim.faults, {0: "estop"})
        async with RelayBoard(coils=8, on_coil=wiring) as board:
            yield Bench(rig, board, bench_config(tmp_path, rig, board, """
                0 = "estop"
                9 = "smoke"
            """))


def fault(name: str, do: str = "fault") -> Action:
    return Action(when=Trigger(at_s=0), do=do, fault=name)


async def test_status_events_and_the_estop_relay(bench: Bench, tmp_path: Path) -> None:
    rig, board = bench.rig, bench.board
    target = BenchTarget(load_bench_config(bench.config))
    sc = scenario_file(tmp_path, ESTOP_SCENARIO)
    assert target.cannot(sc) is None
    await target.start(sc)
    try:
        st = await target.status()
        assert st["packml_state"] and "active_interlocks" in st
        events = await target.events_after(0)
        assert events, "the journal has the daemon's start at least"
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and {"id", "wall", "t", "kind", "data"} <= set(events[0])
        later = await target.events_after(ids[-1])
        assert all(e["id"] > ids[-1] for e in later)

        label = await target.act(fault("estop"))
        assert label == "estop: relays-1 coil 0 on"
        assert board.state[0] is True
        assert rig.sim.faults.is_active("estop")
        # the car (arrived with the rig) may still be being identified: until then there is
        # no start to inhibit, and the inhibit is said once it is
        st = await status_until(target, "the e-stop interlock inhibiting the start",
                                lambda s: "estop_open" in s["active_interlocks"]
                                and "estop_open" in str(s["start_inhibited"]))
        assert st["packml_state"] == "Idle"  # at rest: nothing to abort, starts inhibited

        label = await target.act(fault("estop", "clear_fault"))
        assert label == "estop cleared: relays-1 coil 0 off"
        assert board.state[0] is False
        assert not rig.sim.faults.is_active("estop")
        await status_until(target, "the interlock gone",
                           lambda s: "estop_open" not in s["active_interlocks"])

        # made again and left on: stop() switches it off
        await target.act(fault("estop"))
        assert board.state[0] is True
    finally:
        await target.stop()
    assert board.state == [False] * board.coils
    assert not rig.sim.faults.is_active("estop")


async def test_a_refused_coil_is_named(bench: Bench, tmp_path: Path) -> None:
    target = BenchTarget(load_bench_config(bench.config))
    sc = scenario_file(tmp_path, ESTOP_SCENARIO)
    await target.start(sc)
    try:
        with pytest.raises(TargetError) as exc:
            await target.act(fault("smoke"))  # coil 9: beyond the board's 8
        msg = str(exc.value)
        assert "relay relays-1 (127.0.0.1:" in msg and "coil 9" in msg, msg
        assert "Modbus exception 02 ILLEGAL DATA ADDRESS" in msg, msg
        assert bench.board.state == [False] * 8
    finally:
        await target.stop()


async def test_a_relay_that_does_not_answer(bench: Bench, tmp_path: Path) -> None:
    cfg = load_bench_config(bench.config)
    relay = cfg.bench.relay[0].model_copy(update={"device_id": 7, "timeout_s": 0.3})
    cfg = cfg.model_copy(update={"bench": cfg.bench.model_copy(update={"relay": [relay]})})
    target = BenchTarget(cfg)
    sc = scenario_file(tmp_path, ESTOP_SCENARIO)
    await target.start(sc)
    try:
        with pytest.raises(TargetError, match=r"coil 0: switching on: no answer"):
            await target.act(fault("estop"))  # the board answers device 1 only
    finally:
        await target.stop()
    assert not bench.rig.sim.faults.is_active("estop")


async def test_a_scenario_end_to_end(bench: Bench, tmp_path: Path) -> None:
    from station.benchtool.runner import run_scenario

    target = BenchTarget(load_bench_config(bench.config))
    sc = scenario_file(tmp_path, ESTOP_SCENARIO)
    result = await run_scenario(sc, target)
    assert result.target == "bench" and result.speed == 1.0
    assert result.verdict == "passed", (result.reason, result.checks)
    observer = [c for c in result.checks if "observer" in c.name]
    assert observer and observer[0].skipped
    assert any(m.kind == "fault" and "estop" in m.label for m in result.markers)
    assert bench.board.state == [False] * 8


async def test_swap_sim_serves_the_relay_board(bench: Bench) -> None:
    """`[sim.relay]` in swap-sim's config: the board it serves sets the wired fault."""
    from sim_hw.cli import _start_relay
    from sim_hw.config import parse_sim_config
    from station.benchtool.adapters import RelayAdapter
    from station.benchtool.bench_config import CoilFault, RelayModule

    sim = bench.rig.sim
    cfg = parse_sim_config({"sim": {"relay": {"port": 0, "count": 4,
                                              "coils": {"2": "door_open"}}}})
    board = await _start_relay(sim, cfg)
    assert isinstance(board, RelayBoard)
    relay = RelayAdapter(RelayModule(name="sim", host="127.0.0.1", port=board.port,
                                     coils={2: CoilFault(fault="door_open")}))
    try:
        assert await relay.make("door_open", None, None) == "door_open: sim coil 2 on"
        assert sim.faults.is_active("door_open")
        await relay.close()  # switches it off
        assert not sim.faults.is_active("door_open") and board.state == [False] * 4
    finally:
        await relay.close()
        await board.stop()
