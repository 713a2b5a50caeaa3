"""swapd: the station controller daemon, and its demo on the simulated station."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog

from station.config import ConfigError, StationConfig, load_config
from station.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swapd", description=__doc__)
    p.add_argument("--config", type=Path, help="station configuration (TOML)")
    sub = p.add_subparsers(dest="cmd")
    run = sub.add_parser("run", help="run the daemon (the default)")
    run.add_argument("--config", type=Path, dest="config_sub")
    chk = sub.add_parser("check-config", help="validate a configuration file and exit")
    chk.add_argument("file", type=Path)
    demo = sub.add_parser("demo", help="drive the embedded simulated station through N swaps")
    demo.add_argument("--swaps", type=int, default=3)
    demo.add_argument("--speed", type=float, default=1.0,
                      help="simulated time runs FACTOR times faster (1 = a ~144 s swap)")
    demo.add_argument("--summary-json", type=Path)
    demo.add_argument("--journal", type=Path, help="keep the journal here (default: temporary)")
    demo.add_argument("--log-level", default="warning")
    return p


def check_files(cfg: StationConfig) -> None:
    """The data files the configuration names (PLC contract, protocol addressing, DBC) load
    and agree; raises ConfigError naming the file and the problem."""
    import time

    from drivers.bms.adapter import BmsAdapter
    from drivers.bms.protocol import PackProtocol
    from drivers.plc.registry import create_link

    try:
        create_link(cfg.plc, clock=time.monotonic)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"[plc]: {exc}") from exc
    try:
        BmsAdapter(PackProtocol(cfg.can.dbc))
    except Exception as exc:  # cantools raises several types on a malformed DBC
        raise ConfigError(f"[can] dbc: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "demo":
        if args.swaps < 1 or args.speed <= 0:
            print("swapd demo: --swaps must be >= 1 and --speed > 0", file=sys.stderr)
            return 2
        configure_logging(args.log_level, "console" if sys.stderr.isatty() else "json")
        from station.demo import run_demo

        return asyncio.run(run_demo(args.swaps, args.speed, args.summary_json, args.journal))
    if args.cmd == "check-config":
        try:
            check_files(load_config(args.file))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{args.file}: ok")
        return 0
    path = getattr(args, "config_sub", None) or args.config
    try:
        cfg = load_config(path)
        check_files(cfg)
    except ConfigError as exc:
        print(f"swapd: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log.level, cfg.log.format)
    try:
        return asyncio.run(_run(cfg))
    except Exception:  # in the log's format (one JSON object per line), not a bare traceback
        structlog.get_logger("swapd").exception("swapd.crashed")
        return 1


async def _run(cfg: StationConfig) -> int:
    from station.daemon import Daemon

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await Daemon(cfg).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
