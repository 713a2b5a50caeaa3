"""Several CAN buses: the `[can]` / `[sim.can]` layout checks, the wrong-bus rejection and
the classification of SocketCAN error frames (issue 11, "Several buses", "Bus faults")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import can
import pytest

from drivers.bms.canbus import PackBus, classify_error_frame
from drivers.bms.protocol import MAX_RACK_SLOTS, STATION_SA, VEHICLE_PACK_SA, PackProtocol, rack_sa
from sim_hw.config import SimConfigError, parse_sim_config
from station import buslayout
from station.buslayout import addresses, check_layout, parse_location
from station.config import ConfigError, StationConfig, load_config
from station.rig import config_toml

PROTO = PackProtocol()
TWO_BUSES = """
[[can.buses]]
name = "bay"
interface = "socketcan"
channel = "can0"
locations = ["bay"]

[[can.buses]]
name = "rack"
interface = "socketcan"
channel = "can1"
locations = ["slot:1-6", "slot:7"]
"""


def _load(tmp_path: Path, text: str) -> StationConfig:
    f = tmp_path / "swapd.toml"
    f.write_text(text)
    return load_config(f)


def _refused(tmp_path: Path, text: str, *words: str) -> str:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    msg = str(exc.value)
    for w in words:
        assert w in msg, msg
    return msg


# ---- swapd's [can] -----------------------------------------------------------------------

def test_the_single_bus_shorthand_is_one_bus_serving_every_location(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[can]\ninterface = "socketcan"\nchannel = "vcan0"\n')
    (bus,) = cfg.can.bus_list()
    assert (bus.name, bus.interface, bus.channel, bus.bitrate) == \
        ("pack", "socketcan", "vcan0", 250_000)
    served = cfg.can.served_slots()["pack"]
    assert 0 in served and set(range(1, 97)) <= served
    default = StationConfig().can.bus_list()[0]
    assert (default.interface, default.channel) == ("virtual", "swapstation")


def test_a_list_of_buses_with_their_locations(tmp_path: Path) -> None:
    cfg = _load(tmp_path, TWO_BUSES)
    assert [b.name for b in cfg.can.bus_list()] == ["bay", "rack"]
    assert cfg.can.served_slots() == {"bay": frozenset({0}),
                                      "rack": frozenset(range(1, 8))}
    assert cfg.can.interface is None  # no shorthand when the buses are given


def test_the_buses_survive_a_toml_round_trip(tmp_path: Path) -> None:
    """The rig writes a swapd process's configuration: an array of tables must survive."""
    cfg = _load(tmp_path, TWO_BUSES)
    assert _load(tmp_path, config_toml(cfg)) == cfg


@pytest.mark.parametrize(("change", "words"), [
    # a gap: slot 5 on no bus
    (('"slot:1-6", "slot:7"', '"slot:1-4", "slot:6-7"'), ["no bus serves rack slot:5", "gap"]),
    # an overlap: slot 3 on both buses
    (('locations = ["bay"]', 'locations = ["bay", "slot:3"]'),
     ["rack slot 3", "'bay'", "'rack'", "exactly one bus"]),
    # the bay on no bus
    (('locations = ["bay"]', 'locations = ["slot:8"]'), ["no bus serves the bay"]),
    # two buses of one name
    (('name = "rack"', 'name = "bay"'), ["can.buses.1.name", "named twice"]),
    (('"slot:7"', '"slot:9-8"'), ["can.buses.1.locations", "slot:9-8"]),
    (('"slot:7"', '"rack7"'), ["can.buses.1.locations", "'rack7'"]),
    (('"slot:7"', '"slot:97"'), ["can.buses.1.locations", "slot:97"]),
    (('name = "rack"', 'name = "Rack 1"'), ["can.buses.1.name"]),
    # per-interface channel checks, as for the shorthand
    (('channel = "can1"', 'channel = "a-very-long-interface-name"'),
     ["can.buses.1.channel", "not a network interface name"]),
    (('interface = "socketcan"\nchannel = "can1"', 'interface = "udp_multicast"\nchannel = "can1"'),
     ["can.buses.1.channel", "multicast group"]),
    (('channel = "can1"', 'channel = "can0"'), ["can.buses", "same channel"]),
])
def test_a_bad_layout_is_refused_naming_the_bus_and_location(
        tmp_path: Path, change: tuple[str, str], words: list[str]) -> None:
    assert change[0] in TWO_BUSES
    _refused(tmp_path, TWO_BUSES.replace(change[0], change[1], 1), *words)


@pytest.mark.parametrize("key", ["interface = \"socketcan\"", "channel = \"can9\"",
                                 "bitrate = 500000", "udp_port = 4000"])
def test_both_forms_at_once_are_refused(tmp_path: Path, key: str) -> None:
    name = key.split(" ")[0]
    _refused(tmp_path, f"[can]\n{key}\n" + TWO_BUSES, f"can.{name}", "[[can.buses]]")


def test_the_layout_checker_itself() -> None:
    assert parse_location("bay") == [0] and parse_location("slot:3-5") == [3, 4, 5]
    assert check_layout([("a", ["bay", "slot:1-2"])], "x", slots=2) == {"a": frozenset({0, 1, 2})}
    with pytest.raises(ValueError, match="slot:3"):
        check_layout([("a", ["bay", "slot:1-2"])], "x", slots=3)
    with pytest.raises(ValueError, match="beyond"):
        check_layout([("a", ["bay", "slot:1-4"])], "x", slots=3)
    assert addresses([0, 1, 3]) == {VEHICLE_PACK_SA, rack_sa(1), rack_sa(3)}
    # the layout imports no driver (the core imports the configuration): the same bound
    assert buslayout.MAX_RACK_SLOTS == MAX_RACK_SLOTS


# ---- the simulator's [sim.can] ------------------------------------------------------------

def _sim(buses: list[dict[str, Any]], **can: Any) -> dict[str, Any]:
    return {"sim": {"station": {"slots": 4}, "can": {**can, "buses": buses}}}


SIM_BUSES = [{"name": "bay", "channel": "a", "locations": ["bay"]},
             {"name": "rack", "channel": "b", "locations": ["slot:1-4"]}]


def test_the_simulator_serves_the_same_layout() -> None:
    c = parse_sim_config(_sim(SIM_BUSES))
    assert c.served_slots() == {"bay": frozenset({0}), "rack": frozenset({1, 2, 3, 4})}
    assert [b.channel for b in c.can.bus_list()] == ["a", "b"]
    single = parse_sim_config({"sim": {}})
    assert [b.name for b in single.can.bus_list()] == ["pack"]


@pytest.mark.parametrize(("buses", "can", "words"), [
    ([SIM_BUSES[0], {**SIM_BUSES[1], "locations": ["slot:1-3"]}], {}, ["sim.can.buses",
                                                                       "slot:4"]),
    ([SIM_BUSES[0], {**SIM_BUSES[1], "locations": ["slot:1-5"]}], {}, ["beyond"]),
    ([SIM_BUSES[0], {**SIM_BUSES[1], "locations": ["bay", "slot:1-4"]}], {}, ["the bay"]),
    (SIM_BUSES, {"interface": "udp_multicast"}, ["interface", "buses are given"]),
])
def test_the_simulator_refuses_a_bad_layout(buses: list[dict[str, Any]],
                                            can: dict[str, object], words: list[str]) -> None:
    with pytest.raises(SimConfigError) as exc:
        parse_sim_config(_sim(buses, **can))
    for w in words:
        assert w in str(exc.value), exc.value


# ---- the wrong bus ------------------------------------------------------------------------

def _frame(name: str, values: dict[str, Any], sa: int) -> can.Message:
    can_id, data = PROTO.encode(name, values, sa)
    return can.Message(arbitration_id=can_id, data=data, is_extended_id=True)


STATUS = {"SOC": 81.5, "PackVoltage": 402.3, "PackCurrent": -12.5, "MinCellTemp": 21,
          "MaxCellTemp": 24}


def test_a_frame_from_a_location_another_bus_serves_is_rejected_as_wrong_bus() -> None:
    rack = addresses(range(1, 8))
    bus = PackBus("virtual", "x", PROTO, name="rack", accept_sources=rack,
                  known_sources=rack | addresses([0]))
    got: list[int] = []
    rejects: list[tuple[str, int]] = []
    bus.on_message = lambda d, t: got.append(d.source)
    bus.on_reject = lambda kind, i, data: rejects.append((kind, i & 0xFF))
    bus._handle(_frame("PackStatus", STATUS, rack_sa(2)), 1.0)
    bus._handle(_frame("PackStatus", STATUS, VEHICLE_PACK_SA), 1.0)  # the bay's: another bus
    bus._handle(_frame("PackStatus", STATUS, rack_sa(40)), 1.0)  # no bus serves it
    assert got == [rack_sa(2), rack_sa(40)]
    assert rejects == [("wrong_bus", VEHICLE_PACK_SA)]
    assert bus.stats["wrong_bus"] == 1 and bus.counters()["rejected"] == {"wrong_bus": 1}
    # one bus that serves every location rejects nothing as wrong_bus
    every = PackBus("virtual", "x", PROTO)
    every.on_message = lambda d, t: got.append(d.source)
    every._handle(_frame("PackStatus", STATUS, VEHICLE_PACK_SA), 1.0)
    assert every.stats["wrong_bus"] == 0 and got[-1] == VEHICLE_PACK_SA


# ---- error frames -------------------------------------------------------------------------

@pytest.mark.parametrize(("can_id", "ctrl", "classes", "state"), [
    (0x004, 0x04, ["crtl"], "warning"),  # CRTL, RX_WARNING
    (0x004, 0x08, ["crtl"], "warning"),  # TX_WARNING
    (0x004, 0x10, ["crtl"], "passive"),  # RX_PASSIVE
    (0x004, 0x20 | 0x08, ["crtl"], "passive"),  # TX_PASSIVE wins over a warning
    (0x004, 0x40, ["crtl"], "active"),  # back to error active
    (0x004, 0x01, ["crtl"], None),  # an RX overflow says nothing of the state
    (0x040, 0x00, ["busoff"], "bus_off"),
    (0x044, 0x20, ["crtl", "busoff"], "bus_off"),
    (0x100, 0x00, ["restarted"], "active"),
    (0x001, 0x00, ["tx_timeout"], None),
    (0x002, 0x00, ["lostarb"], None),
    (0x008, 0x00, ["prot"], None),
    (0x010, 0x00, ["trx"], None),
    (0x020, 0x00, ["ack"], None),
    (0x080, 0x00, ["buserror"], None),
    (0x088, 0x00, ["prot", "buserror"], None),
])
def test_error_frames_are_classified(can_id: int, ctrl: int, classes: list[str],
                                     state: str | None) -> None:
    assert classify_error_frame(can_id, bytes([0, ctrl, 0, 0, 0, 0, 0, 0])) == (classes, state)


def _error(can_id: int, ctrl: int = 0) -> can.Message:
    return can.Message(arbitration_id=can_id, data=bytes([0, ctrl, 0, 0, 0, 0, 0, 0]),
                       is_error_frame=True)


def test_error_frames_are_counted_and_move_the_bus_state() -> None:
    bus = PackBus("virtual", "x", PROTO, name="rack")
    changes: list[tuple[str, str]] = []
    bus.on_state = lambda state, detail: changes.append((state, detail))
    bus.state = "active"  # as if opened
    bus._handle(_error(0x008), 1.0)  # a protocol error: counted, no state
    bus._handle(_error(0x004, 0x08), 1.0)
    bus._handle(_error(0x004, 0x10), 1.0)
    bus._handle(_error(0x004, 0x10), 1.0)  # the same state again: no change
    bus._handle(_error(0x004, 0x40), 1.0)
    assert [s for s, _ in changes] == ["warning", "passive", "active"]
    assert "crtl" in changes[1][1]
    st = bus.stats
    assert (st["error_frames"], st["err_prot"], st["err_crtl"]) == (5, 1, 4)
    assert (st["error_warning"], st["error_passive"], st["bus_off"]) == (1, 1, 0)
    assert bus.counters()["errors"] == {"prot": 1, "crtl": 4}
    bus._handle(_error(0x040), 1.0)
    assert bus.state == "bus_off" and changes[-1][0] == "bus_off" and st["bus_off"] == 1
    assert st["bus_errors"] == 1  # the bus is failed: run() closes and reopens it
    bus._handle(_error(0x004, 0x10), 1.0)  # a down bus stays down until reopened
    assert bus.state == "bus_off"
    assert st["decoded"] == 0 and STATION_SA  # nothing else was taken from them


def test_the_commented_bus_examples_load_and_agree() -> None:
    """deploy/swapd.toml and deploy/swap-sim.toml show the buses form in comments:
    uncommented in place of the single-bus keys, both load, with the same layout."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[2]
    single = re.compile(r"^(interface|channel|bitrate|udp_port) = .*$", re.M)

    def uncomment(text: str, header: str) -> str:
        a = text.index(header)
        b = text.index("\n[", a + 1)
        body = single.sub("", text[a:b])
        m = body.index("# [[")  # the example: from its first bus on
        body = body[:m] + re.sub(r"^# (\[\[|name|interface|channel|udp_port|locations)",
                                 r"\1", body[m:], flags=re.M)
        return text[:a] + body + text[b:]

    swapd = uncomment((root / "deploy" / "swapd.toml").read_text(), "[can]")
    cfg = StationConfig.model_validate(tomllib.loads(swapd))
    sim = parse_sim_config(tomllib.loads(
        uncomment((root / "deploy" / "swap-sim.toml").read_text(), "[sim.can]")))
    assert cfg.can.served_slots() == sim.served_slots()
    assert [(b.name, b.interface, b.channel, b.udp_port) for b in cfg.can.bus_list()] == \
        [(b.name, b.interface, b.channel, b.udp_port) for b in sim.can.bus_list()]
    assert len(cfg.can.bus_list()) == 2


# ---- PackControl and Requests on the pack's bus ------------------------------------------

class Recording(PackBus):
    """A PackBus that records what it is asked to send (never opened)."""

    def __init__(self, name: str) -> None:
        super().__init__("virtual", name, PROTO, name=name)
        self.out: list[tuple[str, int | None]] = []

    def send(self, name: str, values: dict[str, Any], da: int | None = None) -> None:
        self.out.append((name, da))


def test_the_commander_sends_each_packs_frames_on_the_bus_serving_it() -> None:
    from drivers.bms.adapter import BmsAdapter
    from drivers.bms.commander import PackCommander
    from station.image import BAY, Location, PackData
    from station.pack_commands import PackCommand, PackCommandKind, PackRequest

    bay, rack = Recording("bay"), Recording("rack")
    routes = {VEHICLE_PACK_SA: bay, **{rack_sa(s): rack for s in range(1, 8)}}
    commander = PackCommander(bay, BmsAdapter(PROTO), clock=lambda: 1.0, routes=routes)
    commander.send(PackCommand(Location.rack(3), PackCommandKind.CHARGE_ENABLE, 10.0, 400.0))
    commander.send(PackCommand(BAY, PackCommandKind.ISOLATE, 0.0, 0.0))
    commander.request(PackRequest(Location.rack(7), (PackData.IDENTITY,)))
    commander.request(PackRequest(Location.rack(20), (PackData.IDENTITY,)))  # no bus's
    commander.request(PackRequest(None, (PackData.HEALTH,)))  # every pack: every bus
    assert rack.out == [("PackControl", rack_sa(3)), ("Request", rack_sa(7)),
                        ("Request", rack_sa(20)), ("Request", 0xFF)]
    assert bay.out == [("PackControl", VEHICLE_PACK_SA), ("Request", rack_sa(20)),
                       ("Request", 0xFF)]
    assert bay.on_nack is not None and rack.on_nack is not None  # NACKs heard on both
