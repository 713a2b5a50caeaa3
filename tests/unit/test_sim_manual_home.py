"""The technician's manual homing on the simulator (hand pendant, outside swapd): after an
abort anywhere in a swap it brings the machine home as the controller judges it
(station/home.py), and every pack stays accounted for in the ground truth."""

from __future__ import annotations

from collections import Counter

import pytest

from sim_hw.control import handle
from sim_hw.mechanics import StationModel
from station.config import SequenceSection
from station.home import away_from_home
from tests.unit.test_sim_mechanics import station, swap_to

STOP_CAT1 = 1


def serials(m: StationModel) -> Counter[int]:
    packs = [*m.rack.values(), m.shuttle_pack, m.stacker_pack,
             m.vehicle.pack if m.vehicle else None]
    return Counter(p.serial for p in packs if p is not None)


@pytest.mark.parametrize("stage", ["LIFT", "UNLOCK", "REMOVE", "STORE", "FETCH", "INSTALL",
                                   "LOCK"])
def test_after_an_abort_at_any_stage_homing_brings_the_machine_home(stage: str) -> None:
    m, c = station()
    swap_to(c, stage)
    c.m.set_outputs({"stop_request": STOP_CAT1}, c.t)  # the controller aborted here
    before = serials(m)
    assert away_from_home(m.inputs(), SequenceSection()) is not None
    done = m.manual_home()["done"]
    assert done
    inputs = m.inputs()
    assert away_from_home(inputs, SequenceSection()) is None, inputs
    assert serials(m) == before  # nothing lost, nothing duplicated
    assert m.vehicle is not None and m.vehicle.pack is not None  # the car keeps a pack
    assert inputs["bolts_tight"] == inputs["bolt_count"]


def test_a_pack_stopped_on_the_stacker_goes_back_to_its_slot() -> None:
    m, c = station()
    swap_to(c, "STORE")
    c.send("FETCH", 1)
    c.until(lambda: m.stacker_pack is not None)
    c.m.set_outputs({"stop_request": STOP_CAT1}, c.t)
    c.step()
    pack = m.stacker_pack
    assert pack is not None and m.rack[1] is None
    done = m.manual_home()["done"]
    assert m.rack[1] is pack and m.stacker_pack is None, done
    assert m.stacker_slot == 0


def test_homing_is_refused_while_the_plc_runs_a_command() -> None:
    m, c = station()
    c.arrive()
    c.send("POSITION")
    with pytest.raises(ValueError, match="running POSITION"):
        m.manual_home()


def test_the_control_socket_offers_it() -> None:
    class Sim:
        def __init__(self, model: StationModel) -> None:
            self.model = model

        def manual_home(self) -> dict[str, object]:
            return self.model.manual_home()

    m, c = station()
    swap_to(c, "UNLOCK")
    c.m.set_outputs({"stop_request": STOP_CAT1}, c.t)
    answer = handle(Sim(m), {"op": "manual_home"})  # type: ignore[arg-type]
    assert answer["ok"] and "bolts tightened" in answer["done"], answer
    assert handle(Sim(m), {"op": "manual_home"}) == {"ok": True, "done": []}
