"""Issue 10, maintenance mode's rules over real Modbus TCP and CAN: who may change the unit
mode and when, what maintenance refuses, an interlock stopping a recovery step, and the
whole recovery through the real `swapctl` against a swapd process killed and restarted
after the abort (the interrupted swap rebuilt from the journal)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from station.commands import CommandRequest, CommandResult, Origin
from station.image import BAY, StopRequest
from station.packml import State
from station.rig import ProcessRig, Rig
from tests.integration.test_recovery import ledger_matches, recover, truth_ledger

SPEED = 100.0
WAIT_S = 20.0
pytestmark = pytest.mark.timeout(120)


async def submit(rig: Rig, word: str, origin: Origin = Origin.LOCAL,
                 **args: Any) -> CommandResult:
    return await rig.daemon.submit(CommandRequest(word, origin, "test", args=args))


async def abort_in_remove(rig: Rig) -> None:
    """Abort with the car's pack on the shuttle away from home."""
    core, sim = rig.core, rig.sim
    await rig.wait_for(lambda: core.step is not None and core.step.name == "remove"
                       and sim.truth()["shuttle"] is not None
                       and sim.truth()["shuttle_mm"] > 50, WAIT_S, poll=0.001,
                       what="the pack on the shuttle, away from home")
    assert (await submit(rig, "abort")).accepted
    await rig.wait_for(lambda: core.state == State.ABORTED, WAIT_S, what="Aborted")


async def test_mode_and_maintenance_refusals(tmp_path: Path) -> None:
    async with Rig(speed=SPEED, vehicles=1, workdir=tmp_path, name="refusals") as rig:
        core = rig.core
        await rig.wait_for(lambda: core.step is not None and core.step.name == "lift", WAIT_S)
        during = await submit(rig, "unit_mode", mode="maintenance")  # a swap runs
        assert not during.accepted and "a swap is in progress" in (during.reason or "")
        await abort_in_remove(rig)
        cloud = await submit(rig, "unit_mode", Origin.CLOUD, mode="maintenance")
        assert not cloud.accepted and cloud.code == "not_permitted"
        recover = await submit(rig, "recover")
        assert not recover.accepted and "production mode" in (recover.reason or "")
        single = await submit(rig, "maintenance_command", command="NOOP")
        assert not single.accepted and "production mode" in (single.reason or "")
        assert (await submit(rig, "unit_mode", Origin.BENCH, mode="maintenance")).accepted
        assert core.status()["unit_mode"] == "Maintenance"
        assert (await submit(rig, "clear")).accepted  # CLEAR allowed in maintenance
        await rig.wait_for(lambda: core.state == State.STOPPED, WAIT_S, what="Stopped")
        reset = await submit(rig, "reset")
        assert not reset.accepted
        assert (reset.reason or "").startswith("reset refused: station in maintenance mode: ")
        started = await submit(rig, "recover")
        assert started.accepted and started.result is not None
        assert started.result["command"] == "INSTALL"  # the car's pack back into its bay
        # pack trust is told what arrives in the bay, as a swap's INSTALL does
        assert core.interrupted is not None
        expected = core.trust._expected.get(BAY) or core.trust.bindings.get(BAY)
        assert expected is not None
        serial = expected[0].serial if isinstance(expected, tuple) else \
            expected.identity.serial
        assert serial == core.interrupted.plan.pack_out.serial
        leave = await submit(rig, "unit_mode", mode="produce")  # the command runs
        assert not leave.accepted and "is running" in (leave.reason or "")
        again = await submit(rig, "maintenance_command", command="NOOP")
        assert not again.accepted and "still running" in (again.reason or "")
        await rig.wait_for(lambda: core.maintenance.run.state == "done", WAIT_S)
        assert (await submit(rig, "unit_mode", mode="produce")).accepted
        start = await submit(rig, "start")
        assert not start.accepted  # away from home (bolts loose) in production too
        await rig.wait_for(lambda: [e.kind for e in rig.events].count("unit_mode") == 2,
                           WAIT_S, what="both mode changes journaled")
        assert rig.sim.observer.violations == []


async def test_an_interlock_stops_a_recovery_step_and_the_plan_is_recomputed(
        tmp_path: Path) -> None:
    async with Rig(speed=SPEED, vehicles=1, workdir=tmp_path, name="interlock") as rig:
        core, sim = rig.core, rig.sim
        await abort_in_remove(rig)
        assert (await submit(rig, "unit_mode", mode="maintenance")).accepted
        first = await recover(rig)
        assert first.accepted and first.result is not None
        assert first.result["command"] == "INSTALL"
        sim.faults.set("light_curtain")
        await rig.wait_for(lambda: core.maintenance.run.state != "running", WAIT_S)
        run = core.maintenance.run
        assert run.state == "failed" and run.code == "light_curtain_breached", run.as_dict()
        assert core.outputs["stop_request"] == StopRequest.CAT1
        await rig.wait_for(lambda: any(e.kind == "maintenance_failed" for e in rig.events),
                           WAIT_S, what="the failure journaled")
        refused = await submit(rig, "recover")  # the curtain still breached
        assert not refused.accepted and "light_curtain_breached" in (refused.reason or "")
        sim.faults.clear("light_curtain")
        await rig.wait_for(lambda: not core.active_interlocks, WAIT_S)
        for _ in range(6):  # the plan again, from where the stop left the machine
            r = await recover(rig)
            if r.code == "nothing_to_do":
                break
            assert r.accepted, r.reason
            await rig.wait_for(lambda: core.maintenance.run.state != "running", WAIT_S)
            assert core.maintenance.run.state == "done", core.maintenance.run.as_dict()
        else:
            raise AssertionError(core.recovery_view())
        await ledger_matches(rig)
        assert sim.observer.violations == []


async def swapctl(sock: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SWAPD_SOCKET"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "station.swapctl", "--socket", str(sock), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_recovery_through_swapctl_after_a_daemon_restart(tmp_path: Path) -> None:
    """Abort in store (the car's pack on the stacker), kill swapd, start it again: the
    interrupted swap comes back from the journal, and swapctl brings the machine home."""
    async with ProcessRig(speed=20.0, vehicles=2, workdir=tmp_path, name="cli") as rig:
        sim, d = rig.sim, rig.daemon
        sock = d.socket
        while True:
            st = await d.status()
            if st["step"] == "store" and sim.truth()["stacker"] is not None:
                break
            assert st["packml_state"] in ("Idle", "Starting", "Execute", "Stopped",
                                          "Resetting"), st
            await asyncio.sleep(0.002)
        assert (await d.command("abort"))["ok"]  # at once (swapctl's start-up takes a while)
        pack_out = sim.truth()["stacker"]
        d.kill()
        d.start()
        st = await d.status()
        assert st["interrupted_swap"] is not None, st
        assert st["interrupted_swap"]["step"] == "store"
        assert st["interrupted_swap"]["pack_out"] == pack_out

        rc, out, err = await swapctl(sock, "recover", "--next")
        assert rc == 1 and "production mode" in err, (rc, out, err)
        rc, out, err = await swapctl(sock, "mode", "maintenance")
        assert rc == 0, err
        rc, out, err = await swapctl(sock, "recover", "--plan")
        assert rc == 0, err
        assert f"1. STORE {st['interrupted_swap']['store_slot']}" in out, out
        assert f"moves pack {pack_out}: stacker -> slot" in out, out
        rc, out, err = await swapctl(sock, "recover", "--plan", "--json")
        plan = json.loads(out)
        assert [s["command"] for s in plan["steps"]] == ["STORE", "FETCH", "INSTALL", "LOCK",
                                                          "LOWER"], plan
        for _ in range(8):
            rc, out, err = await swapctl(sock, "recover", "--next")
            if rc == 3:
                assert "machine is home" in out
                break
            assert rc == 0, (out, err)
        else:
            raise AssertionError("not home")
        st = await d.status()
        assert st["packs"] == truth_ledger(sim.truth()), (st["packs"], sim.truth())
        rc, out, err = await swapctl(sock, "run", "NOOP")
        assert rc == 0 and "NOOP done" in out, (out, err)
        words = ["mode produce", "reset"]
        if (await d.status())["packml_state"] == "Aborted":
            words.insert(1, "clear")
        for word in words:
            rc, out, err = await swapctl(sock, *word.split())
            assert rc == 0, (word, err)
        for _ in range(2000):
            if sim.truth()["history"]:
                break
            await asyncio.sleep(0.02)
        history = sim.truth()["history"]
        assert history and history[0]["pack_in"] is not None, history
        assert sim.observer.violations == []
