"""OPC UA security end to end: swapd's link (drivers/plc/opcua_link.py, built by the
registry from `[plc]` as swapd builds it) against the simulated PLC's OPC UA server.

- a server certificate missing from swapd's trust list is refused, copied once to
  rejected/certs, and said in words; trusting it lets the next attempt connect, without
  restarting the link;
- a server offering only policy None is refused by the default configuration, naming the
  policy; with security_policy "None" and allow_insecure the link connects, warning at
  every start;
- a wrong password is refused naming the user and saying the server refused it; no
  password ever reaches a log line (structlog's and the stdlib's, asyncua's at DEBUG
  included), `last_refusal` or the stats; the right one connects; a password file others
  may read is refused before any connection, naming the file and not its content;
- an X.509 user certificate: the simulated PLC offers no certificate user token, and swapd
  says so.

Never a wall-clock assertion: everything waits with generous limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.plc.opcua_link import OpcUaPlcLink
from drivers.plc.opcua_security import TrustList, create_application_certificate
from drivers.plc.registry import create_link
from sim_hw.config import CanConfig, OpcUaConfig, SimConfig
from sim_hw.opcua_server import OpcUaPlcServer
from sim_hw.station_sim import SimStation
from station.config import OpcUaSection, PlcSection

pytestmark = pytest.mark.timeout(120)

WAIT_S = 15.0
USER = "swapd"
RIGHT = "right-Pa55-7f3a"  # the passwords: distinctive, so that a leak is found
WRONG = "wrong-Pa55-c41e"


@contextlib.asynccontextmanager
async def simulator(**opcua: Any) -> AsyncIterator[SimStation]:
    cfg = SimConfig(speed=50.0, vehicles=1, plc_protocol="opcua",
                    opcua=OpcUaConfig(port=0, **opcua),
                    can=CanConfig(interface="virtual", channel=f"sec-{uuid.uuid4().hex[:8]}"))
    async with SimStation(cfg) as sim:
        yield sim


def server(sim: SimStation) -> OpcUaPlcServer:
    assert isinstance(sim.plc, OpcUaPlcServer)
    return sim.plc


def section(sim: SimStation, pki: Path, **kw: Any) -> OpcUaSection:
    """swapd's `[plc.opcua]` for the simulator, its own certificate made in pki/own."""
    sec = OpcUaSection(endpoint=sim.opcua_endpoint, pki_dir=pki, connect_timeout_s=3.0, **kw)
    TrustList(pki).ensure_dirs()
    if not sec.certificate_path.exists():
        create_application_certificate(sec.certificate_path, sec.private_key_path,
                                       application_uri=sec.application_uri)
    return sec


def trusting(sim: SimStation, pki: Path, **kw: Any) -> OpcUaSection:
    """As `section`, the simulator's certificate trusted."""
    sec = section(sim, pki, **kw)
    TrustList(pki).trust(server(sim).server_certificate_path)
    return sec


def make_link(sec: OpcUaSection) -> OpcUaPlcLink:
    link = create_link(PlcSection(protocol="opcua", opcua=sec), clock=time.monotonic)
    assert isinstance(link, OpcUaPlcLink)
    link.backoff_min, link.backoff_max = 0.05, 0.2  # retry often: the tests wait for it
    return link


@contextlib.asynccontextmanager
async def running(link: OpcUaPlcLink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(link.run(), name="opcua-link")
    try:
        yield task
    finally:
        await link.close()
        await asyncio.wait_for(task, 10.0)


async def until(cond: Callable[[], Any], what: str, task: asyncio.Task[None] | None = None
                ) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while not cond():
        if task is not None and task.done():
            task.result()  # the link's own failure, if any
            raise AssertionError(f"the link stopped while waiting for {what}")
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def up(link: OpcUaPlcLink) -> Callable[[], bool]:
    """Connected, and inputs delivered."""
    polls = link.stats.polls
    return lambda: link.connected and link.stats.polls > polls


def refused(link: OpcUaPlcLink, attempts: int = 1) -> Callable[[], bool]:
    """`attempts` more connection attempts have failed, with a reason."""
    failed = link.stats.reconnects
    return lambda: link.last_refusal is not None and link.stats.reconnects >= failed + attempts


# ---------------------------------------------------------------- the server's certificate


async def test_untrusted_server_certificate_refused_then_trusted_without_restart(
        tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    async with simulator() as sim:
        sec = section(sim, pki)  # swapd's trust list lacks the simulator's certificate
        rejected = pki / "rejected" / "certs"
        link = make_link(sec)
        with capture_logs() as logs:
            async with running(link) as task:
                await until(refused(link, 3), "three refused attempts", task)
                refusal = link.last_refusal
                assert refusal is not None and not link.connected and link.stats.polls == 0
                assert "server certificate CN=swapstation sim PLC" in refusal, refusal
                assert "is not trusted" in refusal and str(rejected) in refusal, refusal
                assert f"move it to {pki / 'trusted' / 'certs'} to accept it" in refusal
                assert link.stats.last_error == f"connect: {refusal}"
                files = list(rejected.iterdir())  # copied once, however often refused
                assert len(files) == 1, files
                assert files[0].read_bytes() == server(sim).server_certificate_path.read_bytes()
                assert server(sim).requests == 0  # no session: nothing read or written

                # the operator trusts it (swapd certs trust): the next attempt connects
                TrustList(pki).trust(files[0])
                await until(up(link), "the link up once trusted", task)
                assert link.last_refusal is None
        rejections = [e for e in logs if e["event"] == "opcua.certificate_rejected"]
        assert rejections and rejections[0]["reason"] == "is not trusted", logs
        assert any(e["event"] == "plc.connect_failed" and e["error"] == refusal for e in logs)
        key_body = sec.private_key_path.read_text().splitlines()[1]  # swapd's own key
        assert key_body not in repr(logs) and "PRIVATE KEY" not in repr(logs)


# ---------------------------------------------------------------- policy None


async def test_server_offering_only_none(tmp_path: Path) -> None:
    async with simulator(policies=["None"]) as sim:
        # the default configuration: Basic256Sha256, SignAndEncrypt
        link = make_link(trusting(sim, tmp_path / "pki"))
        async with running(link) as task:
            await until(refused(link), "the refusal", task)
            refusal = link.last_refusal
            assert refusal is not None and not link.connected, refusal
            assert "offers no endpoint with security policy Basic256Sha256 and mode " \
                "SignAndEncrypt" in refusal, refusal
        assert link.stats.polls == 0 and server(sim).requests == 0

        # said in the configuration: it connects, and says so at every start
        insecure = OpcUaSection(endpoint=sim.opcua_endpoint, security_policy="None",
                                allow_insecure=True, pki_dir=tmp_path / "none-pki")
        link = make_link(insecure)
        with capture_logs() as logs:
            for _ in range(2):
                async with running(link) as task:
                    await until(up(link), "the insecure link up", task)
        warnings = [e for e in logs if e["event"] == "plc.opcua_insecure"]
        assert len(warnings) == 2 and all(e["log_level"] == "warning" for e in warnings), logs
        assert warnings[0]["policy"] == "None"


# ---------------------------------------------------------------- username and password


def password_file(path: Path, password: str, mode: int = 0o600) -> Path:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.chmod(path, mode)  # whatever the umask made of it
    return path


async def test_password_refused_named_and_never_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="asyncua")  # the library at its most talkative
    pw = tmp_path / "plc.password"
    async with simulator(users={USER: RIGHT}) as sim:
        sec = trusting(sim, tmp_path / "pki", username=USER,
                       password_file=password_file(pw, WRONG))
        link = make_link(sec)
        with capture_logs() as logs:
            async with running(link) as task:
                await until(refused(link, 2), "the wrong password refused", task)
                refusal = link.last_refusal
                assert refusal is not None and not link.connected, refusal
                assert refusal.startswith(f"the server refused user {USER}: "
                                          "BadUserAccessDenied"), refusal
                assert f"check the password file {pw} " in refusal, refusal

                password_file(pw, RIGHT)  # read anew at every connection
                await until(up(link), "the link up with the right password", task)

            # a password file others may read: refused before connecting, naming the file
            password_file(pw, RIGHT, mode=0o644)
            relay = server(sim).relay
            assert relay is not None
            accepted = relay.accepted
            async with running(link) as task:
                await until(refused(link, 2), "the readable password file refused", task)
                refusal = link.last_refusal
                assert refusal is not None and str(pw) in refusal and "0644" in refusal, \
                    refusal
            assert relay.accepted == accepted  # not even a TCP connection

        structlog_text = repr(logs)
        stdlib = [(r.name, r.getMessage(), repr(r.args), repr(r.__dict__)) for r in caplog.records]
        assert any(e["event"] == "plc.connect_failed" for e in logs), logs  # captured
        # asyncua's record of the request that carries the password was captured
        assert any("ActivateSessionRequest" in msg and "(hidden)" in msg
                   for _, msg, *_ in stdlib), "no ActivateSession request logged"
        for secret in (RIGHT, WRONG):
            assert secret not in structlog_text
            assert not [r for r in stdlib if secret in repr(r)]
            assert secret not in (link.last_refusal or "")
            assert secret not in repr(link.stats)


# ---------------------------------------------------------------- an X.509 user certificate


async def test_user_certificate_not_offered_by_the_simulator(tmp_path: Path) -> None:
    """The simulated PLC offers anonymous or username tokens only (its user manager knows
    no certificates): swapd with an X.509 user certificate is refused, saying why."""
    user_cert, user_key = tmp_path / "user.der", tmp_path / "user.pem"
    create_application_certificate(user_cert, user_key, application_uri="urn:swapstation:op",
                                   common_name="operator")
    async with simulator() as sim:
        link = make_link(trusting(sim, tmp_path / "pki", user_certificate=user_cert,
                                  user_private_key=user_key))
        async with running(link) as task:
            await until(refused(link), "the refusal", task)
        refusal = link.last_refusal
        assert refusal is not None and not link.connected
        assert refusal.startswith(f"the server refused the X.509 user certificate {user_cert}: "
                                  "BadIdentityTokenRejected"), refusal
        assert refusal.endswith("(the endpoint offers no Certificate user token, only "
                                "Anonymous)"), refusal
        assert server(sim).requests == 0


@pytest.mark.parametrize(("policy", "mode", "offered"), [
    ("Basic256Sha256", "SignAndEncrypt", "Basic256Sha256"),
    ("Aes256Sha256RsaPss", "SignAndEncrypt", "Aes256Sha256RsaPss"),
    ("Aes128Sha256RsaOaep", "SignAndEncrypt", "Aes128Sha256RsaOaep"),
    ("Basic256Sha256", "Sign", "Basic256Sha256_Sign"),
])
async def test_every_supported_policy_and_mode_connects(
        tmp_path: Path, policy: str, mode: str, offered: str) -> None:
    """Each policy and mode swapd offers in its configuration works against a server that
    offers only that one; inputs arrive and an output write is acknowledged."""
    async with simulator(policies=[offered]) as sim:
        link = make_link(trusting(sim, tmp_path / "pki", security_policy=policy,
                                  security_mode=mode))
        async with running(link) as task:
            await until(up(link), f"{policy}/{mode} connected with inputs", task)
            link.set_outputs({"stop_request": "cat2"})
            assert await link.write_now() is not None
            cat2 = sim.model.stop_request == link.nmap.contract.encode_enum("stop_request",
                                                                            "cat2")
            assert cat2  # the PLC took the block swapd wrote
        assert link.stats.write_errors == 0
