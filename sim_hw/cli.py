"""`swap-sim`: run the simulated station, or act on a running one through its control socket.

    swap-sim [--config FILE] [--speed X] [--vehicles N] [--socket PATH]   run the simulator
             [--plc modbus|opcua] [--opcua-port N]
    swap-sim fault list [--json]                    every fault, active or not
    swap-sim fault set NAME [--value V] [--target T]
    swap-sim fault clear NAME                       (NAME "all" clears every fault)
    swap-sim observer [--json] [--clear]            safety invariant violations so far
    swap-sim manual-home                            the technician's homing after an abort
    swap-sim vin [--on|--off] [--source-address A] [--set VIN] [--json]
                                                    the cars' VIN on CAN (a J1939 BAM)

The subcommands take `--socket PATH` (default: `sim.control_socket` of `--config FILE` if
given, else /tmp/swap-sim.sock) and exit non-zero with the reason when the simulator
refuses the request or is not running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim_hw.config import SimConfig
    from sim_hw.mechanics import SimEvent

log = logging.getLogger("swap-sim")

DEFAULT_SOCKET = "/tmp/swap-sim.sock"
EXIT_REFUSED = 1  # the simulator said no, or is not there
EXIT_USAGE = 2  # bad configuration or arguments


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swap-sim",
        description="Simulated battery-swap station: the PLC (Modbus TCP or OPC UA) + pack "
                    "BMS on CAN.",
    )
    p.add_argument("--config", help="TOML file with a [sim] table (defaults if omitted)")
    p.add_argument("--speed", type=float, help="override sim.speed (time factor)")
    p.add_argument("--vehicles", type=int, help="override sim.vehicles (0 = unlimited)")
    p.add_argument("--socket", help="override sim.control_socket (serve the control API here)")
    p.add_argument("--plc", choices=("modbus", "opcua"),
                   help="override sim.plc_protocol: the PLC speaks Modbus TCP or OPC UA")
    p.add_argument("--opcua-port", type=int, metavar="N",
                   help="override sim.opcua.port (the OPC UA endpoint's port; 0: any free)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")

    # Options repeated on the subcommands; SUPPRESS keeps a value given before the
    # subcommand (`swap-sim --config F fault list`) from being reset by the subparser.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help=f"control socket of the running simulator (default: "
                             f"control_socket from --config, else {DEFAULT_SOCKET})")
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="read control_socket from this simulator config")
    sub = p.add_subparsers(dest="command", metavar="{fault,observer,manual-home,vin}")
    fault = sub.add_parser("fault", help="list, set or clear injected faults")
    fsub = fault.add_subparsers(dest="action", required=True, metavar="{list,set,clear}")
    fl = fsub.add_parser("list", parents=[common], help="every fault and whether it is set")
    fl.add_argument("--json", action="store_true", help="print the list as JSON")
    fs = fsub.add_parser("set", parents=[common], help="set (or re-aim) a fault")
    fs.add_argument("name")
    fs.add_argument("--value", help="the fault's value (see `fault list` for its unit)")
    fs.add_argument("--target", help="bolt index, slot number, vehicle, shuttle, stacker")
    fc = fsub.add_parser("clear", parents=[common], help='clear a fault ("all": every fault)')
    fc.add_argument("name")
    ob = sub.add_parser("observer", parents=[common],
                        help="the safety invariant violations recorded so far")
    ob.add_argument("--json", action="store_true", help="print the violations as JSON")
    ob.add_argument("--clear", action="store_true", help="then forget them")
    sub.add_parser("manual-home", parents=[common],
                   help="the technician's hand pendant: bring the machine home after an abort")
    vin = sub.add_parser("vin", parents=[common],
                         help="the cars' VIN on CAN (Vehicle Identification in a J1939 BAM)")
    onoff = vin.add_mutually_exclusive_group()
    onoff.add_argument("--on", dest="send", action="store_const", const=True,
                       help="the cars send their VIN (the default)")
    onoff.add_argument("--off", dest="send", action="store_const", const=False,
                       help="the cars send no VIN")
    vin.add_argument("--source-address", type=_address,
                     help='send it from this address (e.g. 0x80; "bay": 0xF4 again)')
    vin.add_argument("--set", dest="vin", help="the VIN of the car on the platform")
    vin.add_argument("--json", action="store_true", help="print the state as JSON")
    return p


_BAY = -1  # --source-address bay


def _address(text: str) -> int:
    if text.strip().lower() == "bay":
        return _BAY
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is no address (0..253, or bay)") from None
    if not 0 <= value <= 0xFD:
        raise argparse.ArgumentTypeError(f"{text!r}: an address is 0..253 (0x00..0xFD)")
    return value


# ------------------------------------------------------------------ run the simulator
def _log_event(ev: SimEvent) -> None:
    level = logging.WARNING if ev.kind == "violation" else logging.INFO
    log.log(level, "[t=%8.1fs] %-9s %s", ev.t, ev.kind, ev.text)


async def _run(config: SimConfig) -> None:
    from sim_hw.station_sim import SimStation

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimStation(config) as sim:
        sim.add_listener(_log_event)
        c = config
        log.info(
            "swap-sim up: PLC %s, CAN %s, speed %g, %d slots, vehicles %s, control %s",
            _plc_banner(sim), ", ".join(
                f"{b.name} {b.interface}/{b.channel}"
                + (f" port {b.udp_port}" if b.interface == "udp_multicast" and b.udp_port
                   else "") for b in c.can.bus_list()), c.speed,
            c.station.slots, c.vehicles or "unlimited", c.control_socket or "off",
        )
        board = await _start_relay(sim, config)
        try:
            await stop.wait()
        finally:
            if board is not None:
                await board.stop()
        log.info("stopping: %d visits, %d commands, %d safety violations",
                 len(sim.model.history), len(sim.command_log), len(sim.observer.violations))


async def _start_relay(sim: Any, config: SimConfig) -> Any:
    """`[sim.relay]`: the simulated fault relay module, its coils wired to sim's faults."""
    if config.relay is None:
        return None
    from sim_hw.relay_board import RelayBoard, SimFaultWiring, Wired

    r = config.relay
    wiring = SimFaultWiring(sim.faults, {a: Wired(c.fault, c.target, c.value)
                                         for a, c in r.wiring().items()})
    board = RelayBoard(coils=r.count, on_coil=wiring, host=r.host, port=r.port,
                       device_id=r.device_id)
    await board.start()
    log.info("relay board: Modbus TCP %s:%d device %d, coils %s", r.host, board.port,
             r.device_id, ", ".join(f"{a}={w.fault}" for a, w in sorted(wiring.wiring.items()))
             or "none wired")
    return board


def _plc_banner(sim: Any) -> str:
    """Where the PLC is: Modbus host:port, or the OPC UA endpoint, its security and the
    server certificate a client has to trust."""
    c = sim.config
    if sim.plc_protocol != "opcua":
        return f"Modbus TCP {c.modbus.host}:{sim.plc_port}"
    o = c.opcua
    users = f"users {', '.join(sorted(o.users))}" if o.users else "anonymous"
    clients = "any client certificate" if o.trust_any_client else \
        f"client certificates in {sim.plc.pki_dir / 'trusted' / 'certs'}"
    return (f"OPC UA {sim.opcua_endpoint} (policies {', '.join(o.policies)}; {users}; "
            f"{clients}; server certificate {sim.plc.server_certificate_path})")


def _serve(args: argparse.Namespace) -> int:
    from sim_hw.config import SimConfig, SimConfigError, load_sim_config, with_overrides

    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # asyncua logs every request at INFO (a publish every few ms): its warnings only,
    # unless asked for DEBUG
    logging.getLogger("asyncua").setLevel(level if level <= logging.DEBUG else logging.WARNING)
    try:
        config = load_sim_config(args.config) if args.config else SimConfig()
        opcua = None
        if args.opcua_port is not None:
            opcua = {**config.opcua.model_dump(), "port": args.opcua_port}
        config = with_overrides(config, speed=args.speed, vehicles=args.vehicles,
                                control_socket=args.socket, plc_protocol=args.plc,
                                opcua=opcua)
    except SimConfigError as exc:
        print(f"swap-sim: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from drivers.plc.nodemap import NodeMapError

    try:
        asyncio.run(_run(config))
    except NodeMapError as exc:  # sim.opcua.node_map
        print(f"swap-sim: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # port in use, CAN interface missing, control socket taken
        print(f"swap-sim: cannot start: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


# ------------------------------------------------------- act on a running simulator
class Refused(Exception):
    """The simulator refused the request or could not be reached; the text says why."""


def _socket_path(args: argparse.Namespace) -> str:
    path = getattr(args, "socket", None)
    if path:
        return str(path)
    if args.config:
        from sim_hw.config import load_sim_config

        return load_sim_config(args.config).control_socket or DEFAULT_SOCKET
    return DEFAULT_SOCKET


def call(path: str, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the simulator at `path`; its answer, or Refused."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(payload).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except FileNotFoundError:
        raise Refused(f"no simulator running: {path} does not exist") from None
    except ConnectionRefusedError:
        raise Refused(f"no simulator running: nothing listens on {path}") from None
    except OSError as exc:
        raise Refused(f"cannot reach the simulator at {path}: {exc}") from None
    try:
        answer = json.loads(buf)
    except ValueError:
        raise Refused(f"no valid answer from {path}") from None
    if not isinstance(answer, dict):
        raise Refused(f"no valid answer from {path}")
    if not answer.get("ok"):
        raise Refused(str(answer.get("error") or "refused"))
    return answer


def _fmt_value(v: object, unit: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:g}"
    return f"{v} {unit}" if unit else str(v)


def _print_faults(faults: list[dict[str, Any]]) -> None:
    print(f"{'NAME':<20} {'ACTIVE':<6} {'VALUE':<22} {'TARGET':<9} DESCRIPTION")
    for f in faults:
        if f["active"]:
            value = _fmt_value(f["value"], f["unit"])
            target = "-" if f["target"] is None else str(f["target"])
            if f.get("pack_serial") is not None:
                target += f" (pack {f['pack_serial']})"
        else:
            value = "-" if f["default_value"] is None else \
                f"({_fmt_value(f['default_value'], f['unit'])})"
            target = "-" if f["default_target"] is None else f"({f['default_target']})"
        print(f"{f['name']:<20} {'yes' if f['active'] else '-':<6} {value:<22} {target:<9} "
              f"{f['description']}")


def _print_violations(violations: list[dict[str, Any]]) -> None:
    if not violations:
        print("no safety invariant violations")
        return
    for v in violations:
        print(f"t={v['t']:9.2f}s  {v['invariant']}: {v['text']}")
        cmds = ", ".join(f"{c['seq']} {c['name']}" + (f" {c['param1']}" if c["param1"] else "")
                         for c in v["commands"])
        print(f"{'':13}after commands: {cmds or 'none'}")


def _client(args: argparse.Namespace) -> int:
    try:
        path = _socket_path(args)
    except ValueError as exc:  # SimConfigError
        print(f"swap-sim: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "manual-home":
            done = call(path, {"op": "manual_home"})["done"]
            print("homed: " + ", ".join(done) if done else "already home")
            return 0
        if args.command == "vin":
            payload: dict[str, Any] = {"op": "vehicle_vin"}
            if args.send is not None:
                payload["send"] = args.send
            if args.source_address is not None:
                payload["source_address"] = None if args.source_address == _BAY \
                    else args.source_address
            if args.vin is not None:
                payload["vin"] = args.vin
            state = call(path, payload)["vin"]
            if args.json:
                print(json.dumps(state, indent=2))
            else:
                car = (f"car {state['vehicle_token']} VIN {state['vehicle_vin']}"
                       if state["vehicle_token"] is not None else "no car on the platform")
                print(f"VIN on CAN {'on' if state['send'] else 'off'}, from "
                      f"{state['source_address']:#04x}; {car}"
                      f"{', sending' if state['sending_now'] else ''}; "
                      f"{state['bams_sent']} BAMs sent, packets {state['gap_ms']:g} ms apart, "
                      f"every {state['period_s']:g} s")
            return 0
        if args.command == "observer":
            answer = call(path, {"op": "observer"})
            violations = answer["violations"]
            if args.clear:
                call(path, {"op": "observer_clear"})
            if args.json:
                print(json.dumps(violations, indent=2))
            else:
                _print_violations(violations)
            return 0
        if args.action == "list":
            faults = call(path, {"op": "fault_list"})["faults"]
            if args.json:
                print(json.dumps(faults, indent=2))
            else:
                _print_faults(faults)
        elif args.action == "set":
            f = call(path, {"op": "fault_set", "name": args.name, "value": args.value,
                            "target": args.target})["fault"]
            parts = [f"fault {f['name']} set"]
            if f["value"] is not None:
                parts.append(f"value {_fmt_value(f['value'], f['unit'])}")
            if f["target"] is not None:
                parts.append(f"target {f['target']}")
            if f.get("pack_serial") is not None:
                parts.append(f"pack {f['pack_serial']}")
            print(", ".join(parts))
        elif args.name == "all":
            cleared = call(path, {"op": "fault_clear_all"})["cleared"]
            print(f"cleared {', '.join(cleared) if cleared else 'nothing (no fault was set)'}")
        else:
            f = call(path, {"op": "fault_clear", "name": args.name})["fault"]
            print(f"fault {f['name']} cleared" if f["was_active"]
                  else f"fault {f['name']} was not set")
    except Refused as exc:
        print(f"swap-sim: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        return _serve(args)
    try:
        return _client(args)
    except BrokenPipeError:  # `swap-sim fault list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
