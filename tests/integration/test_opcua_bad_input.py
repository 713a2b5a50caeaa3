"""Bad input over OPC UA, end to end: a real swap (the simulator's PLC over OPC UA with
SignAndEncrypt, swapd's OPC UA link) meets, in a motion step, a server restart, a
black-holed connection, a subscription that stops publishing, an input published with a
bad status, an input of the wrong data type, a server certificate that expires while
connected.

Each case checks that the station leaves Execute with a reason naming the PLC inputs, that
the link says what it saw (stats, the log, `last_refusal`), that the simulated PLC took no
new command from the moment the fault began until it was gone and an operator acted (a
spy on the model's output block: no new cmd_seq; the PLC's command log: nothing taken),
that the simulator's observer saw no violation, that the link is connected again once the
server is back, and that after the operator's recovery (clear, manual homing, reset) the
next swap completes.

Never a wall-clock assertion: everything waits with generous limits.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from drivers.plc.opcua_link import OpcUaPlcLink
from drivers.plc.opcua_security import TrustList, create_application_certificate
from sim_hw.opcua_server import APPLICATION_URI, OpcUaPlcServer
from station.packml import Cmd, State
from station.rig import Rig
from station.sequence import SEQUENCE
from tests.integration.test_interlock_matrix import clear_and_reset

pytestmark = pytest.mark.timeout(120)

SPEED = 50.0
WAIT_S = 20.0
# Losing sight of the PLC: the interlocks that may trip first
SIGHT = {"plc_inputs_stale", "plc_heartbeat_lost"}
COMMANDED = [s.name for s in SEQUENCE if s.command]  # the steps the PLC moves in
# from LIFT on, while the car is (being) lifted
LIFTED_STEPS = COMMANDED[COMMANDED.index("lift"):COMMANDED.index("lower")]


class Outputs:
    """A spy on the simulated PLC's model: every output block it takes, with the phase of
    the test it came in ("before" the fault, during the "fault" until an operator acts,
    then "operator")."""

    def __init__(self, rig: Rig) -> None:
        self.phase = "before"
        self.blocks: list[tuple[str, int]] = []
        model = rig.sim.model
        take = model.set_outputs

        def spy(values: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            if "cmd_seq" in values:
                self.blocks.append((self.phase, int(values["cmd_seq"])))
            return take(values, *args, **kwargs)

        model.set_outputs = spy  # type: ignore[method-assign]

    def seqs(self, phase: str) -> list[int]:
        return [seq for p, seq in self.blocks if p == phase]


def link(rig: Rig) -> OpcUaPlcLink:
    lk = rig.daemon.link
    assert isinstance(lk, OpcUaPlcLink)
    return lk


def server(rig: Rig) -> OpcUaPlcServer:
    plc = rig.sim.plc
    assert isinstance(plc, OpcUaPlcServer)
    return plc


def log_lines(rig: Rig) -> list[dict[str, Any]]:
    assert rig.log_path is not None
    return [json.loads(line) for line in rig.log_path.read_text().splitlines() if line]


def opcua_rig(tmp_path: Path, name: str, *, speed: float = SPEED,
              sim: dict[str, Any] | None = None,
              plc: dict[str, Any] | None = None) -> Rig:
    config: dict[str, Any] = {"operation": {"auto_start": False}}
    if plc is not None:
        config["plc"] = plc
    return Rig(speed=speed, vehicles=1, workdir=tmp_path, name=name, plc="opcua",
               sim=sim, capture_log=True, config=config)


async def start_swap_until_lifting(rig: Rig) -> str:
    """Start a swap and wait until the PLC runs the command of a motion step from LIFT on
    (LIFT itself unless a busy machine let it pass unseen); returns the step."""
    core, sim = rig.core, rig.sim
    await rig.wait_for(lambda: core.ready_to_start, WAIT_S, what="a vehicle to swap")
    await rig.command(Cmd.START)

    def running() -> bool:
        step = core.step.name if core.step is not None else None
        return step in LIFTED_STEPS and bool(sim.command_log) and \
            sim.command_log[-1].ended_real is None and sim.command_log[-1].name.lower() == step

    await rig.wait_for(running, WAIT_S, what="the PLC lifting the car")
    assert core.state == State.EXECUTE
    return str(core.step.name)


async def stops_blind(rig: Rig, step: str | None = None) -> dict[str, Any]:
    """The station aborts the swap because it lost sight of the PLC (in `step`, or a motion
    step from it on): the fault event."""
    core = rig.core
    await rig.wait_for(lambda: core.state == State.ABORTED, WAIT_S, what="Aborted")
    await rig.wait_for(lambda: any(e.kind == "fault" for e in rig.events), WAIT_S,
                       what="the fault event")
    fault = next(e.data for e in rig.events if e.kind == "fault")
    assert fault["code"] in SIGHT, fault
    assert core.reason is not None and core.reason.startswith(f"interlock {fault['code']}")
    assert "PLC" in core.reason, core.reason
    steps = COMMANDED[COMMANDED.index(step):] if step is not None else COMMANDED
    assert fault["step"] in steps, fault  # in motion
    return dict(fault)


async def recovers(rig: Rig, outputs: Outputs, commands: int) -> None:
    """The link is up and the inputs fresh again; nothing was commanded meanwhile; the
    operator recovers the station and the next swap completes."""
    core, lk = rig.core, link(rig)
    polls = lk.stats.polls
    await rig.wait_for(lambda: lk.connected and lk.stats.polls > polls + 10, WAIT_S,
                       what="the link connected with fresh inputs")
    await rig.wait_for(lambda: not core.active_interlocks, WAIT_S, what="the cause to clear")
    assert core.state == State.ABORTED  # nothing moves until an operator acts
    # no new command from the fault's start until now: the PLC took none
    assert len(rig.sim.command_log) == commands, rig.sim.command_log[commands:]
    before = outputs.seqs("before")
    assert before and set(outputs.seqs("fault")) <= {before[-1]}, outputs.blocks[-20:]
    outputs.phase = "operator"
    await clear_and_reset(rig)
    ended = len(rig.ended())
    await rig.wait_for(lambda: core.ready_to_start, WAIT_S, what="the car ready again")
    await rig.command(Cmd.START)
    await rig.wait_for(lambda: len(rig.ended()) > ended, 60.0, what="the next swap")
    assert rig.ended()[-1]["outcome"] == "completed", rig.ended()
    assert rig.sim.observer.violations == []


# ---------------------------------------------------------------- the cases

RESTART_DOWN_S = 1.0  # a PLC reboot: nothing listens for this long (> plc.stale_after_s)


def disconnects(rig: Rig) -> list[str]:
    """The reasons of the link's plc.disconnected lines so far."""
    return [line.get("reason", "") for line in log_lines(rig)
            if line.get("event") == "plc.disconnected"]


async def test_server_restart_mid_swap(tmp_path: Path) -> None:
    async with opcua_rig(tmp_path, "restart") as rig:
        lk = link(rig)
        outputs = Outputs(rig)
        step = await start_swap_until_lifting(rig)
        reconnects, commands = lk.stats.reconnects, len(rig.sim.command_log)
        outputs.phase = "fault"
        restart = asyncio.create_task(server(rig).restart(down_s=RESTART_DOWN_S))
        await stops_blind(rig, step)
        await restart
        await recovers(rig, outputs, commands)
        assert lk.stats.reconnects > reconnects
        assert any(r.startswith("connection lost") for r in disconnects(rig)), \
            disconnects(rig)


async def test_black_holed_connection_mid_swap(tmp_path: Path) -> None:
    """plc_silent: the relay drops every byte both ways and closes nothing."""
    async with opcua_rig(tmp_path, "blackhole") as rig:
        lk = link(rig)
        outputs = Outputs(rig)
        step = await start_swap_until_lifting(rig)
        commands = len(rig.sim.command_log)
        outputs.phase = "fault"
        rig.sim.faults.set("plc_silent")
        await stops_blind(rig, step)
        # nothing closed the connection: the link's watchdog judged the silence
        await rig.wait_for(lambda: lk.stats.stalls >= 1 and not lk.connected, WAIT_S,
                           what="the link to give the silent session up")
        assert any(r.startswith("subscription silent") for r in disconnects(rig)), \
            disconnects(rig)
        assert rig.daemon.status()["plc"]["connected"] is False
        rig.sim.faults.clear("plc_silent")
        await recovers(rig, outputs, commands)


async def test_subscription_stall_mid_swap(tmp_path: Path) -> None:
    """The server stops publishing (no data, no keep-alive) while the session and the
    connection stay up and writes are answered: only the link's watchdog can tell."""
    async with opcua_rig(tmp_path, "stall") as rig:
        lk = link(rig)
        outputs = Outputs(rig)
        step = await start_swap_until_lifting(rig)
        commands, stalls = len(rig.sim.command_log), lk.stats.stalls
        reconnects = lk.stats.reconnects
        outputs.phase = "fault"
        rig.sim.faults.set("opcua_subscription_stall")
        await stops_blind(rig, step)
        # the link gave the silent subscription up and connected anew (a new session, a
        # new subscription: the server may never publish on the old one again)
        await rig.wait_for(lambda: lk.stats.stalls > stalls and lk.stats.reconnects >
                           reconnects, WAIT_S, what="the link to judge the subscription dead")
        assert any(r.startswith("subscription silent") for r in disconnects(rig)), \
            disconnects(rig)
        rig.sim.faults.clear("opcua_subscription_stall")
        await recovers(rig, outputs, commands)


# a pause of the server's publishing longer than 1.5 keep-alive periods (0.15 s here) and
# well within the staleness (0.9 s here): a busy server, a garbage collection
LATE_KEEPALIVE_S = 0.35


async def test_late_keepalive_within_staleness_keeps_the_session(tmp_path: Path) -> None:
    """The server publishes nothing for longer than its keep-alive promise, but not as long
    as the inputs take to go stale: the session stays (a reconnect would make the inputs
    stale itself) and the swap goes on to complete."""
    async with opcua_rig(tmp_path, "late-keepalive", plc={"stale_after_s": 0.9}) as rig:
        lk = link(rig)
        await start_swap_until_lifting(rig)
        session = lk._session
        assert session is not None
        assert session.keepalive_s * 1.5 < LATE_KEEPALIVE_S < 0.9 / 2
        stalls, reconnects, publishes = lk.stats.stalls, lk.stats.reconnects, \
            lk.stats.publishes
        rig.sim.faults.set("opcua_subscription_stall")
        await asyncio.sleep(LATE_KEEPALIVE_S)
        rig.sim.faults.clear("opcua_subscription_stall")
        await rig.wait_for(lambda: lk.stats.publishes > publishes + 5, WAIT_S,
                           what="publishing again")
        await rig.wait_for(lambda: len(rig.ended()) == 1, 60.0, what="the swap to end")
        assert rig.ended()[-1]["outcome"] == "completed", rig.ended()
        assert (lk.stats.stalls, lk.stats.reconnects) == (stalls, reconnects)
        assert lk._session is session and disconnects(rig) == []
        assert rig.sim.observer.violations == []


@pytest.mark.parametrize(("fault", "kind"), [("opcua_bad_status", "BadSensorFailure"),
                                             ("opcua_wrong_type", "type_mismatch")])
async def test_bad_input_value_mid_swap(tmp_path: Path, fault: str, kind: str) -> None:
    """lift_height published with a bad status, or as a String: the whole image is withheld
    (the inputs age), the node is named; the connection itself is fine and stays."""
    async with opcua_rig(tmp_path, fault) as rig:
        lk = link(rig)
        outputs = Outputs(rig)
        step = await start_swap_until_lifting(rig)
        commands, reconnects = len(rig.sim.command_log), lk.stats.reconnects
        outputs.phase = "fault"
        rig.sim.faults.set(fault, target="lift_height")
        await stops_blind(rig, step)
        assert lk.stats.bad_values > 0 and lk.stats.exceptions.get(kind, 0) > 0, lk.stats
        node = lk.nmap.signals["lift_height"].address
        assert lk.stats.last_error is not None and "lift_height" in lk.stats.last_error \
            and node in lk.stats.last_error, lk.stats.last_error
        bad = [line for line in log_lines(rig) if line.get("event") == "plc.input_bad"]
        assert bad and bad[0]["signal"] == "lift_height" and bad[0]["node"] == node, bad
        assert lk.connected and lk.stats.reconnects == reconnects  # nothing wrong with it
        rig.sim.faults.clear(fault)
        await recovers(rig, outputs, commands)


EXPIRY_SPEED = 20.0  # a swap of 7 s: the expiry falls in its motion
VALID_S = 10.0  # the server certificate's validity from the simulator's start
LEAD_S = 1.6  # the swap starts this long before the expiry: in lift or unlock at 20x


async def test_server_certificate_expires_mid_swap(tmp_path: Path) -> None:
    """The simulator's certificate is valid for VALID_S from its start: swapd drops the
    session when it expires, refuses the next connections (expired, copied to rejected/),
    the station stops blind. A renewed certificate, trusted by the operator, is taken
    without restarting swapd."""
    async with opcua_rig(tmp_path, "expiry", speed=EXPIRY_SPEED,
                         sim={"opcua": {"certificate_valid_s": VALID_S}}) as rig:
        lk, srv, core = link(rig), server(rig), rig.core
        outputs = Outputs(rig)
        expires = x509.load_der_x509_certificate(
            srv.server_certificate_path.read_bytes()).not_valid_after_utc
        await rig.wait_for(lambda: core.ready_to_start and lk.connected, WAIT_S,
                           what="a vehicle to swap")
        left = (expires - datetime.now(UTC)).total_seconds()
        assert left > LEAD_S, f"the rig took too long to start: {left:.1f} s of validity left"
        await asyncio.sleep(left - LEAD_S)  # scheduling the swap, not judging a duration
        await rig.command(Cmd.START)
        await rig.wait_for(lambda: not lk.connected, WAIT_S, what="the session dropped")
        # the fault begins when the link drops the session: it writes nothing from then on
        outputs.phase = "fault"
        commands = len(rig.sim.command_log)
        await stops_blind(rig)  # in a motion step: the expiry came mid-swap
        assert disconnects(rig)[0].startswith("the server certificate expired at"), \
            disconnects(rig)
        # the next connections are refused: expired, the certificate put aside, in words
        await rig.wait_for(lambda: lk.last_refusal is not None, WAIT_S, what="a refusal")
        refusal = lk.last_refusal
        assert refusal is not None and "expired at" in refusal and "sim PLC" in refusal, \
            refusal
        rejected = tmp_path / "pki" / "rejected" / "certs"
        assert [p.suffix for p in rejected.iterdir()] == [".der"]
        failed = [line for line in log_lines(rig) if line.get("event") == "plc.connect_failed"]
        assert failed and "expired at" in failed[0]["error"], failed
        assert not lk.connected
        # the operator renews the PLC's certificate and trusts it; swapd keeps running
        create_application_certificate(
            srv.server_certificate_path, srv.server_key_path, application_uri=APPLICATION_URI,
            common_name="swapstation sim PLC", hostnames=["localhost"],
            ip_addresses=["127.0.0.1"], overwrite=True)
        await srv.restart()
        TrustList(tmp_path / "pki").trust(srv.server_certificate_path)
        await recovers(rig, outputs, commands)
