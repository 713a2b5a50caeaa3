"""`swap-sim`: run the simulated station until SIGINT/SIGTERM, logging what happens."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from sim_hw.config import SimConfig, SimConfigError, load_sim_config, with_overrides
from sim_hw.mechanics import SimEvent
from sim_hw.station_sim import SimStation

log = logging.getLogger("swap-sim")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swap-sim",
        description="Simulated battery-swap station: Modbus TCP PLC + pack BMS on CAN.",
    )
    p.add_argument("--config", help="TOML file with a [sim] table (defaults if omitted)")
    p.add_argument("--speed", type=float, help="override sim.speed (time factor)")
    p.add_argument("--vehicles", type=int, help="override sim.vehicles (0 = unlimited)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    return p


def _log_event(ev: SimEvent) -> None:
    log.info("[t=%8.1fs] %-9s %s", ev.t, ev.kind, ev.text)


async def _run(config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimStation(config) as sim:
        sim.add_listener(_log_event)
        c = config
        log.info(
            "swap-sim up: Modbus %s:%d, CAN %s/%s, speed %g, %d slots, vehicles %s",
            c.modbus.host, sim.modbus_port, c.can.interface, c.can.channel, c.speed,
            c.station.slots, c.vehicles or "unlimited",
        )
        await stop.wait()
        log.info("stopping: %d visits, %d commands", len(sim.model.history),
                 len(sim.command_log))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_sim_config(args.config) if args.config else SimConfig()
        config = with_overrides(config, speed=args.speed, vehicles=args.vehicles)
    except SimConfigError as exc:
        print(f"swap-sim: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(config))
    except OSError as exc:  # port in use, CAN interface missing
        print(f"swap-sim: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
