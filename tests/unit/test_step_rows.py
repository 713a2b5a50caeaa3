"""A step is one row: everything else that names steps derives from or is checked
against `station.sequence.SEQUENCE`, so a name that is not a step cannot slip in."""

from __future__ import annotations

import pytest

from sim_hw.config import TimingConfig
from station.interlocks import INTERLOCKS, Interlock, Reaction
from station.sequence import SEQUENCE, STEP_NAMES, STEPS_BY_NAME, Car, steps_where


def test_interlock_with_a_step_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="no such step"):
        Interlock("x", "h", lambda i: None, Reaction.ABORT, steps=frozenset({"lfit"}))


def test_every_interlock_step_is_a_step() -> None:
    for il in INTERLOCKS:
        assert set(il.steps or ()) <= set(STEPS_BY_NAME)


def test_the_simulators_timing_names_the_steps_in_order() -> None:
    # then the commands that are no step of a swap (recovery's HOME)
    assert list(TimingConfig.model_fields) == [*STEP_NAMES, "home"]


def test_every_simulated_step_fits_its_timeout() -> None:
    t = TimingConfig()
    for s in SEQUENCE:
        assert getattr(t, s.name) < s.timeout_s / 2, s.name  # margin for a slow machine


def test_rows_say_what_the_interlocks_derive() -> None:
    assert steps_where(lambda s: s.car == Car.LIFTED) == {
        "unlock", "remove", "store", "fetch", "install", "lock", "check"}
    assert steps_where(lambda s: s.car == Car.DOWN) == {"position", "release"}
    by_id = {il.id: il for il in INTERLOCKS}
    assert by_id["vehicle_moved"].steps == steps_where(lambda s: s.car_positioned)
    assert by_id["pack_silent"].steps == steps_where(lambda s: bool(s.talkers))
