"""swapctl as a real subprocess against a real LocalApiServer whose handler is
handle_request over a real StationCore (the bench contract of issue 3)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from station import swapctl
from station.commands import CommandEntry, CommandRequest, CommandResult
from station.config import StationConfig
from station.core import Decision, StationCore
from station.journal import Journal
from station.local_api import LocalApiServer, handle_request
from station.packml import State

pytestmark = pytest.mark.timeout(60)


@dataclass
class Result:
    rc: int
    out: str
    err: str


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="swapctl-") as d:
        yield Path(d)


class Rig:
    """What the daemon wires: a core behind handle_request behind the server."""

    def __init__(self, path: Path) -> None:
        self.core = StationCore(StationConfig())
        self.origins: list[str] = []
        self.journal = Journal(path.parent / "journal.sqlite")
        self.entry = CommandEntry(self.core, self.journal, self._apply, lambda: 0.0)
        handler = functools.partial(handle_request, status=self.core.status,
                                    submit=self.submit, events=self.events)
        self.server = LocalApiServer(path, handler)

    def events(self, after: int, limit: int) -> list[dict[str, object]]:
        return [{"id": r["id"], "kind": r["kind"], "data": json.loads(r["data"])}
                for r in self.journal.events_after(after, limit)]

    async def _apply(self, d: Decision) -> None:
        self.journal.record(d.events)

    async def submit(self, req: CommandRequest) -> CommandResult:
        self.origins.append(req.sender)
        return await self.entry.submit(req)


@pytest.fixture
async def rig(sock_dir: Path) -> AsyncIterator[Rig]:
    r = Rig(sock_dir / "swapd.sock")
    await r.server.start()
    yield r
    await r.server.close()


async def swapctl_run(*args: str, env: dict[str, str] | None = None) -> Result:
    full_env = {k: v for k, v in os.environ.items() if k != "SWAPD_SOCKET"}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "station.swapctl", *args, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_status_json_has_the_bench_fields(rig: Rig) -> None:
    r = await swapctl_run("--socket", str(rig.server.path), "status", "--json")
    assert r.rc == 0, r.err
    st = json.loads(r.out)
    assert st["packml_state"] == "Stopped"
    assert st["packml_state_number"] == 2
    assert st["step"] is None
    assert st["swap_id"] is None
    assert isinstance(st["active_interlocks"], list)
    assert "reason" in st
    assert st == rig.core.status()


async def test_status_plain_is_readable(rig: Rig) -> None:
    r = await swapctl_run("--socket", str(rig.server.path), "status")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split() == ["state:", "Stopped", "(2)"]
    assert any(line.startswith("reason:") for line in lines)
    assert any(line.startswith("interlocks:") for line in lines)


async def test_events_prints_the_journal_after_an_id_one_json_a_line(rig: Rig) -> None:
    sock = str(rig.server.path)
    await swapctl_run("--socket", sock, "reset")  # accepted or refused: journaled
    r = await swapctl_run("--socket", sock, "events")
    assert r.rc == 0, r.err
    evs = [json.loads(line) for line in r.out.splitlines()]
    assert evs and evs[0]["id"] == 1 and "command_received" in {e["kind"] for e in evs}
    r = await swapctl_run("--socket", sock, "events", "--after", str(evs[-1]["id"]))
    assert r.rc == 0 and r.out == ""
    r = await swapctl_run("--socket", sock, "events", "--limit", "0")
    assert r.rc == 1 and "limit" in r.err


async def test_socket_from_the_environment(rig: Rig) -> None:
    r = await swapctl_run("status", "--json", env={"SWAPD_SOCKET": str(rig.server.path)})
    assert r.rc == 0, r.err
    assert json.loads(r.out)["packml_state"] == "Stopped"


async def test_refused_command_exits_1_with_the_reason(rig: Rig) -> None:
    # No PLC input seen yet: the interlocks hold the station back.
    r = await swapctl_run("--socket", str(rig.server.path), "reset")
    assert r.rc == 1
    assert r.out == ""
    assert r.err.startswith("swapctl: reset refused: interlocks active: ")
    assert "plc_inputs_stale" in r.err
    assert rig.core.state == State.STOPPED


async def test_command_not_allowed_in_the_state_exits_1(rig: Rig) -> None:
    r = await swapctl_run("--socket", str(rig.server.path), "unhold")
    assert r.rc == 1
    assert r.err.strip() == "swapctl: unhold refused: unhold is not allowed in Stopped"


async def test_accepted_command_exits_0_and_prints_the_new_state(rig: Rig) -> None:
    r = await swapctl_run("--socket", str(rig.server.path), "abort")
    assert r.rc == 0, r.err
    assert r.out.startswith("abort accepted: now Aborting (abort by swapctl uid ")
    assert rig.core.state == State.ABORTING
    assert len(rig.origins) == 1
    assert rig.origins[0].startswith(f"swapctl uid {os.getuid()} pid ")
    # and the pid journaled is the swapctl process's, not ours
    assert rig.origins[0] != f"swapctl uid {os.getuid()} pid {os.getpid()}"


async def test_command_json_prints_the_new_status(rig: Rig) -> None:
    r = await swapctl_run("--socket", str(rig.server.path), "abort", "--json")
    assert r.rc == 0, r.err
    assert json.loads(r.out)["packml_state_number"] == int(State.ABORTING)


async def test_missing_socket_exits_2(sock_dir: Path) -> None:
    path = sock_dir / "nowhere.sock"
    r = await swapctl_run("--socket", str(path), "status")
    assert r.rc == 2
    assert r.out == ""
    assert r.err.startswith(f"swapctl: no daemon socket at {path}: is swapd running?")


async def test_daemon_not_running_exits_2(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # the file a killed daemon leaves behind
    dead.close()
    r = await swapctl_run("--socket", str(path), "reset")
    assert r.rc == 2
    assert r.err.strip() == f"swapctl: swapd is not running: nothing listens on {path}"


async def test_bad_usage_exits_2(sock_dir: Path) -> None:
    r = await swapctl_run("--socket", str(sock_dir / "x.sock"), "launch")
    assert r.rc == 2
    assert "invalid choice" in r.err


def test_permission_denied_message_names_the_group(sock_dir: Path) -> None:
    # The real case (another user's swapctl on a 0o660 socket) needs a second user that
    # can run this venv's Python; here only the wording is checked, on a real socket file.
    import grp

    path = sock_dir / "swapd.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    group = grp.getgrgid(os.stat(path).st_gid).gr_name
    msg = swapctl.describe_unreachable(PermissionError(13, "Permission denied"), str(path), 5)
    assert msg == (f"permission denied on {path}: only root and members of group "
                   f"{group!r} may command the station")


async def test_pack_release_over_the_socket(rig: Rig, sock_dir: Path) -> None:
    sock = str(sock_dir / "swapd.sock")
    r = await swapctl_run("--socket", sock, "pack", "release", "3", "--reason", "checked")
    assert r.rc == 1 and "rack slot 3 is not locked out" in r.err, r
    r = await swapctl_run("--socket", sock, "pack", "release", "three", "--reason", "x")
    assert r.rc == 2 and "slot must be a number" in r.err, r
    r = await swapctl_run("--socket", sock, "pack", "release", "3")
    assert r.rc == 2 and "--reason" in r.err, r  # argparse: the reason is required
    rig.core.locked_out_slots[3] = "fault_flag: BMS reports thermal_alarm"
    r = await swapctl_run("--socket", sock, "pack", "release", "3", "--reason",
                          "thermal sensor replaced")
    assert r.rc == 0, r
    assert "pack_release accepted" in r.out and rig.core.locked_out_slots == {}
    row = rig.journal.db.execute(
        "SELECT data FROM events WHERE kind = 'slot_released'").fetchone()
    assert json.loads(row["data"])["reason"] == "thermal sensor replaced"


async def test_a_maintenance_lock_over_the_socket(rig: Rig, sock_dir: Path) -> None:
    """An operator at the station takes a slot out of service and puts it back, as the
    network can with slot_maintenance; both journaled with the reason."""
    sock = str(sock_dir / "swapd.sock")
    r = await swapctl_run("--socket", sock, "slot", "lock", "4", "--reason", "charger swap")
    assert r.rc == 0 and "slot_maintenance accepted" in r.out, r
    assert 4 in rig.core.locked_out_slots and "charger swap" in rig.core.locked_out_slots[4]
    r = await swapctl_run("--socket", sock, "slot", "lock", "4", "--reason", "again")
    assert r.rc == 1, r  # already locked: the core says so
    r = await swapctl_run("--socket", sock, "slot", "lock", "0", "--reason", "x")
    assert r.rc == 1 and "slot" in r.err, r  # bounded: a rack slot is 1..n
    r = await swapctl_run("--socket", sock, "slot", "release", "4", "--reason", "done")
    assert r.rc == 0, r
    assert 4 not in rig.core.locked_out_slots
    kinds = [row["kind"] for row in rig.journal.db.execute(
        "SELECT kind FROM events WHERE kind IN ('slot_locked', 'slot_released')")]
    assert kinds == ["slot_locked", "slot_released"]
