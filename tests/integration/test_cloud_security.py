"""The cloud link's security at its edges, against a real mosquitto: a certificate the
broker does not take gives a clear reason; secret files readable by others stop the start;
a password never reaches the log, the status or an error."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from sim_hw.broker import Broker, CertAuthority
from station.cloud.link import CloudConfigError, CloudLink
from station.config import StationConfig
from station.journal import Journal
from tests.integration.cloud_support import make_keys

STATUS = {"packml_state": "Idle", "packml_state_number": 4, "step": None, "swap_id": None,
          "active_interlocks": [], "reason": None, "start_inhibited": None,
          "locked_out_slots": {}, "power_cap_kw": 500.0, "authorisation_version": None}


def link_for(tmp: Path, cloud: dict[str, Any]) -> CloudLink:
    cfg = StationConfig.model_validate({"station": {"id": "ST-A"}, "cloud": {
        "enabled": True, "trusted_keys_dir": str(tmp / "keys"), "connect_timeout_s": 2.0,
        "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, **cloud}})

    async def nothing(*_: Any) -> Any:
        return None

    return CloudLink(cfg, Journal(tmp / "j.sqlite"), status=lambda: dict(STATUS),
                     rack=lambda: {"power_kw": 0.0, "power_cap_kw": 500.0, "slots": []},
                     submit=nothing,
                     record=nothing, software_version="test",
                     contracts={"plc_contract": "1.0", "can_protocol": "swap_pack 1.0"},
                     started_wall=time.time())


async def run_for(link: CloudLink, seconds: float) -> None:
    task = asyncio.create_task(link.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_certificate_from_another_ca_is_refused_with_the_reason(tmp_path: Path) -> None:
    make_keys(tmp_path / "keys")
    with Broker(tmp_path / "broker", stations=["ST-A"]) as broker:
        cert, key = CertAuthority(tmp_path / "rogue").issue("ST-A")
        link = link_for(tmp_path, {"host": broker.host, "port": broker.port,
                                   "ca_file": str(broker.ca_file), "cert_file": str(cert),
                                   "key_file": str(key)})
        await run_for(link, 3.0)
        assert not link.stats.connected and link.stats.sessions == 0
        assert link.stats.last_error is not None
        assert link.stats.last_error.startswith("TLS refused"), link.stats.last_error
        assert "unknown ca" in link.stats.last_error.lower()
        # its twin: the broker's own certificate for ST-A connects
        good_cert, good_key = broker.client_files("ST-A")
        (tmp_path / "twin").mkdir()
        make_keys(tmp_path / "twin" / "keys")
        twin = link_for(tmp_path / "twin", {
            "host": broker.host, "port": broker.port, "ca_file": str(broker.ca_file),
            "cert_file": str(good_cert), "key_file": str(good_key)})
        await run_for(twin, 1.5)
        assert twin.stats.sessions == 1 and twin.stats.last_error is None, twin.stats


def test_a_key_file_readable_by_others_stops_the_start(tmp_path: Path) -> None:
    make_keys(tmp_path / "keys")
    with Broker(tmp_path / "broker", stations=["ST-A"]) as broker:
        cert, key = broker.client_files("ST-A")
        key.chmod(0o644)
        with pytest.raises(CloudConfigError, match=r"mode 0644: a secret must not be readable"):
            link_for(tmp_path, {"ca_file": str(broker.ca_file), "cert_file": str(cert),
                                "key_file": str(key)})
        key.chmod(0o600)
        link_for(tmp_path, {"ca_file": str(broker.ca_file), "cert_file": str(cert),
                            "key_file": str(key)})


async def test_a_password_never_reaches_the_log_or_the_status(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_keys(tmp_path / "keys")
    secret = "hunter2-never-log-me"
    pw = tmp_path / "password"
    pw.write_text(secret + "\n")
    pw.chmod(0o644)
    with pytest.raises(CloudConfigError) as exc:
        link_for(tmp_path, {"username": "ST-A", "password_file": str(pw)})
    assert secret not in str(exc.value)
    pw.chmod(0o600)
    caplog.set_level(logging.DEBUG)
    # a plain broker that refuses the user: the failure is logged, the password is not
    with Broker(tmp_path / "broker", tls=False) as broker:
        link = link_for(tmp_path, {"host": broker.host, "port": broker.port + 1,
                                   "username": "ST-A", "password_file": str(pw)})
        await run_for(link, 1.0)
        assert link.stats.last_error is not None
        seen = caplog.text + json.dumps(link.describe()) + repr(link.stats)
        assert secret not in seen


def test_check_config_refuses_a_readable_key_and_swapd_does_not_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The start-up check: `swapd check-config` and `swapd` itself refuse a station key
    others can read, with the path and the mode, exit 2, no traceback."""
    from station import cli

    make_keys(tmp_path / "keys")
    with Broker(tmp_path / "broker", stations=["ST-A"]) as broker:
        cert, key = broker.client_files("ST-A")
        conf = tmp_path / "swapd.toml"
        conf.write_text(
            f'[journal]\npath = "{tmp_path / "j.sqlite"}"\n'
            f'[cloud]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'ca_file = "{broker.ca_file}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
            f'trusted_keys_dir = "{tmp_path / "keys"}"\n')
        key.chmod(0o640)
        assert cli.main(["check-config", str(conf)]) == 2
        assert cli.main(["--config", str(conf)]) == 2
        err = capsys.readouterr().err
        assert "[cloud]" in err and "mode 0640" in err and str(key) in err
        assert "Traceback" not in err
        key.chmod(0o600)
        assert cli.main(["check-config", str(conf)]) == 0


async def _mqtt311_only_front(upstream_port: int) -> asyncio.Server:
    """A broker that speaks only MQTT 3.1.1, as older ones do: an MQTT 5 CONNECT gets a
    3.1.1 CONNACK "unacceptable protocol version"; a 3.1.1 one is passed to mosquitto."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        first = await r.read(4096)
        i = 1
        while first[i] & 0x80:  # the remaining length's bytes
            i += 1
        level = first[i + 1 + 6]  # after the protocol name "MQTT" and its length
        if level == 5:
            w.write(bytes([0x20, 0x02, 0x00, 0x01]))
            await w.drain()
            w.close()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port)
        uw.write(first)

        async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
            try:
                while data := await a.read(65536):
                    b.write(data)
                    await b.drain()
            finally:
                b.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_a_broker_without_mqtt5_gets_3_1_1_and_the_events(tmp_path: Path) -> None:
    from aiomqtt import ProtocolVersion

    from station.events import Inhibit
    from tests.integration.cloud_support import Backend

    make_keys(tmp_path / "keys")
    with Broker(tmp_path / "broker", tls=False) as broker:
        front = await _mqtt311_only_front(broker.port)
        port = front.sockets[0].getsockname()[1]
        link = link_for(tmp_path, {"host": "127.0.0.1", "port": port})
        async with Backend(broker) as backend:
            link.journal.record([Inhibit(t=1.0, reason="r", vehicle_token=1)])
            task = asyncio.create_task(link.run())
            async with asyncio.timeout(10):
                while not backend.events():
                    await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        front.close()
        assert link.protocol == ProtocolVersion.V311
        assert [e["kind"] for e in backend.events()] == ["inhibit"]
        assert backend.invalid == []
