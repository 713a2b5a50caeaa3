"""`swapnet`: a small back-end console for benches and the demo.

    swapnet keygen --out DIR --key-id ID
    swapnet send --broker mqtts://HOST:PORT --ca CA --cert CRT --key KEY \\
        --signing-key DIR/ID.key --key-id ID --station PSS-0001 COMMAND [--args JSON]
    swapnet watch --broker mqtt://127.0.0.1:1883 [--station PSS-0001] [--json]

send exits 0 when the station accepted the command, 1 when it refused or rejected it, 2 on
a timeout, a connection error or a bad key file. Nothing secret is printed: a key file's
errors name its path and mode, never its contents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt import ProtocolVersion
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from station.cloud import topics
from station.cloud.link import CloudConfigError, check_private_file
from station.cloud.signing import (
    KEY_ID,
    KEY_SUFFIX,
    PUB_SUFFIX,
    KeyFileError,
    load_private_key,
    private_pem,
    public_pem,
    sign_command,
)

EXIT_OK, EXIT_REFUSED, EXIT_FAILED = 0, 1, 2
DEFAULT_PREFIX = "swapnet/v1"
WATCHED = (topics.STATUS, topics.STATE, topics.RACK, topics.EVENTS, topics.SWAPS)


class ConsoleError(Exception):
    """Something the operator must fix or know (exit 2), said in one line."""


def utc_stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---- broker connection ---------------------------------------------------------------------
@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password_file: Path | None = field(default=None, repr=False)


def parse_broker(url: str, ca: str | None = None, cert: str | None = None,
                 key: str | None = None, username: str | None = None,
                 password_file: str | None = None) -> Broker:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConsoleError(f"--broker {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    if parts.username or parts.password:
        raise ConsoleError("--broker: give no credentials in the URL (use --username and "
                           "--password-file)")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ConsoleError(f"--broker {url!r}: bad port") from None
    tls = parts.scheme == "mqtts"
    if (cert is None) != (key is None):
        raise ConsoleError("--cert and --key go together (the client certificate and its key)")
    if not tls and (ca or cert):
        raise ConsoleError("--ca, --cert and --key need an mqtts:// broker")
    return Broker(parts.hostname, port, tls, Path(ca) if ca else None,
                  Path(cert) if cert else None, Path(key) if key else None, username,
                  Path(password_file) if password_file else None)


def _private_file(path: Path, what: str) -> None:
    """A key or password file readable by others is refused, as the station does."""
    try:
        check_private_file(path, what)
    except CloudConfigError as exc:
        raise ConsoleError(str(exc)) from None


def tls_context(b: Broker) -> ssl.SSLContext | None:
    if not b.tls:
        return None
    # the broker's CA pinned when given (no system store then), TLS 1.2 at least
    ctx = ssl.create_default_context(cafile=str(b.ca) if b.ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if b.cert is not None and b.key is not None:
        _private_file(b.key, "a client key")
        try:
            ctx.load_cert_chain(str(b.cert), str(b.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConsoleError(f"{b.cert} / {b.key}: cannot load the client certificate "
                               f"({type(exc).__name__})") from None
    return ctx


def _password(b: Broker) -> str | None:
    if b.password_file is None:
        return None
    _private_file(b.password_file, "a password file")
    return b.password_file.read_text("utf-8").strip()


def make_client(b: Broker, protocol: ProtocolVersion, timeout: float) -> aiomqtt.Client:
    try:
        ctx = tls_context(b)
    except ssl.SSLError as exc:
        raise ConsoleError(f"{b.ca}: cannot load the CA ({type(exc).__name__})") from None
    except OSError as exc:
        raise ConsoleError(f"{b.ca}: {exc.strerror or 'cannot read'}") from None
    return aiomqtt.Client(b.host, b.port, username=b.username, password=_password(b),
                          identifier=f"swapnet-{uuid.uuid4().hex[:12]}", protocol=protocol,
                          tls_context=ctx, timeout=timeout, keepalive=30,
                          clean_start=True)


@contextlib.asynccontextmanager
async def connect(b: Broker,
                  timeout: float) -> AsyncIterator[tuple[aiomqtt.Client, ProtocolVersion]]:
    """An MQTT 5 session, or 3.1.1 when the broker refuses 5. ConsoleError when it
    cannot be reached or refuses the client."""
    last: Exception | None = None
    for protocol in (ProtocolVersion.V5, ProtocolVersion.V311):
        client = make_client(b, protocol, timeout)
        try:
            await asyncio.wait_for(client.__aenter__(), timeout)
        except aiomqtt.MqttCodeError as exc:
            last = exc
            if protocol is ProtocolVersion.V5 and exc.rc in (1, 132):  # unsupported version
                continue
            break
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            last = exc
            break
        try:
            yield client, protocol
        finally:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                await asyncio.wait_for(client.__aexit__(None, None, None), timeout)
        return
    why = "timed out" if isinstance(last, TimeoutError) else str(last) or type(last).__name__
    raise ConsoleError(f"cannot connect to {'mqtts' if b.tls else 'mqtt'}://{b.host}:{b.port}: "
                       f"{why}")


# ---- keygen --------------------------------------------------------------------------------
def keygen(out: Path, key_id: str) -> tuple[Path, Path]:
    """ID.key (PEM PKCS8, mode 0600) and ID.pub (PEM SubjectPublicKeyInfo, mode 0644).
    An existing file is never overwritten."""
    if not KEY_ID.fullmatch(key_id):
        raise ConsoleError(f"--key-id {key_id[:64]!r}: 1-64 characters of A-Z a-z 0-9 . _ -")
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{key_id}{KEY_SUFFIX}", out / f"{key_id}{PUB_SUFFIX}"
    for p in (priv_path, pub_path):
        if p.exists() or p.is_symlink():
            raise ConsoleError(f"{p}: exists; not overwritten")
    key = Ed25519PrivateKey.generate()
    # created 0600 from the start: the key is never readable by others, not even briefly
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    os.chmod(priv_path, 0o600)  # whatever the umask
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(public_pem(key.public_key()))
    os.chmod(pub_path, 0o644)
    return priv_path, pub_path


# ---- send ----------------------------------------------------------------------------------
def build_command(command: str, args: dict[str, Any], station: str, key_id: str,
                  key: Ed25519PrivateKey, ttl_s: float, now: float,
                  request_id: str | None = None) -> dict[str, Any]:
    body = {"command": command, "args": args,
            "request_id": request_id or f"swapnet-{uuid.uuid4().hex}",
            "station_id": station, "issued_at": utc_stamp(now),
            "expires_at": utc_stamp(now + ttl_s)}
    return sign_command(body, key_id, key)


async def send(b: Broker, prefix: str, signed: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Publish a signed command and wait for the station's response to its request id."""
    t = topics.Topics(prefix, signed["station_id"])
    request_id = signed["request_id"]
    deadline = time.monotonic() + timeout
    async with connect(b, timeout) as (client, protocol):
        await client.subscribe(t.responses, qos=1, timeout=timeout)
        props = None
        if protocol is ProtocolVersion.V5:  # the station answers there, with this correlation
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = t.responses
            props.CorrelationData = request_id.encode()
        await client.publish(t.commands, json.dumps(signed).encode(), qos=1,
                             properties=props, timeout=timeout)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                async for msg in client.messages:
                    resp = _json(msg.payload)
                    if isinstance(resp, dict) and resp.get("request_id") == request_id:
                        return resp
        except TimeoutError:
            pass
    raise ConsoleError(f"no response to {request_id} from station {signed['station_id']} "
                       f"within {timeout:g} s")


def _json(payload: Any) -> Any:
    if not isinstance(payload, bytes | bytearray):
        return None
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


# ---- watch ---------------------------------------------------------------------------------
def _num(v: Any, fmt: str = "{:g}") -> str:
    return fmt.format(v) if isinstance(v, int | float) and not isinstance(v, bool) else "?"


@dataclass
class Watcher:
    """One human-readable line per message; a warning when an event seq skips or repeats."""

    out: Callable[[str], None]
    last_seq: dict[str, int] = field(default_factory=dict)

    def line(self, topic: str, payload: Any, prefix: str) -> None:
        where = topics.station_of(topic, prefix)
        station, leaf = where if where else ("?", topic)
        msg = _json(payload)
        if not isinstance(msg, dict):
            size = len(payload) if isinstance(payload, bytes | bytearray) else 0
            self.out(f"{station} {leaf}: unreadable message ({size} bytes)")
            return
        render = getattr(self, f"_{leaf}", None)
        if render is None:
            self.out(f"{station} {leaf}: {json.dumps(msg)[:200]}")
            return
        try:
            render(station, msg)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            self.out(f"{station} {leaf}: cannot show ({type(exc).__name__}): "
                     f"{json.dumps(msg)[:200]}")

    def _status(self, station: str, m: dict[str, Any]) -> None:
        if m.get("online"):
            self.out(f"{station} status online session {m.get('session')} "
                     f"software {m.get('software_version')} config "
                     f"{str(m.get('config_hash'))[:12]} since {m.get('started_at')}")
        else:
            self.out(f"{station} status OFFLINE session {m.get('session')}"
                     + (f" ({m['reason']})" if m.get("reason") else ""))

    def _state(self, station: str, m: dict[str, Any]) -> None:
        parts = [f"{station} state {m.get('packml_state')}"]
        if m.get("step"):
            parts.append(f"step {m['step']}")
        if m.get("swap_id") is not None:
            parts.append(f"swap {m['swap_id']}")
        if m.get("active_interlocks"):
            parts.append("interlocks " + ",".join(map(str, m["active_interlocks"])))
        if m.get("reason"):
            parts.append(f"reason: {m['reason']}")
        if m.get("start_inhibited"):
            parts.append(f"inhibit: {m['start_inhibited']}")
        if m.get("locked_out_slots"):
            parts.append("locked out " + ",".join(map(str, m["locked_out_slots"])))
        parts.append(f"cap {_num(m.get('power_cap_kw'))} kW")
        self.out(" ".join(parts))

    def _rack(self, station: str, m: dict[str, Any]) -> None:
        slots = m.get("slots") or []
        count: dict[str, int] = {}
        for s in slots:
            state = s.get("state", "unknown") if isinstance(s, dict) else "unknown"
            count[state] = count.get(state, 0) + 1
        other = ", ".join(f"{n} {k}" for k, n in sorted(count.items())
                          if k not in ("ready", "charging", "empty"))
        self.out(f"{station} rack {count.get('ready', 0)} ready, {count.get('charging', 0)} "
                 f"charging of {len(slots)} slots" + (f" ({other})" if other else "")
                 + f", {_num(m.get('power_kw'), '{:.1f}')} of "
                 f"{_num(m.get('power_cap_kw'), '{:.1f}')} kW")

    def _events(self, station: str, m: dict[str, Any]) -> None:
        seq, replayed = m.get("seq"), bool(m.get("replayed"))
        self.out(f"{station} event #{seq} {m.get('kind')} (event id {m.get('event_id')}) "
                 f"at {m.get('at')}" + (" [replayed]" if replayed else "")
                 + _event_detail(m.get("data")))
        if not isinstance(seq, int) or isinstance(seq, bool):
            return
        last = self.last_seq.get(station)
        if last is not None and seq > last + 1:
            self.out(f"WARNING {station}: events seq gap: #{seq} after #{last} "
                     f"({seq - last - 1} missing)")
        elif last is not None and seq <= last:
            self.out(f"WARNING {station}: event #{seq} again (last #{last}): a duplicate, "
                     "deduplicate by event id")
        if replayed:
            self.out(f"WARNING {station}: event #{seq} replayed (journaled before this "
                     "connection)")
        self.last_seq[station] = max(seq, last or 0)

    def _swaps(self, station: str, m: dict[str, Any]) -> None:
        out, into = m.get("pack_out") or {}, m.get("pack_in") or {}
        vehicle = m.get("vehicle") or {}
        energy = m.get("energy_kwh")
        self.out(f"{station} swap {m.get('record_id')} {m.get('outcome')} vin "
                 f"{vehicle.get('vin') or '-'} out {out.get('serial')} "
                 f"({_num(out.get('soc_pct'), '{:.0f}')}%) in {into.get('serial')} "
                 f"({_num(into.get('soc_pct'), '{:.0f}')}%) "
                 f"{_num(energy, '{:.2f}') + ' kWh' if energy is not None else 'energy ?'} "
                 f"{_num(m.get('duration_s'), '{:.0f}')} s"
                 + (" [replayed]" if m.get("replayed") else ""))


async def watch(b: Broker, prefix: str, station: str | None, as_json: bool,
                count: int | None, timeout: float, out: TextIO) -> int:
    def emit(text: str) -> None:
        print(text, file=out, flush=True)

    watcher = Watcher(emit)
    seen = 0
    who = station or "+"
    async with connect(b, timeout) as (client, _protocol):
        for leaf in WATCHED:
            await client.subscribe(f"{prefix}/{who}/{leaf}", qos=1, timeout=timeout)
        # on stderr: stdout is only the messages (one JSON document a line with --json)
        print(f"watching {prefix}/{who}/{{{','.join(WATCHED)}}} on {b.host}:{b.port}",
              file=sys.stderr, flush=True)
        async for msg in client.messages:
            topic = str(msg.topic)
            if as_json:
                body = _json(msg.payload)
                emit(json.dumps({"topic": topic, "retained": bool(msg.retain),
                                 "message": body}, separators=(",", ":")))
            else:
                watcher.line(topic, msg.payload, prefix)
            seen += 1
            if count is not None and seen >= count:
                break
    return EXIT_OK


# ---- command line --------------------------------------------------------------------------
def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--ca", help="the broker's CA certificate (PEM): pinned")
    p.add_argument("--cert", help="this client's certificate (PEM)")
    p.add_argument("--key", help="this client's key (PEM, mode 0600)")
    p.add_argument("--username")
    p.add_argument("--password-file", help="a file holding the password (mode 0600)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (%(default)s)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to connect, and for send to wait for the response")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="swapnet", description="A back-end console for swap "
                                 "stations on an MQTT broker: keygen, send, watch.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    kg = sub.add_parser("keygen", help="make an Ed25519 command signing key pair")
    kg.add_argument("--out", required=True, help="directory for ID.key and ID.pub")
    kg.add_argument("--key-id", required=True)
    sd = sub.add_parser("send", help="sign a command, send it, print the response")
    _broker_args(sd)
    sd.add_argument("--signing-key", required=True, help="ID.key from swapnet keygen")
    sd.add_argument("--key-id", required=True)
    sd.add_argument("--station", required=True)
    sd.add_argument("command")
    sd.add_argument("--args", default="{}", help="the command's arguments, a JSON object")
    sd.add_argument("--ttl", type=float, default=60.0, help="seconds until it expires")
    sd.add_argument("--request-id", help="default: a fresh one (give one to retry)")
    wt = sub.add_parser("watch", help="a live view of the stations on a broker")
    _broker_args(wt)
    wt.add_argument("--station", help="one station (default: every station)")
    wt.add_argument("--json", action="store_true",
                    help='one JSON line per message: {"topic", "retained", "message"}')
    wt.add_argument("--count", type=int, help="exit after this many messages")
    return ap


def _broker(ns: argparse.Namespace) -> Broker:
    return parse_broker(ns.broker, ns.ca, ns.cert, ns.key, ns.username, ns.password_file)


async def _run(ns: argparse.Namespace) -> int:
    if ns.cmd == "keygen":
        priv, pub = keygen(Path(ns.out), ns.key_id)
        print(f"wrote {priv} (private, mode 0600: keep it on the back end)")
        print(f"wrote {pub} (public: copy it into each station's trusted_keys_dir)")
        return EXIT_OK
    if ns.cmd == "send":
        try:
            args = json.loads(ns.args)
        except ValueError as exc:
            raise ConsoleError(f"--args: not JSON: {exc}") from None
        if not isinstance(args, dict):
            raise ConsoleError("--args: must be a JSON object")
        if ns.ttl <= 0 or ns.timeout <= 0:
            raise ConsoleError("--ttl and --timeout must be positive")
        try:
            key = load_private_key(ns.signing_key)
        except KeyFileError as exc:
            raise ConsoleError(str(exc)) from None
        try:
            signed = build_command(ns.command, args, ns.station, ns.key_id, key, ns.ttl,
                                   time.time(), ns.request_id)
        except ValueError as exc:  # a bad key id, or args JCS cannot carry
            raise ConsoleError(f"cannot sign: {exc}") from None
        resp = await send(_broker(ns), ns.prefix, signed, ns.timeout)
        print(json.dumps(resp, indent=2))
        return EXIT_OK if resp.get("accepted") is True else EXIT_REFUSED
    return await watch(_broker(ns), ns.prefix, ns.station, ns.json, ns.count, ns.timeout,
                       sys.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    try:
        return asyncio.run(_run(ns))
    except ConsoleError as exc:
        print(f"swapnet {ns.cmd}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except aiomqtt.MqttError as exc:
        print(f"swapnet {ns.cmd}: connection lost: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _event_detail(data: Any) -> str:
    """What a person watching wants of an event: the step, the alarm or fault and why."""
    if not isinstance(data, dict):
        return ""
    parts = [str(data[k])[:40] for k in ("step", "new", "command", "alarm", "code")
             if isinstance(data.get(k), str | int) and not isinstance(data.get(k), bool)]
    why = data.get("reason")
    if isinstance(why, str) and why:
        parts.append(why[:160])
    return (": " + ", ".join(parts)) if parts else ""


if __name__ == "__main__":
    sys.exit(main())

