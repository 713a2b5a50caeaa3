"""swapd: the station controller daemon, and its demo on the simulated station."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import structlog

from station.config import ConfigError, OpcUaSection, StationConfig, load_config
from station.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swapd", description=__doc__)
    p.add_argument("--config", type=Path, help="station configuration (TOML)")
    sub = p.add_subparsers(dest="cmd")
    run = sub.add_parser("run", help="run the daemon (the default)")
    run.add_argument("--config", type=Path, dest="config_sub")
    chk = sub.add_parser("check-config", help="validate a configuration file and exit")
    chk.add_argument("file", type=Path)
    chk.add_argument("--probe", action="store_true",
                     help="also connect to the PLC and check every mapped signal (exit 2 "
                     "when one is missing or of the wrong type, or no connection)")
    demo = sub.add_parser("demo", help="drive the embedded simulated station through N swaps")
    demo.add_argument("--swaps", type=int, default=3)
    demo.add_argument("--speed", type=float, default=1.0,
                      help="simulated time runs FACTOR times faster (1 = a ~144 s swap)")
    demo.add_argument("--summary-json", type=Path)
    demo.add_argument("--journal", type=Path, help="keep the journal here (default: temporary)")
    demo.add_argument("--log-level", default="warning")
    demo.add_argument("--plc", choices=("modbus", "opcua"), default="modbus",
                      help="the simulated PLC's protocol: Modbus TCP, or OPC UA with "
                      "SignAndEncrypt (certificates made for the run)")
    demo.add_argument("--broker", metavar="URL",
                      help="also publish telemetry to this MQTT broker (mqtt://HOST:PORT, or "
                      "mqtts://HOST:PORT with --ca/--cert/--key); default: no broker")
    demo.add_argument("--station-id", default=None, help="the demo station's id on the broker")
    demo.add_argument("--trusted-keys", type=Path, metavar="DIR",
                      help="public keys whose signed commands the demo station accepts")
    demo.add_argument("--ca", type=Path, help="the broker's CA (mqtts)")
    demo.add_argument("--cert", type=Path, help="the station's client certificate (mqtts)")
    demo.add_argument("--key", type=Path, help="the station's client key (mqtts)")
    com = sub.add_parser("commission", help="the integrator's I/O check-out of the PLC: "
                         "inputs, heartbeats, a NOOP round trip, set-points; a report")
    com.add_argument("--config", type=Path, dest="config_sub",
                     help="station configuration (TOML); the daemon must not be running")
    com.add_argument("--duration", type=float, default=5.0, metavar="S",
                     help="seconds to watch the inputs (default 5)")
    com.add_argument("--round-trips", type=int, default=5, metavar="N",
                     help="NOOP command round trips (default 5)")
    com.add_argument("--report", type=Path, metavar="FILE",
                     help="also write the report here")
    com.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                     dest="fmt", help="the report's format (default text)")
    _certs_parser(sub)
    return p


def _certs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`swapd certs create|trust|list`: swapd's OPC UA application certificate and the
    trust list of PLC certificates ([plc.opcua] pki_dir)."""
    certs = sub.add_parser("certs", help="swapd's OPC UA certificate and the trust list of "
                           "PLC certificates")
    csub = certs.add_subparsers(dest="certs_cmd", required=True, metavar="COMMAND")
    cfg_help = "station configuration (TOML); default: the built-in [plc.opcua] defaults"
    create = csub.add_parser("create", help="make swapd's application certificate and key")
    create.add_argument("--config", type=Path, dest="config_sub", help=cfg_help)
    create.add_argument("--cert", type=Path, help="default: plc.opcua.certificate, else "
                        "pki_dir/own/certs/swapd.der")
    create.add_argument("--key", type=Path, help="default: plc.opcua.private_key, else "
                        "pki_dir/own/private/swapd.pem")
    create.add_argument("--uri", help="the application URI (default: "
                        "plc.opcua.application_uri)")
    create.add_argument("--hostname", action="append", dest="hostnames", metavar="NAME",
                        help="a DNS name of this machine for the certificate (repeatable; "
                        "default: this host's name)")
    create.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    create.add_argument("--force", action="store_true",
                        help="replace an existing certificate and key")
    trust = csub.add_parser("trust", help="trust a PLC's (or its CA's) certificate: copy it "
                            "into pki_dir/trusted/certs")
    trust.add_argument("file", type=Path, help="the certificate (DER or PEM)")
    trust.add_argument("--config", type=Path, dest="config_sub", help=cfg_help)
    lst = csub.add_parser("list", help="the trusted and the rejected certificates")
    lst.add_argument("--config", type=Path, dest="config_sub", help=cfg_help)


def _readable_file(key: str, path: Path | None) -> None:
    """A data file the configuration names: it exists, is a file, and can be read."""
    if path is None:
        return
    if not path.exists():
        raise ConfigError(f"{key} = {str(path)!r}: no such file")
    if not path.is_file():
        raise ConfigError(f"{key} = {str(path)!r}: not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key} = {str(path)!r}: not readable by this user")


def _writable_dir(key: str, path: Path, what: str) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{key} = {str(path)!r}: its directory {str(parent)!r} does not "
                          f"exist (the {what} is made there)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} = {str(path)!r}: its directory {str(parent)!r} is not "
                          f"writable by this user (the {what} is made there)")


def _check_plc(cfg: StationConfig) -> None:
    import time

    from drivers.plc.contract import load_contract
    from drivers.plc.registry import create_link

    section = cfg.plc.link_section()
    addressing_key = "register_map" if cfg.plc.protocol == "modbus" else "node_map"
    addressing = getattr(section, addressing_key, None)
    _readable_file("plc.contract", cfg.plc.contract)
    _readable_file(f"plc.{cfg.plc.protocol}.{addressing_key}", addressing)
    files = ", ".join(f"{k} {v}" for k, v in (("contract", cfg.plc.contract),
                                              (addressing_key.replace("_", " "), addressing))
                      if v is not None) or "the shipped contract and map"
    try:
        create_link(cfg.plc, clock=time.monotonic)
        contract = load_contract(cfg.plc.contract)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"[plc]: {files}: not UTF-8 text (byte {exc.start})") from exc
    except (ValueError, OSError) as exc:  # the loaders name the file and the problem
        raise ConfigError(f"[plc]: {exc}") from exc
    except Exception as exc:  # anything else a malformed file provokes: name the files
        raise ConfigError(f"[plc]: {files}: cannot be used: {type(exc).__name__}: "
                          f"{exc}") from exc
    # The PLC is judged dead when plc_heartbeat has not changed for 2 x stale_after_s
    # (station/interlocks.py): the contract says when that must have happened.
    timing = contract.timing
    heartbeat_lost_s = 2 * cfg.plc.stale_after_s
    if heartbeat_lost_s > timing.plc_heartbeat_timeout_ms / 1000:
        raise ConfigError(
            f"[plc]: plc.stale_after_s = {cfg.plc.stale_after_s:g} s judges a silent PLC "
            f"heartbeat after {heartbeat_lost_s:g} s, later than the contract's "
            f"plc_heartbeat_timeout_ms = {timing.plc_heartbeat_timeout_ms} "
            f"({contract.origin})")
    if cfg.plc.stale_after_s < timing.plc_heartbeat_period_ms / 1000:
        raise ConfigError(
            f"[plc]: plc.stale_after_s = {cfg.plc.stale_after_s:g} s is shorter than the "
            f"contract's plc_heartbeat_period_ms = {timing.plc_heartbeat_period_ms}: a "
            "running PLC would be judged dead")
    if isinstance(section, OpcUaSection):
        _check_opcua(section)


def _check_opcua(section: OpcUaSection) -> None:
    """swapd's certificate and key (they match, the key readable by the service only, the
    application URI in the certificate), the trust list, the user's password file or
    certificate."""
    from drivers.plc.opcua_security import (
        OpcUaSecurityError,
        certificate_uri,
        check_private_key_file,
        load_own_identity,
        read_password,
    )

    try:
        if section.security_policy != "None":
            for key, path in (("plc.opcua.certificate", section.certificate_path),
                              ("plc.opcua.private_key", section.private_key_path)):
                if not path.exists():
                    raise ConfigError(f"[plc]: {key} = {str(path)!r}: no such file (make "
                                      "swapd's certificate with `swapd certs create`)")
            cert, _ = load_own_identity(section.certificate_path, section.private_key_path)
            uri = certificate_uri(cert)
            if uri != section.application_uri:
                raise ConfigError(
                    f"[plc]: plc.opcua.certificate {section.certificate_path} carries the "
                    f"application URI {uri!r}, but plc.opcua.application_uri is "
                    f"{section.application_uri!r}: the PLC would refuse the session")
            trusted = section.pki_dir / "trusted" / "certs"
            if not trusted.is_dir():
                raise ConfigError(
                    f"[plc]: {trusted} does not exist: swapd would refuse every PLC (put "
                    "the PLC's server certificate there, or `swapd certs trust FILE`)")
        if section.password_file is not None:
            _readable_file("plc.opcua.password_file", section.password_file)
            read_password(section.password_file)
        if section.user_certificate is not None and section.user_private_key is not None:
            _readable_file("plc.opcua.user_certificate", section.user_certificate)
            check_private_key_file(section.user_private_key, "plc.opcua.user_private_key")
    except OpcUaSecurityError as exc:
        raise ConfigError(f"[plc]: {exc}") from None


def probe_plc(cfg: StationConfig) -> list[str]:
    """`swapd check-config --probe`: connect to the PLC once and check every mapped signal
    (PlcLink.probe). The problems, one line each; ConnectionError when no connection."""
    import time

    from drivers.plc.registry import create_link
    from station.setpoints import check_setpoints

    link = create_link(cfg.plc, clock=time.monotonic)
    problems = asyncio.run(link.probe())
    # The set-points the PLC publishes against this configuration (docs/plc-interface.md,
    # Set-points): a mismatch is a problem, as swapd would refuse to run on it.
    inputs = getattr(link, "probed_inputs", None)
    if inputs:
        problems += [f"set-point {c.describe()}" for c in check_setpoints(inputs, cfg)
                     if not c.ok]
    return problems


def _check_can(cfg: StationConfig) -> None:
    from drivers.bms.adapter import BmsAdapter
    from drivers.bms.protocol import PackProtocol

    _readable_file("can.dbc", cfg.can.dbc)
    try:
        adapter = BmsAdapter(PackProtocol(cfg.can.dbc))
    except Exception as exc:  # cantools raises several types on a malformed DBC
        raise ConfigError(f"[can] dbc {cfg.can.dbc or '(shipped)'}: cannot be used: "
                          f"{exc}") from exc
    known = set(adapter.protocol.choices("PackIdentity", "Chemistry").values())
    for name in cfg.chemistry:
        if known and name not in known:
            raise ConfigError(f"chemistry.{name}: the DBC names no such chemistry (it names "
                              f"{', '.join(sorted(known))}); a pack of it would never match")
    status = adapter.timeouts().status
    if cfg.interlocks.pack_silent_s < status:
        raise ConfigError(
            f"interlocks.pack_silent_s = {cfg.interlocks.pack_silent_s:g} s is shorter than "
            f"the DBC's PackStatus timeout ({status:g} s): a pack talking as it should "
            "would be judged silent")


def _check_api(cfg: StationConfig) -> None:
    import grp

    api = cfg.api
    if api.socket is None:
        if api.group is not None:
            raise ConfigError("api.group is set but api.socket is not: no socket to give it")
        return
    # The daemon makes the socket's directory if need be (under systemd RuntimeDirectory
    # makes it, and removes it when the service stops): the nearest that exists must let it.
    existing = api.socket.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"api.socket = {str(api.socket)!r}: {str(existing)!r} is not a "
                          "directory this user can make the socket (or its directory) in")
    if api.socket.exists() and not stat.S_ISSOCK(api.socket.stat().st_mode):
        raise ConfigError(f"api.socket = {str(api.socket)!r}: exists and is not a socket")
    if api.group is None:
        return
    try:
        gid = grp.getgrnam(api.group).gr_gid
    except KeyError:
        if not api.group.isdigit():
            raise ConfigError(f"api.group = {api.group!r}: no such group on this "
                              "system") from None
        gid = int(api.group)
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise ConfigError(f"api.group = {api.group!r}: this user is not a member, so it "
                          "cannot give the socket to that group")


def _check_journal(cfg: StationConfig) -> None:
    # Its directory must exist: a typo in it would start an empty journal, and the daemon
    # would forget a swap left unfinished (the restart reads it from the journal).
    path = cfg.journal.path
    if path.is_dir():
        raise ConfigError(f"journal.path = {str(path)!r}: is a directory")
    _writable_dir("journal.path", path, "journal")
    if not path.exists():
        return
    if not path.is_file():
        raise ConfigError(f"journal.path = {str(path)!r}: not a regular file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"journal.path = {str(path)!r}: not readable and writable by "
                          "this user")
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ConfigError(f"journal.path = {str(path)!r}: cannot read: "
                          f"{exc.strerror or exc}") from exc
    if head and head != b"SQLite format 3\0":
        raise ConfigError(f"journal.path = {str(path)!r}: exists and is not an SQLite "
                          "journal")


def check_files(cfg: StationConfig) -> None:
    """What the configuration names outside itself: the data files (PLC contract, protocol
    addressing, DBC) exist, load and agree with it; the journal and the operator socket can
    be made where it says, the socket's group exists. Raises ConfigError naming the key or
    file and the problem."""
    _check_plc(cfg)
    _check_can(cfg)
    _check_api(cfg)
    _check_journal(cfg)
    _check_cloud(cfg)


def _check_cloud(cfg: StationConfig) -> None:
    """The network's files: the TLS CA, certificate and key (the key and the password file
    readable by the service only), the trusted signing keys."""
    if not cfg.cloud.enabled:
        return
    from station.cloud.link import CloudConfigError, check_private_file, tls_context
    from station.cloud.signing import Keyring, SigningError

    try:
        tls_context(cfg)
        if cfg.cloud.password_file is not None:
            check_private_file(cfg.cloud.password_file, "cloud.password_file")
        assert cfg.cloud.trusted_keys_dir is not None  # the config requires it when enabled
        Keyring.load(cfg.cloud.trusted_keys_dir)
    except (CloudConfigError, SigningError) as exc:
        raise ConfigError(f"[cloud]: {exc}") from None


def _load_and_check(path: Path | None) -> StationConfig:
    """load_config + check_files; whatever the input, a ConfigError, never a traceback."""
    try:
        cfg = load_config(path)
        check_files(cfg)
    except ConfigError:
        raise
    except RecursionError as exc:
        raise ConfigError(f"{path}: nested too deeply") from exc
    except Exception as exc:  # a case no check foresaw: still one line, naming the file
        raise ConfigError(f"{path}: cannot be used: {type(exc).__name__}: {exc}") from exc
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "demo":
        if args.swaps < 1 or not args.speed >= 1:  # not NaN either
            print("swapd demo: --swaps must be >= 1 and --speed >= 1 (1 is real time)",
                  file=sys.stderr)
            return 2
        configure_logging(args.log_level, "console" if sys.stderr.isatty() else "json")
        from station.demo import BrokerOptionError, cloud_overrides, run_demo

        try:
            cloud = cloud_overrides(args.broker, args.station_id, args.trusted_keys, args.ca,
                                    args.cert, args.key)
        except BrokerOptionError as exc:
            print(f"swapd demo: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(run_demo(args.swaps, args.speed, args.summary_json, args.journal,
                                    cloud=cloud, plc=args.plc))
    if args.cmd == "check-config":
        try:
            cfg = _load_and_check(args.file)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{args.file}: ok")
        if not args.probe:
            return 0
        return _probe(cfg)
    if args.cmd == "certs":
        return _certs(args)
    if args.cmd == "commission":
        return _commission(args)
    path = getattr(args, "config_sub", None) or args.config
    try:
        cfg = _load_and_check(path)
    except ConfigError as exc:
        print(f"swapd: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log.level, cfg.log.format)
    try:
        return asyncio.run(_run(cfg))
    except Exception:  # in the log's format (one JSON object per line), not a bare traceback
        structlog.get_logger("swapd").exception("swapd.crashed")
        return 1


def _certs(args: argparse.Namespace) -> int:
    """`swapd certs ...`: exit 0, or 2 with one line saying what is wrong."""
    import socket
    from datetime import UTC, datetime

    from drivers.plc import opcua_security as sec_mod
    from station.config import OpcUaSection

    prog = f"swapd certs {args.certs_cmd}"

    def fail(exc: Exception) -> int:
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            text = f"{exc.filename}: {exc.strerror}"
        else:
            text = str(exc)
        print(f"{prog}: {' '.join(text.split())}", file=sys.stderr)
        return 2

    path = args.config_sub or args.config
    try:
        # the file only, not check_files: making the certificate check-config asks for must
        # not depend on it being there
        cfg = load_config(path) if path is not None else StationConfig()
    except ConfigError as exc:
        return fail(exc)
    section = cfg.plc.opcua or OpcUaSection()
    trust_list = sec_mod.TrustList(section.pki_dir, peer="server")

    if args.certs_cmd == "create":
        cert_path = args.cert or section.certificate_path
        key_path = args.key or section.private_key_path
        uri = args.uri or section.application_uri
        hostnames = args.hostnames or [socket.gethostname()]
        try:
            cert = sec_mod.create_application_certificate(
                cert_path, key_path, application_uri=uri, hostnames=hostnames,
                days=args.days, overwrite=args.force)
        except (OSError, ValueError) as exc:
            return fail(exc)
        print(f"certificate:      {cert_path} (DER)")
        print(f"private key:      {key_path} (mode 0600; it never leaves this machine)")
        print(f"application URI:  {uri}")
        print(f"host names:       {', '.join(hostnames)}")
        print(f"SHA-1 thumbprint: {sec_mod.thumbprint(cert)}")
        print(f"valid until:      {sec_mod.expires_at(cert):%Y-%m-%d %H:%M} UTC")
        if uri != section.application_uri:
            print(f"note: plc.opcua.application_uri is {section.application_uri!r}: swapd "
                  "presents that URI, and a PLC refuses a certificate that does not carry it")
        print(f"For the PLC's administrator: put {cert_path} into the PLC's trusted "
              "certificates (its OPC UA server's trust list) and compare the thumbprint "
              "above. Never hand out the private key.")
        return 0

    if args.certs_cmd == "trust":
        try:
            dest = trust_list.trust(args.file)
            cert = sec_mod.load_certificates(dest.read_bytes())[0]
        except (OSError, ValueError) as exc:  # OpcUaSecurityError is a ValueError
            return fail(exc)
        print(f"trusted: CN={sec_mod.common_name(cert) or '-'} sha1 "
              f"{sec_mod.thumbprint(cert)} until {sec_mod.expires_at(cert):%Y-%m-%d}: {dest}")
        return 0

    try:  # list
        lists = trust_list.list()
    except OSError as exc:
        return fail(exc)
    now = datetime.now(UTC)
    for state in ("trusted", "rejected"):
        for info in lists[state]:
            if info.problem is not None or info.not_after is None:
                print(f"{state:8}  {info.path}: {info.problem}")
                continue
            expired = " (expired)" if info.not_after < now else ""
            print(f"{state:8}  {info.subject}  sha1 {info.thumbprint}  until "
                  f"{info.not_after:%Y-%m-%d}{expired}  {info.uri or '-'}  {info.path}")
    if not any(lists.values()):
        print(f"no certificates in {trust_list.trusted_dir} or {trust_list.rejected_dir}")
    return 0


def _commission(args: argparse.Namespace) -> int:
    """`swapd commission`: 0 all passed, 2 a section failed, 1 it could not run."""
    if not 0 < args.duration <= 3600 or not 1 <= args.round_trips <= 100:
        print("swapd commission: --duration must be in (0, 3600] s and --round-trips in "
              "1..100", file=sys.stderr)
        return 1
    path = args.config_sub or args.config
    try:
        cfg = load_config(path)
        _check_plc(cfg)  # the PLC's files only: the rest does not matter here
    except ConfigError as exc:
        print(f"swapd commission: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # still one line, naming the file
        print(f"swapd commission: {path}: cannot be used: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    configure_logging("critical", "console")  # the findings are the report, not log lines
    from station.commission import commission_main

    return commission_main(cfg, duration_s=args.duration, round_trips=args.round_trips,
                           fmt=args.fmt, report_path=args.report and str(args.report))


def _probe(cfg: StationConfig) -> int:
    """Print the probe's findings: one line per problem, exit 2 if any."""
    configure_logging("error", "console")  # the findings are printed, not logged
    endpoint = cfg.plc.endpoint
    try:
        problems = probe_plc(cfg)
    except ConnectionError as exc:
        print(f"[plc] {endpoint}: cannot connect: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a broken PLC answer: one line, never a traceback
        print(f"[plc] {endpoint}: probe failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"[plc] {endpoint}: {problem}", file=sys.stderr)
    if problems:
        print(f"[plc] {endpoint}: {len(problems)} problem(s)", file=sys.stderr)
        return 2
    print(f"[plc] {endpoint}: every mapped signal present, as the addressing says")
    return 0


async def _run(cfg: StationConfig) -> int:
    from station.cloud.link import CloudConfigError
    from station.daemon import Daemon
    from station.local_api import LocalApiError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Daemon(cfg).run(stop)
    except LocalApiError as exc:  # the socket is taken by another daemon, or cannot be made
        print(f"swapd: [api]: {exc}", file=sys.stderr)
        return 2
    except CloudConfigError as exc:  # a key file others can read, a CA that does not load
        print(f"swapd: [cloud]: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
