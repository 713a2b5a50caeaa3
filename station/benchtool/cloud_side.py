"""The network's back end as a scenario needs it: signed commands to the station and the
telemetry it publishes, over the same broker and topics as the real back end
(station/cloud/swapnet.py signs and sends; this keeps a subscription open to collect)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from station.benchtool.scenario import Setup
from station.cloud import swapnet

COMMAND_TTL_S = 300.0
RESPONSE_TIMEOUT_S = 20.0
# The back end reconnects after a broker outage faster than the station (whose first retry
# comes after its cloud.reconnect_min_s), so it is subscribed again before the station
# delivers what it kept: a message published before that would reach no one.
RETRY_S = 0.1


@dataclass
class Backend:
    broker: swapnet.Broker
    prefix: str
    station_id: str
    key: Ed25519PrivateKey
    key_id: str
    ttl_s: float = COMMAND_TTL_S
    timeout_s: float = RESPONSE_TIMEOUT_S
    received: list[dict[str, Any]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Subscribe to everything the station publishes (kept until stop)."""
        self._task = asyncio.create_task(self._collect(), name="bench-backend")
        await self.subscribed()

    async def subscribed(self) -> None:
        """Wait until the back end is subscribed (again, after a broker outage);
        swapnet.ConsoleError when it is not within timeout_s."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._subscribed.wait()
        except TimeoutError:
            raise swapnet.ConsoleError(
                f"not subscribed to {self.prefix}/{self.station_id}/# on "
                f"{self.broker.host}:{self.broker.port} within {self.timeout_s:g} s") from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _collect(self) -> None:
        while True:
            try:
                async with swapnet.connect(self.broker, self.timeout_s) as (client, _):
                    await client.subscribe(f"{self.prefix}/{self.station_id}/#", qos=1)
                    self._subscribed.set()
                    async for m in client.messages:
                        self._keep(str(m.topic), m.payload)
            except (aiomqtt.MqttError, swapnet.ConsoleError, OSError):
                self._subscribed.clear()
                await asyncio.sleep(RETRY_S)  # a broker outage (a scenario may cause one)

    def _keep(self, topic: str, payload: Any) -> None:
        leaf = topic.rsplit("/", 1)[-1]
        if leaf == "commands":
            return
        try:
            body = json.loads(bytes(payload)) if isinstance(payload, bytes | bytearray) \
                else None
        except ValueError:
            body = None
        self.received.append({"topic": topic, "leaf": leaf, "payload": body,
                              "wall": time.time()})

    async def command(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Fill in the timestamps (fill_command_args), sign, send and wait for the
        station's response (its payload). swapnet.ConsoleError when none comes."""
        now = time.time()
        signed = swapnet.build_command(command, fill_command_args(command, args, now),
                                       self.station_id, self.key_id, self.key, self.ttl_s,
                                       now)
        return await swapnet.send(self.broker, self.prefix, signed, self.timeout_s)

    async def set_up(self, setup: Setup) -> None:
        """The network's part of a scenario's set-up; ConsoleError when refused."""
        for command, args in setup_commands(setup):
            r = await self.command(command, args)
            if r.get("accepted") is not True:
                raise swapnet.ConsoleError(f"set-up {command} refused by the station: "
                                           f"{r.get('code')}: {r.get('reason')}")


def setup_commands(setup: Setup) -> list[tuple[str, dict[str, Any]]]:
    """The cloud commands that give the station a scenario's network set-up: the
    authorisation list, the reservations, the power cap (timestamps filled in when sent)."""
    out: list[tuple[str, dict[str, Any]]] = []
    if setup.authorisations is not None:
        out.append(("set_authorisations", {"entries": [
            a.model_dump(exclude_none=True) for a in setup.authorisations]}))
    out += [("reserve_pack", {"vin": r.vin, "family": r.family, "min_soc_pct": r.min_soc_pct,
                              "ttl_s": r.ttl_s}) for r in setup.reservations]
    if setup.power_cap_kw is not None:
        out.append(("set_power_cap", {"cap_kw": setup.power_cap_kw}))
    return out


def utc(t: float) -> str:
    return swapnet.utc_stamp(t)


def fill_command_args(command: str, args: dict[str, Any], now: float) -> dict[str, Any]:
    """What a scenario leaves out of a cloud command and the runner fills in: the
    timestamps (relative `ttl_s` / `valid_s` in the scenario become absolute times)."""
    out = dict(args)
    if command == "reserve_pack" and "expires_at" not in out:
        out["expires_at"] = utc(now + float(out.pop("ttl_s", 3600.0)))
    if command == "set_authorisations":
        out.setdefault("version", int(now * 1000))
        out.setdefault("valid_from", utc(now - 60.0))
        if "valid_until" not in out:
            out["valid_until"] = utc(now + float(out.pop("valid_s", 86400.0)))
    return out
