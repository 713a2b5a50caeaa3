"""The station mechanics model on a fake clock: commands, interlocks, vehicles, CAN presence."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drivers.bms.protocol import VEHICLE_PACK_SA, rack_sa
from drivers.plc.regmap import load_register_map
from sim_hw.config import RackPackConfig, SimConfig, StationConfig
from sim_hw.mechanics import (
    COMMANDS,
    ERR_BAD_PARAM,
    ERR_REFUSED,
    ERR_STOPPED,
    ERR_UNKNOWN,
    STATUS_BUSY,
    STATUS_DONE,
    STATUS_ERROR,
    CommandRecord,
    StationModel,
)
from sim_hw.packs import CMD_CHARGE_ENABLE, CMD_ISOLATE, CMD_KEEP

DT = 0.1
CODE = {name: code for code, name in COMMANDS.items()}
FREE_SLOT = 13  # the generated rack leaves the last slot free


class Controller:
    """Stands in for swapd on a fake clock: a heartbeat every step, one command at a time."""

    def __init__(self, model: StationModel) -> None:
        self.m = model
        self.t = 0.0
        self.hb = 0
        self.seq = 0
        self.beating = True
        # like the link on connect: the whole output block, cmd_seq 0 (nothing to run)
        self.m.set_outputs({"cmd_seq": 0, "cmd_code": 0, "stop_request": 0}, self.t)

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.t = round(self.t + DT, 6)
            if self.beating:
                self.hb += 1
                self.m.set_outputs({"ctrl_heartbeat": self.hb}, self.t)
            else:
                self.m.advance(self.t)

    def until(self, cond: Callable[[], bool], limit_s: float = 400.0) -> None:
        end = self.t + limit_s
        while not cond():
            assert self.t < end, "condition not reached"
            self.step()

    def send(self, name: str, p1: int = 0, code: int | None = None, stop: int = 0) -> CommandRecord:
        self.seq += 1
        self.hb += 1
        self.m.set_outputs(
            {
                "ctrl_heartbeat": self.hb,
                "cmd_code": CODE[name] if code is None else code,
                "cmd_param1": p1,
                "cmd_param2": 0,
                "cmd_seq": self.seq,
                "stop_request": stop,
            },
            self.t,
        )
        return self.m.command_log[-1]

    def run(self, name: str, p1: int = 0) -> CommandRecord:
        rec = self.send(name, p1)
        self.until(lambda: rec.status != STATUS_BUSY)
        return rec

    def ok(self, name: str, p1: int = 0) -> CommandRecord:
        rec = self.run(name, p1)
        assert (rec.status, rec.error_code, rec.reason) == (STATUS_DONE, 0, ""), rec
        return rec

    def refused(
        self, name: str, p1: int = 0, err: int = ERR_REFUSED, stop: int = 0
    ) -> CommandRecord:
        rec = self.send(name, p1, stop=stop)
        assert rec.status == STATUS_ERROR and rec.error_code == err, rec
        inp = self.m.inputs()
        assert (inp["cmd_ack_seq"], inp["cmd_status"], inp["cmd_error_code"]) == (
            self.seq, STATUS_ERROR, err,
        )
        return rec

    def arrive(self) -> None:
        self.until(lambda: self.m.vehicle is not None and self.m.vehicle.ready)


def station(**kw: int | float) -> tuple[StationModel, Controller]:
    m = StationModel(SimConfig.model_validate(kw))
    return m, Controller(m)


def swap_to(c: Controller, stage: str) -> None:
    """Run the swap sequence up to and including `stage`."""
    plan = [("POSITION", 0), ("LIFT", 0), ("UNLOCK", 0), ("REMOVE", 0), ("STORE", FREE_SLOT),
            ("FETCH", 1), ("INSTALL", 0), ("LOCK", 0), ("LOWER", 0), ("RELEASE", 0)]
    c.arrive()
    for name, p1 in plan:
        c.ok(name, p1)
        if name == stage:
            return


def test_command_table_matches_the_register_map() -> None:
    rmap = load_register_map()
    assert {c.code: c.name for c in rmap.commands.values()} == COMMANDS
    assert set(StationModel(SimConfig()).inputs()) | {"plc_heartbeat"} == {
        s.name for s in rmap.inputs()
    }


def test_vehicle_arrives_after_1s_and_is_ready_after_identify() -> None:
    m, c = station()
    c.until(lambda: m.vehicle is not None)
    assert m.vehicle is not None and m.vehicle.arrived_at == 1.0
    inp = m.inputs()
    assert inp["vehicle_present"] and not inp["vehicle_ready"]
    assert inp["vehicle_token"] == 1 and inp["vehicle_pack_present"]
    for off in (inp["position_offset_x"], inp["position_offset_y"]):
        assert 20.0 <= abs(off) <= 80.0
    assert m.vehicle.family in (20, 25) and m.vehicle.pack is not None
    assert 5.0 <= m.vehicle.pack.soc_pct <= 30.0
    assert m.vehicle.pack.serial not in set(m.truth()["rack"].values())
    c.until(lambda: m.inputs()["vehicle_ready"])
    assert c.t == pytest.approx(1.0 + 8.0, abs=DT + 1e-6)


def test_full_swap_moves_the_packs_and_records_the_visit() -> None:
    m, c = station(vehicles=1)
    c.arrive()
    assert m.vehicle is not None and m.vehicle.pack is not None
    old = m.vehicle.pack.serial
    new = m.truth()["rack"][1]

    c.ok("POSITION")
    inp = m.inputs()
    assert abs(inp["position_offset_x"]) <= 2.0 and abs(inp["position_offset_y"]) <= 2.0
    c.ok("LIFT")
    assert m.inputs()["lift_height"] == 500
    c.ok("UNLOCK")
    inp = m.inputs()
    assert inp["bolts_tight"] == 0 and inp["shuttle_position"] == 3000
    assert all(85.0 <= t <= 95.0 for t in inp["bolt_torque"])
    assert all(700.0 <= a <= 740.0 for a in inp["bolt_angle"])
    c.ok("REMOVE")
    assert m.truth()["shuttle"] == old and m.truth()["vehicle_bay"] is None
    assert m.inputs()["shuttle_position"] == 0
    c.ok("STORE", FREE_SLOT)
    assert m.truth()["rack"][FREE_SLOT] == old and m.truth()["shuttle"] is None
    assert m.inputs()["stacker_slot"] == 0
    c.ok("FETCH", 1)
    assert m.truth()["shuttle"] == new and m.truth()["rack"][1] is None
    c.ok("INSTALL")
    assert m.truth()["vehicle_bay"] == new and m.inputs()["shuttle_position"] == 3000
    c.ok("LOCK")
    inp = m.inputs()
    assert inp["bolts_tight"] == 10 and inp["shuttle_position"] == 0
    assert all(117.0 <= t <= 123.0 for t in inp["bolt_torque"])
    assert all(86.0 <= a <= 94.0 for a in inp["bolt_angle"])
    c.ok("LOWER")
    assert m.inputs()["lift_height"] == 0
    rel = c.ok("RELEASE")
    assert not m.inputs()["vehicle_present"] and m.inputs()["vehicle_token"] == 0

    (visit,) = m.truth()["history"]
    assert visit["token"] == 1 and visit["left_at"] == rel.ended_sim
    assert visit["pack_out"]["serial"] == old and visit["pack_in"]["serial"] == new
    assert (visit["stored_slot"], visit["fetched_slot"]) == (FREE_SLOT, 1)
    assert set(visit["pack_in"]) == {"serial", "chemistry", "soc", "family"}
    # one vehicle only: nobody else comes
    c.step(int(60 / DT))
    assert m.vehicle is None


def test_commands_take_their_configured_time_and_are_logged() -> None:
    m, c = station()
    c.arrive()
    rec = c.send("POSITION")
    assert m.inputs()["cmd_status"] == STATUS_BUSY and m.inputs()["cmd_ack_seq"] == rec.seq
    c.step(int(7.5 / DT))
    x = m.inputs()["position_offset_x"]
    assert 1.0 < abs(x) < 79.0  # interpolated half-way
    c.until(lambda: rec.status != STATUS_BUSY)
    assert rec.ended_sim is not None and rec.ended_real is not None
    assert rec.ended_sim - rec.taken_sim == pytest.approx(15.0)
    assert rec.ended_real >= rec.taken_real
    assert m.command_log == [rec]


def test_lift_rises_linearly() -> None:
    m, c = station()
    swap_to(c, "POSITION")
    c.send("LIFT")
    c.step(int(5.0 / DT))
    assert m.inputs()["lift_height"] == pytest.approx(250, abs=1)


@pytest.mark.parametrize(
    ("stage", "command", "p1"),
    [
        ("", "LIFT", 0),  # vehicle not positioned (offsets 20-80 mm)
        ("", "UNLOCK", 0),  # not lifted
        ("", "REMOVE", 0),  # bolts tight, shuttle not docked
        ("", "STORE", FREE_SLOT),  # nothing on the shuttle
        ("", "INSTALL", 0),  # not lifted, bay full
        ("POSITION", "UNLOCK", 0),  # not lifted
        ("LIFT", "POSITION", 0),  # lift not at 0
        ("LIFT", "REMOVE", 0),  # bolts still tight
        ("LIFT", "RELEASE", 0),  # lift up
        ("UNLOCK", "LOWER", 0),  # bolts loose
        ("REMOVE", "STORE", 1),  # slot 1 occupied
        ("REMOVE", "FETCH", 1),  # shuttle not empty
        ("REMOVE", "UNLOCK", 0),  # shuttle not empty
        ("REMOVE", "LOCK", 0),  # nothing in the bay
        ("STORE", "INSTALL", 0),  # nothing on the shuttle
        ("FETCH", "FETCH", 2),  # shuttle not empty
        ("INSTALL", "INSTALL", 0),  # bay not empty
        ("INSTALL", "LOWER", 0),  # bolts loose, shuttle under the car
        ("LOCK", "REMOVE", 0),  # bolts tight
        ("LOCK", "RELEASE", 0),  # lift up
    ],
)
def test_interlock_refusals(stage: str, command: str, p1: int) -> None:
    m, c = station()
    if stage:
        swap_to(c, stage)
    else:
        c.arrive()
    before = m.truth()
    c.refused(command, p1)
    c.step(10)
    after = m.truth()
    for key in ("rack", "vehicle_bay", "shuttle", "lift_mm", "shuttle_mm", "bolts_tight"):
        assert before[key] == after[key], key


def test_position_refused_before_the_car_is_ready_and_without_a_car() -> None:
    m, c = station()
    c.refused("POSITION")  # no vehicle yet
    c.until(lambda: m.vehicle is not None)
    c.refused("POSITION")  # not ready (HV still on)


def test_fetch_refused_for_an_empty_slot_not_for_an_isolated_pack() -> None:
    """Whether a pack may be used is the controller's judgement (the contract: the PLC
    cannot know); the PLC refuses only what it sees, an empty slot."""
    m, c = station()
    swap_to(c, "STORE")
    c.ok("FETCH", 2)  # works; put it back and try the refusals
    c.ok("STORE", 2)
    pack = m.rack[3]
    assert pack is not None
    pack.apply_control(CMD_ISOLATE, 0, 0, 1, c.t)
    m.rack[4] = None
    c.refused("FETCH", 4)
    c.ok("FETCH", 3)


@pytest.mark.parametrize("slot", [0, 14, 999])
def test_bad_slot_is_error_5(slot: int) -> None:
    _, c = station()
    swap_to(c, "REMOVE")
    c.refused("STORE", slot, err=ERR_BAD_PARAM)
    c.refused("FETCH", slot, err=ERR_BAD_PARAM)


def test_unknown_command_is_error_1_and_none_is_done() -> None:
    _, c = station()
    rec = c.send("NONE", code=42)
    assert (rec.status, rec.error_code) == (STATUS_ERROR, ERR_UNKNOWN)
    rec = c.send("NONE")
    assert rec.status == STATUS_DONE


def test_same_seq_is_not_a_new_command() -> None:
    m, c = station()
    c.arrive()
    rec = c.run("POSITION")
    m.set_outputs({"ctrl_heartbeat": 9999, "cmd_code": CODE["LIFT"], "cmd_seq": rec.seq}, c.t)
    assert m.command_log == [rec]
    m.set_outputs({"cmd_code": CODE["LIFT"], "cmd_seq": 0}, c.t)  # 0 never starts anything
    assert m.command_log == [rec]


def test_stop_request_ends_a_running_command_with_error_6_where_it_stands() -> None:
    m, c = station()
    swap_to(c, "POSITION")
    rec = c.send("LIFT")
    c.step(int(4.0 / DT))
    m.set_outputs({"stop_request": 2}, c.t)
    assert (rec.status, rec.error_code) == (STATUS_ERROR, ERR_STOPPED)
    assert m.inputs()["cmd_error_code"] == ERR_STOPPED
    height = m.lift_mm
    assert 100 < height < 500
    c.step(30)
    assert m.lift_mm == height
    c.refused("LIFT", stop=2)  # nothing is taken while the stop request stands
    m.set_outputs({"stop_request": 0}, c.t)
    c.ok("LIFT")  # resumes from where it stopped
    assert m.inputs()["lift_height"] == 500


def test_stale_heartbeat_refuses_commands_and_stops_motion() -> None:
    m, c = station()
    rec = c.send("NONE")
    assert rec.status == STATUS_DONE
    c.arrive()
    c.beating = False
    c.step(int(1.5 / DT))  # > ctrl_heartbeat_timeout_s (1 s)
    # a command written without a fresh heartbeat value is refused
    m.set_outputs({"cmd_seq": 500, "cmd_code": CODE["POSITION"], "ctrl_heartbeat": c.hb}, c.t)
    assert (m.command_log[-1].status, m.command_log[-1].error_code) == (STATUS_ERROR, 2)
    c.beating = True
    rec = c.send("POSITION")
    c.step(int(5.0 / DT))
    c.beating = False
    c.until(lambda: rec.status != STATUS_BUSY, limit_s=3.0)
    assert rec.error_code == ERR_STOPPED and "heartbeat" in rec.reason
    x = m.inputs()["position_offset_x"]
    c.step(20)
    assert m.inputs()["position_offset_x"] == x and abs(x) > 2.0


def test_no_heartbeat_ever_means_stale() -> None:
    m = StationModel(SimConfig())
    m.set_outputs({"cmd_seq": 0, "cmd_code": 0}, 0.4)
    m.set_outputs({"cmd_seq": 1, "cmd_code": 0}, 0.5)
    assert m.command_log[-1].error_code == ERR_REFUSED


def test_safety_chain_open_stops_and_refuses() -> None:
    m, c = station()
    c.arrive()
    rec = c.send("POSITION")
    c.step(5)
    m.light_curtain_clear = False
    c.step()
    assert rec.error_code == ERR_STOPPED and not m.inputs()["light_curtain_clear"]
    c.refused("POSITION")
    m.light_curtain_clear = True
    c.ok("POSITION")


def test_a_new_seq_while_busy_is_refused_and_stops_the_running_command() -> None:
    m, c = station()
    c.arrive()
    first = c.send("POSITION")
    c.step(5)
    second = c.send("POSITION")
    assert first.error_code == ERR_STOPPED and second.error_code == ERR_REFUSED
    assert m.inputs()["cmd_ack_seq"] == second.seq


def test_can_presence_follows_the_pack() -> None:
    m, c = station(vehicles=1)
    rack_addrs = {rack_sa(s) for s in range(1, FREE_SLOT)}
    assert set(m.can_packs()) == rack_addrs  # no car yet
    c.arrive()
    assert set(m.can_packs()) == rack_addrs | {VEHICLE_PACK_SA}
    swap_to(c, "UNLOCK")
    assert VEHICLE_PACK_SA in m.can_packs()  # still in the bay, bolts loose
    c.send("REMOVE")
    c.step()
    assert VEHICLE_PACK_SA not in m.can_packs()  # lowered away: quiet
    c.until(lambda: m.command_log[-1].status == STATUS_DONE)
    assert set(m.can_packs()) == rack_addrs  # on the shuttle: silent
    c.ok("STORE", FREE_SLOT)
    assert rack_sa(FREE_SLOT) in m.can_packs()
    c.ok("FETCH", 1)
    assert rack_sa(1) not in m.can_packs()
    c.ok("INSTALL")
    assert VEHICLE_PACK_SA not in m.can_packs()  # car electronics still asleep
    lock = c.ok("LOCK")
    assert VEHICLE_PACK_SA not in m.can_packs()
    c.until(lambda: VEHICLE_PACK_SA in m.can_packs())
    assert lock.ended_sim is not None
    assert c.t - lock.ended_sim == pytest.approx(7.0, abs=DT + 1e-6)  # timing.check
    assert m.can_packs()[VEHICLE_PACK_SA].serial == m.truth()["vehicle_bay"]
    c.ok("LOWER")
    c.ok("RELEASE")
    assert VEHICLE_PACK_SA not in m.can_packs()


def test_a_rack_pack_charges_while_packcontrol_keeps_coming() -> None:
    m, c = station()
    pack = m.rack[2]
    assert pack is not None
    pack.soc_pct = 50.0
    pack.apply_control(CMD_CHARGE_ENABLE, 500.0, 800.0, 1, c.t)
    for i in range(60):  # a minute, PackControl every second (keep: the limits in force)
        c.step(10)
        pack.apply_control(CMD_KEEP, 500.0, 800.0, 2 + i, c.t)
    assert pack.state == "charging" and pack.current_a > 0
    assert pack.soc_pct == pytest.approx(51.5, abs=0.1)
    c.step(40)  # 4 s without PackControl
    assert pack.state == "idle" and pack.current_a == 0.0


def test_next_vehicle_comes_arrival_gap_after_departure_with_a_new_token() -> None:
    m, c = station(vehicles=2, arrival_gap_s=5.0)
    swap_to(c, "RELEASE")
    left = m.history[0]["left_at"]
    c.until(lambda: m.vehicle is not None)
    assert m.vehicle is not None
    assert m.vehicle.arrived_at == pytest.approx(left + 5.0)
    assert m.vehicle.token == 2
    assert m.vehicle.family != m.history[0]["family"]  # alternating over the rack's families


def test_explicit_rack_and_small_station() -> None:
    cfg = SimConfig(
        station=StationConfig(slots=2, bolt_count=4),
        rack_pack=[RackPackConfig(slot=1, serial=77, family=25, chemistry="lfp", soc=99)],
    )
    m = StationModel(cfg)
    assert m.truth()["rack"] == {1: 77, 2: None}
    inp = m.inputs()
    assert inp["rack_slot_count"] == 2 and inp["bolt_count"] == 4
    assert inp["rack_slot_occupied"] == [True, False]


def test_first_cmd_seq_after_plc_start_is_taken_as_already_seen() -> None:
    """A controller re-sending its last command block after a PLC restart must not re-run it."""
    m = StationModel(SimConfig())
    m.set_outputs({"ctrl_heartbeat": 1, "cmd_code": CODE["LIFT"], "cmd_seq": 41}, 0.0)
    assert m.command_log == []
    m.set_outputs({"ctrl_heartbeat": 2, "cmd_code": CODE["LIFT"], "cmd_seq": 42}, 0.1)
    assert len(m.command_log) == 1 and m.command_log[0].seq == 42
