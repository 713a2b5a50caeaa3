"""The local API server over a real Unix socket, and the daemon-side handler over a real
StationCore (no mocks: a fake handler stands in for the daemon only where the server's own
behaviour is under test)."""

from __future__ import annotations

import asyncio
import functools
import grp
import json
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from station.commands import CommandEntry, CommandRequest, CommandResult, Origin
from station.config import StationConfig
from station.core import Decision, StationCore
from station.journal import Journal
from station.local_api import (
    COMMANDS,
    EVENTS_MAX,
    MAX_LINE,
    LocalApiError,
    LocalApiServer,
    PeerCred,
    handle_request,
    request,
)
from station.packml import Cmd, State

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # Short: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="swapapi-") as d:
        yield Path(d) / "swapd.sock"


async def echo_handler(req: dict[str, Any], peer: PeerCred) -> dict[str, Any]:
    if req.get("boom"):
        raise RuntimeError("kaboom")
    return {"ok": True, "cmd": req["cmd"], "n": req.get("n"),
            "peer": {"pid": peer.pid, "uid": peer.uid, "gid": peer.gid}}


@pytest.fixture
async def server(sock_path: Path) -> AsyncIterator[LocalApiServer]:
    srv = LocalApiServer(sock_path, echo_handler)
    await srv.start()
    yield srv
    await srv.close()


class Conn:
    """A raw client connection: bytes out, answer lines in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Conn:
        return cls(*await asyncio.open_unix_connection(str(path)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 5)
        assert line.endswith(b"\n"), line
        resp = json.loads(line)
        assert isinstance(resp, dict)
        return resp

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# ---- the server ------------------------------------------------------------------------------
async def test_round_trip(server: LocalApiServer) -> None:
    assert await request(server.path, {"cmd": "status"}) == {
        "ok": True, "cmd": "status", "n": None,
        "peer": {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()},
    }


async def test_peer_credentials_are_the_clients(server: LocalApiServer) -> None:
    resp = await request(server.path, {"cmd": "abort"})
    assert resp["peer"]["uid"] == os.getuid()
    assert resp["peer"]["gid"] == os.getgid()
    assert resp["peer"]["pid"] == os.getpid()


async def test_several_requests_on_one_connection_answered_in_order(
        server: LocalApiServer) -> None:
    c = await Conn.open(server.path)
    for n in range(3):  # one at a time
        await c.send(json.dumps({"cmd": "status", "n": n}).encode() + b"\n")
        assert (await c.answer())["n"] == n
    # pipelined: all lines in one write, answers come back one a line, in order
    await c.send(b"".join(json.dumps({"cmd": w, "n": i}).encode() + b"\n"
                          for i, w in enumerate(COMMANDS)))
    for i, w in enumerate(COMMANDS):
        resp = await c.answer()
        assert (resp["cmd"], resp["n"]) == (w, i)
    await c.close()


@pytest.mark.parametrize(("line", "error"), [
    (b"{not json", "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    (b"", "malformed JSON"),
    (b'["status"]', "must be a JSON object"),
    (b'"status"', "must be a JSON object"),
    (b'{"n": 1}', 'missing "cmd"'),
    (b'{"cmd": "launch"}', "unknown cmd 'launch'"),
    (b'{"cmd": 3}', "unknown cmd 3"),
    (b'{"cmd": "STATUS"}', "unknown cmd"),
])
async def test_bad_requests_get_an_error_and_the_connection_goes_on(
        server: LocalApiServer, line: bytes, error: str) -> None:
    c = await Conn.open(server.path)
    await c.send(line + b"\n")
    resp = await c.answer()
    assert resp["ok"] is False
    assert error in resp["error"]
    await c.send(b'{"cmd": "status", "n": 7}\n')
    assert (await c.answer())["n"] == 7
    await c.close()
    assert (await request(server.path, {"cmd": "status"}))["ok"] is True


@pytest.mark.parametrize("size", [MAX_LINE + 1, 5 * MAX_LINE])
async def test_over_long_line_gets_one_error_and_the_server_goes_on(
        server: LocalApiServer, size: int) -> None:
    c = await Conn.open(server.path)
    long_line = b'{"cmd": "status", "pad": "' + b"x" * size + b'"}\n'
    await c.send(long_line + b'{"cmd": "status", "n": 1}\n')
    resp = await c.answer()
    assert resp["ok"] is False and "longer than 65536 bytes" in resp["error"]
    assert (await c.answer())["n"] == 1  # the tail of the long line got no answer of its own
    await c.close()
    assert (await request(server.path, {"cmd": "status"}))["ok"] is True


async def test_line_of_exactly_the_limit_is_served(server: LocalApiServer) -> None:
    head, tail = b'{"cmd": "status", "pad": "', b'"}'
    line = head + b"x" * (MAX_LINE - len(head) - len(tail)) + tail
    assert len(line) == MAX_LINE
    c = await Conn.open(server.path)
    await c.send(line + b"\n")
    assert (await c.answer())["ok"] is True
    await c.close()


async def test_last_line_without_newline_is_answered(server: LocalApiServer) -> None:
    c = await Conn.open(server.path)
    await c.send(b'{"cmd": "status", "n": 5}')
    c.writer.write_eof()
    assert (await c.answer())["n"] == 5
    await c.close()


async def test_handler_exception_is_an_internal_error_not_a_crash(
        server: LocalApiServer) -> None:
    c = await Conn.open(server.path)
    await c.send(b'{"cmd": "reset", "boom": true}\n')
    resp = await c.answer()
    assert resp == {"ok": False, "error": "internal error: RuntimeError: kaboom"}
    await c.send(b'{"cmd": "status", "n": 2}\n')
    assert (await c.answer())["n"] == 2
    await c.close()


async def test_handler_returning_junk_is_an_internal_error(sock_path: Path) -> None:
    async def junk(req: dict[str, Any], peer: PeerCred) -> dict[str, Any]:
        return {"ok": True, "value": float("nan")}  # not valid JSON

    async with LocalApiServer(sock_path, junk):
        resp = await request(sock_path, {"cmd": "status"})
    assert resp["ok"] is False and resp["error"].startswith("internal error:")


async def test_client_hanging_up_mid_request_does_not_hurt(server: LocalApiServer) -> None:
    c = await Conn.open(server.path)
    await c.send(b'{"cmd": "sta')
    await c.close()
    c = await Conn.open(server.path)
    await c.send(b'{"cmd": "status"}\n')
    c.writer.close()  # gone before the answer is written
    assert (await request(server.path, {"cmd": "status"}))["ok"] is True


async def test_socket_file_mode_default_is_0660(server: LocalApiServer) -> None:
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


async def test_socket_file_mode_given(sock_path: Path) -> None:
    async with LocalApiServer(sock_path, echo_handler, mode=0o600):
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        assert (await request(sock_path, {"cmd": "status"}))["ok"] is True


async def test_group_given_owns_the_socket(sock_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name  # one we may chown to, root or not
    async with LocalApiServer(sock_path, echo_handler, group=group):
        assert os.stat(sock_path).st_gid == os.getgid()


async def test_missing_group_is_a_clear_error_at_start(sock_path: Path) -> None:
    srv = LocalApiServer(sock_path, echo_handler, group="no-such-group-swapd")
    with pytest.raises(LocalApiError, match="group 'no-such-group-swapd' does not exist"):
        await srv.start()
    assert not sock_path.exists()


async def test_parent_directory_is_created(sock_path: Path) -> None:
    path = sock_path.parent / "run" / "swapd" / "swapd.sock"
    async with LocalApiServer(path, echo_handler):
        assert (await request(path, {"cmd": "status"}))["ok"] is True


async def test_stale_socket_is_replaced(sock_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))  # what a killed daemon leaves behind
    dead.close()
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    with pytest.raises(ConnectionRefusedError):
        await request(sock_path, {"cmd": "status"})
    async with LocalApiServer(sock_path, echo_handler):
        assert (await request(sock_path, {"cmd": "status"}))["ok"] is True


async def test_a_file_that_is_not_a_socket_is_left_alone(sock_path: Path) -> None:
    sock_path.write_text("precious")
    with pytest.raises(LocalApiError, match="not a socket"):
        await LocalApiServer(sock_path, echo_handler).start()
    assert sock_path.read_text() == "precious"


async def test_a_live_server_is_not_stolen_from(server: LocalApiServer) -> None:
    with pytest.raises(LocalApiError, match="another process is serving"):
        await LocalApiServer(server.path, echo_handler).start()
    assert (await request(server.path, {"cmd": "status"}))["ok"] is True


async def test_close_removes_the_socket_and_drops_connections(sock_path: Path) -> None:
    srv = LocalApiServer(sock_path, echo_handler)
    await srv.start()
    c = await Conn.open(sock_path)
    await c.send(b'{"cmd": "status"}\n')
    assert (await c.answer())["ok"] is True
    await srv.close()
    assert not sock_path.exists()
    assert await asyncio.wait_for(c.reader.read(), 5) == b""  # server side hung up
    with pytest.raises(FileNotFoundError):
        await request(sock_path, {"cmd": "status"})


async def test_request_times_out_when_nobody_answers(sock_path: Path) -> None:
    release = asyncio.Event()

    async def slow(req: dict[str, Any], peer: PeerCred) -> dict[str, Any]:
        await release.wait()
        return {"ok": True}

    async with LocalApiServer(sock_path, slow):
        with pytest.raises(TimeoutError):
            await request(sock_path, {"cmd": "status"}, timeout=0.2)
        release.set()


async def test_close_lets_a_command_in_progress_finish(sock_path: Path) -> None:
    entered, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow(req: dict[str, Any], peer: PeerCred) -> dict[str, Any]:
        entered.set()
        await release.wait()
        finished.set()  # a command half carried out must not be cut off
        return {"ok": True}

    srv = LocalApiServer(sock_path, slow)
    await srv.start()
    client = asyncio.create_task(request(sock_path, {"cmd": "abort"}))
    await asyncio.wait_for(entered.wait(), 5)
    closing = asyncio.create_task(srv.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    release.set()
    await asyncio.wait_for(closing, 5)
    assert finished.is_set()
    with pytest.raises((LocalApiError, ConnectionError)):
        await client  # the answer could not be delivered: the connection was closed


# ---- the daemon-side handler over a real core ------------------------------------------------
def test_command_words_are_the_packml_commands_pack_release_and_slot_maintenance() -> None:
    assert COMMANDS[0] == "status"
    assert set(COMMANDS[1:]) == {c.value for c in Cmd if c is not Cmd.SC} | {
        "pack_release", "slot_maintenance", "unit_mode", "recover", "maintenance_command",
        "recovery_plan", "events"}


async def test_events_query_passes_after_and_limit_and_refuses_bad_bounds() -> None:
    seen: list[tuple[int, int]] = []

    def events(after: int, limit: int) -> list[dict[str, object]]:
        seen.append((after, limit))
        return [{"id": after + 1, "kind": "state", "data": {}}]

    async def submit(_req: object) -> object:
        raise AssertionError("a query is not a command")

    def status() -> dict[str, object]:
        return {}

    peer = PeerCred(pid=1, uid=0, gid=0)
    ok = await handle_request({"cmd": "events", "after": 7, "limit": 3}, peer,
                              status=status, submit=submit, events=events)
    assert ok == {"ok": True, "events": [{"id": 8, "kind": "state", "data": {}}]}
    assert seen == [(7, 3)]
    for bad in ({"after": -1}, {"after": 2**63}, {"after": "7"}, {"after": True}, {"limit": 0},
                {"limit": EVENTS_MAX + 1}):
        r = await handle_request({"cmd": "events", **bad}, peer, status=status,
                                 submit=submit, events=events)
        assert r["ok"] is False and "after" in r["error"], bad
    assert seen == [(7, 3)]
    r = await handle_request({"cmd": "events"}, peer, status=status, submit=submit)
    assert r == {"ok": False, "error": "this daemon offers no events"}


class CoreRig:
    """A StationCore behind the one command entry, as the daemon hands it to handle_request
    (status, submit)."""

    def __init__(self) -> None:
        self.core = StationCore(StationConfig())
        self.now = 0.0
        self.origins: list[str] = []
        self._dir = tempfile.TemporaryDirectory(prefix="swapapi-j-")
        self.journal = Journal(Path(self._dir.name) / "j.sqlite")
        self.entry = CommandEntry(self.core, self.journal, self._apply, lambda: self.now)

    async def _apply(self, d: Decision) -> None:
        self.journal.record(d.events)

    async def command(self, req: CommandRequest) -> CommandResult:
        self.origins.append(req.sender)
        return await self.entry.submit(req)

    async def ask(self, word: str, peer: PeerCred) -> dict[str, Any]:
        return await handle_request({"cmd": word}, peer, status=self.core.status,
                                    submit=self.command)


PEER = PeerCred(pid=4242, uid=1001, gid=1001)


async def test_status_is_the_cores_status() -> None:
    rig = CoreRig()
    resp = await rig.ask("status", PEER)
    assert resp == {"ok": True, "status": rig.core.status()}
    st = resp["status"]
    assert st["packml_state"] == "Stopped" and st["packml_state_number"] == 2
    assert st["step"] is None and st["swap_id"] is None
    assert isinstance(st["active_interlocks"], list)
    assert "reason" in st
    assert rig.origins == []


async def test_reset_refused_while_interlocks_are_active() -> None:
    rig = CoreRig()
    resp = await rig.ask("reset", PEER)
    assert resp["ok"] is False
    assert resp["error"].startswith("reset refused: interlocks active: ")
    assert "plc_inputs_stale" in resp["error"]
    assert resp["status"]["packml_state"] == "Stopped"
    assert rig.core.state == State.STOPPED


async def test_command_not_allowed_in_the_state_is_refused() -> None:
    rig = CoreRig()
    resp = await rig.ask("unhold", PEER)
    assert resp["ok"] is False and resp["error"] == "unhold is not allowed in Stopped"
    assert resp["status"] == rig.core.status()


async def test_abort_accepted_and_attributed_to_the_peer() -> None:
    rig = CoreRig()
    resp = await rig.ask("abort", PEER)
    assert resp["ok"] is True
    assert resp["status"]["packml_state"] == "Aborting"
    assert resp["status"]["packml_state_number"] == 8
    assert rig.origins == ["swapctl uid 1001 pid 4242"]
    assert resp["status"]["reason"] == "abort by swapctl uid 1001 pid 4242"


async def test_handler_rejects_words_outside_the_vocabulary() -> None:
    rig = CoreRig()
    for word in ("state_complete", "launch", None):
        resp = await handle_request({"cmd": word}, PEER, status=rig.core.status,
                                    submit=rig.command)
        assert resp["ok"] is False and "unknown cmd" in resp["error"]
    assert rig.origins == []


async def test_server_and_handler_together(sock_path: Path) -> None:
    rig = CoreRig()
    handler = functools.partial(handle_request, status=rig.core.status, submit=rig.command)
    async with LocalApiServer(sock_path, handler):
        refused = await request(sock_path, {"cmd": "reset"})
        accepted = await request(sock_path, {"cmd": "abort"})
    assert refused["ok"] is False and "interlocks active" in refused["error"]
    assert accepted["ok"] is True and accepted["status"]["packml_state"] == "Aborting"
    assert rig.origins == [f"swapctl uid {os.getuid()} pid {os.getpid()}"] * 2


async def test_the_same_request_id_gets_the_same_answer_and_acts_once() -> None:
    rig = CoreRig()
    first = await handle_request({"cmd": "abort", "request_id": "op-17"}, PEER,
                                 status=rig.core.status, submit=rig.command)
    again = await handle_request({"cmd": "abort", "request_id": "op-17"}, PEER,
                                 status=rig.core.status, submit=rig.command)
    assert first["ok"] is True and first["repeated"] is False
    assert again["ok"] is True and again["repeated"] is True
    kinds = [r["kind"] for r in rig.journal.events_after(0)]
    assert kinds.count("command_accepted") == 1 and kinds.count("state") == 1


async def test_duplicate_keys_and_deep_nesting_are_refused_with_an_answer(
        sock_path: Path) -> None:
    """`{"cmd":"status","cmd":"abort"}` must not abort anything (last key wins in plain
    json), and nesting deep enough to overflow the parser gets an answer, not a
    RecursionError that closes the connection."""
    rig = CoreRig()
    handler = functools.partial(handle_request, status=rig.core.status, submit=rig.command)
    async with LocalApiServer(sock_path, handler):
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        try:
            writer.write(b'{"cmd":"status","cmd":"abort"}\n')
            writer.write(b"[" * 20000 + b"]" * 20000 + b"\n")
            writer.write(b'{"cmd":"status"}\n')  # the connection still answers after both
            await writer.drain()
            answers = [json.loads(await reader.readline()) for _ in range(3)]
        finally:
            writer.close()
    assert answers[0] == {"ok": False, "error": "duplicate key 'cmd' in a request"}
    assert answers[1] == {"ok": False, "error": "nested too deeply"}
    assert answers[2]["ok"] is True
    assert rig.origins == [] and rig.core.state == State.STOPPED


async def test_pack_release_arguments_are_checked_and_the_cloud_may_not_send_it() -> None:
    rig = CoreRig()
    rig.core.locked_out_slots[3] = "fault_flag: BMS reports thermal_alarm"

    async def release(**req: Any) -> dict[str, Any]:
        return await handle_request({"cmd": "pack_release", **req}, PEER,
                                    status=rig.core.status, submit=rig.command)

    for bad, why in (({"slot": 3}, "exactly: slot, reason"),
                     ({"slot": "3", "reason": "x"}, "slot must be"),
                     ({"slot": True, "reason": "x"}, "slot must be"),
                     ({"slot": 0, "reason": "x"}, "slot must be"),
                     ({"slot": 3, "reason": ""}, "reason must be"),
                     ({"slot": 3, "reason": "x" * 201}, "reason must be"),
                     ({"slot": 3, "reason": 7}, "reason must be")):
        resp = await release(**bad)
        assert resp["ok"] is False and why in resp["error"], (bad, resp)
    assert 3 in rig.core.locked_out_slots
    cloud = await rig.entry.submit(CommandRequest(
        "pack_release", Origin.CLOUD, "backend", args={"slot": 3, "reason": "remote"}))
    assert not cloud.accepted and "operator at the station" in (cloud.reason or "")
    assert 3 in rig.core.locked_out_slots
    resp = await release(slot=3, reason="pack checked, sensor replaced")
    assert resp["ok"] is True, resp
    assert rig.core.locked_out_slots == {}
    row = rig.journal.db.execute("SELECT * FROM commands WHERE command = 'pack_release' "
                                 "AND accepted = 1").fetchone()
    assert row is not None
