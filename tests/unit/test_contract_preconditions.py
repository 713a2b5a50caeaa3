"""The Commands table's preconditions (drivers/docgen.py COMMAND_PRECONDITIONS, rendered
into docs/plc-interface.md) accept what swapd sends and what the simulated PLC (the
reference) accepts: the commands sent again after a stop and those of the recovery plan."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from drivers.docgen import COMMAND_PRECONDITIONS, COMMANDS_INTRO
from sim_hw.mechanics import StationModel
from tests.unit.test_sim_mechanics import FREE_SLOT, Controller, swap_to
from tests.unit.test_sim_mechanics import station as make_station

STOP = 1  # any stop_request other than none


def stop_when(c: Controller, cond: Callable[[], bool]) -> None:
    """The controller's stop request, in the first scan `cond` holds, then withdrawn."""
    c.until(cond)
    c.m.set_outputs({"stop_request": STOP}, c.t)
    c.step()
    c.m.set_outputs({"stop_request": 0}, c.t)
    assert c.m.command_log[-1].error_code == 6, c.m.command_log[-1]  # stopped


def stopped_in(name: str, p1: int, before: str, cond: Callable[[StationModel], bool]
               ) -> tuple[StationModel, Controller]:
    m, c = make_station()
    swap_to(c, before)
    c.send(name, p1)
    stop_when(c, lambda: cond(m))
    return m, c


def test_none_and_noop_rows_name_the_rules_above_the_table() -> None:
    """The sim refuses NONE (and NOOP) under a stop request like any command; the rules
    every command has stand above the table."""
    _, c = make_station()
    c.refused("NONE", stop=STOP)
    c.refused("NOOP", stop=STOP)
    for name in ("NONE", "NOOP"):
        assert "above the table" in COMMAND_PRECONDITIONS[name]
    assert not any("below the table" in text for text in COMMAND_PRECONDITIONS.values())
    assert "NONE and NOOP too" in COMMANDS_INTRO


def test_install_takes_a_pack_on_the_shuttle_anywhere_on_its_rail() -> None:
    _, c = stopped_in("INSTALL", 0, "FETCH", lambda m: 500 < m.shuttle_mm < 2500)
    c.ok("INSTALL")  # sent again, the shuttle away from home
    text = COMMAND_PRECONDITIONS["INSTALL"]
    assert "anywhere on its rail" in text and "shuttle at home." not in text


def test_fetch_sent_again_finishes_a_stopped_fetch() -> None:
    m, c = stopped_in("FETCH", 1, "STORE", lambda m: m.stacker_pack is not None)
    assert m.rack[1] is None  # the slot empty, the pack on the stacker
    c.ok("FETCH", 1)
    assert m.shuttle_pack is not None and m.stacker_pack is None
    text = COMMAND_PRECONDITIONS["FETCH"]
    assert "the slot empty, the pack on the stacker" in text
    assert "finishes the move onto the shuttle" in text


def test_store_stores_the_pack_a_stopped_fetch_left_on_the_stacker() -> None:
    """What recovery does with a pack on the stacker: STORE it (into its own slot)."""
    m, c = stopped_in("FETCH", 1, "STORE", lambda m: m.stacker_pack is not None)
    c.ok("STORE", 1)
    assert m.rack[1] is not None and m.stacker_pack is None
    text = COMMAND_PRECONDITIONS["STORE"]
    assert "a stopped STORE or FETCH" in text and "after a stopped STORE." not in text


def test_store_sent_again_after_its_pack_reached_the_slot_takes_the_stacker_home() -> None:
    m, c = stopped_in("STORE", FREE_SLOT, "REMOVE",
                      lambda m: m.rack[FREE_SLOT] is not None and m.stacker_pos > 1)
    c.ok("STORE", FREE_SLOT)  # the slot occupied: refused by a table that wants it empty
    assert m.stacker_slot == 0
    assert "the slot occupied, the stacker empty and away" in COMMAND_PRECONDITIONS["STORE"]


def test_the_sim_readme_lists_every_commands_own_interlocks_as_the_sim_has_them() -> None:
    text = (Path(__file__).parents[2] / "sim_hw" / "README.md").read_text()
    assert "Until swapd guides" not in text  # recovery exists: swapctl recover
    assert "swapctl recover" in text
    own = text[text.index("- Own interlocks"):text.index("A slot outside 1..slots")]
    for name in ("POSITION", "LIFT", "UNLOCK", "REMOVE", "STORE", "FETCH", "INSTALL", "LOCK",
                 "LOWER", "RELEASE", "HOME", "NONE", "NOOP"):
        assert name in own, name
    assert "a pack on the shuttle at home;" not in own  # INSTALL: anywhere on its rail
