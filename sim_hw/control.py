"""The simulator's local control API: newline-delimited JSON over a Unix socket (mode 0600).

One JSON object per line in, one per line out:

    {"op": "fault_list"}                                   -> {"ok": true, "faults": [...]}
    {"op": "fault_set", "name": N, "value": V, "target": T} -> {"ok": true, "fault": {...}}
    {"op": "fault_clear", "name": N}                       -> {"ok": true, "fault": {...}}
    {"op": "fault_clear_all"}                              -> {"ok": true, "cleared": [...]}
    {"op": "observer"}                                     -> {"ok": true, "violations": [...]}
    {"op": "observer_clear"}                               -> {"ok": true}
    {"op": "truth"}                                        -> {"ok": true, "truth": {...}}
    {"op": "manual_home"}                                  -> {"ok": true, "done": [...]}
    {"op": "release_arrivals"}                             -> {"ok": true}
    {"op": "vehicle_vin", "send": B, "source_address": A, "vin": V}
                                                           -> {"ok": true, "vin": {...}}

`fault_list` lists the faults of this simulator's PLC protocol (the OPC UA ones only when
the PLC speaks OPC UA); the control socket is the same whichever protocol the PLC speaks.

`manual_home` is the technician's hand pendant: it brings the machine home after an abort
(the car lowered, the bay's pack bolted, packs off the shuttle and the stacker put back),
outside the controller.

`vehicle_vin` is the cars' VIN on CAN (a J1939-71 Vehicle Identification BAM): every key is
optional; `send` false makes the cars send none (a car without a VIN), `source_address`
sends it from another address (null: the bay's 0xF4 again), `vin` changes the VIN of the
car on the platform. The answer is the state after the change.

Anything wrong (bad JSON, unknown op, unknown fault, bad value) is answered with
{"ok": false, "error": "..."}; the connection stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING, Any

from sim_hw.faults import FaultError

if TYPE_CHECKING:
    from sim_hw.station_sim import SimStation

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
OPS = ("fault_list", "fault_set", "fault_clear", "fault_clear_all", "observer",
       "observer_clear", "truth", "manual_home", "vehicle_vin", "release_arrivals")


def handle(sim: SimStation, request: object) -> dict[str, Any]:
    """Answer one decoded request; never raises for a bad request."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "request must be a JSON object"}
    op = request.get("op")
    try:
        if op == "fault_list":
            return {"ok": True, "faults": sim.faults.list()}
        if op == "fault_set":
            name = _name(request)
            return {"ok": True, "fault": sim.faults.set(name, request.get("value"),
                                                        request.get("target"))}
        if op == "fault_clear":
            return {"ok": True, "fault": sim.faults.clear(_name(request))}
        if op == "fault_clear_all":
            return {"ok": True, "cleared": sim.faults.clear_all()}
        if op == "observer":
            sim.sync()
            return {"ok": True, "violations": sim.observer.violations}
        if op == "observer_clear":
            sim.observer.clear()
            return {"ok": True}
        if op == "truth":
            return {"ok": True, "truth": sim.truth()}
        if op == "manual_home":
            return {"ok": True, **sim.manual_home()}
        if op == "release_arrivals":
            sim.release_arrivals()
            return {"ok": True}
        if op == "vehicle_vin":
            kwargs = {k: request[k] for k in ("send", "source_address", "vin") if k in request}
            return {"ok": True, "vin": sim.vehicle_vin(**kwargs)}
    except (FaultError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": False, "error": f"unknown op {op!r}; known: {', '.join(OPS)}"}


def _name(request: dict[str, Any]) -> str:
    name = request.get("name")
    if name is None or name == "":
        raise FaultError("missing fault name")
    if not isinstance(name, str):
        raise FaultError(f"fault name must be a string, not {name!r}")
    return name


class ControlServer:
    def __init__(self, sim: SimStation, path: str) -> None:
        self.sim = sim
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        _remove_stale(self.path)
        old = os.umask(0o177)  # the socket is created 0600: only its owner may inject faults
        try:
            self._server = await asyncio.start_unix_server(self._client, path=self.path,
                                                           limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        log.info("control socket %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line over MAX_LINE
                    await _reply(writer, {"ok": False, "error": "request line too long"})
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except ValueError as exc:
                    answer = {"ok": False, "error": f"bad JSON: {exc}"}
                else:
                    try:
                        answer = handle(self.sim, request)
                    except Exception as exc:  # a bug must not take the simulator down
                        log.exception("control request %r failed", request)
                        answer = {"ok": False, "error": f"internal error: {exc}"}
                await _reply(writer, answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _reply(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
    writer.write(json.dumps(answer, default=str).encode() + b"\n")
    await writer.drain()


def _remove_stale(path: str) -> None:
    """Remove a socket file left by a simulator that is gone; refuse to steal a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"control socket {path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listening: stale
        return
    finally:
        probe.close()
    raise OSError(f"control socket {path}: another simulator is listening there")


__all__ = ["OPS", "ControlServer", "handle"]
