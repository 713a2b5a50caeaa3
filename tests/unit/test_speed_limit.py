"""Defect: `swapd demo --speed 500` aborted a healthy swap. A speed at which the controller
cannot see the machine move within a step is refused, saying the highest it can honour."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sim_hw.config import SimConfig
from station.rig import Rig, SpeedRefused, highest_speed, speed_refusal


def test_highest_speed_follows_the_shortest_step_and_the_poll_period() -> None:
    top, step, seconds = highest_speed(SimConfig(), 0.02)
    assert (step, seconds) == ("lift", 10.0)
    assert top == pytest.approx(10.0 / 0.04)
    assert speed_refusal(top, SimConfig(speed=top), 0.02) is None
    msg = speed_refusal(top * 2, SimConfig(speed=top * 2), 0.02)
    assert msg is not None and f"highest speed this station can honour is {int(top)}" in msg


def test_the_rig_refuses_a_speed_it_cannot_honour() -> None:
    with pytest.raises(SpeedRefused, match="highest speed this station can honour is 500"):
        Rig(speed=5000, poll_period_s=0.01)


def test_swapd_demo_refuses_with_the_highest_speed() -> None:
    r = subprocess.run([sys.executable, "-m", "station.cli", "demo", "--speed", "5000"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "speed 5000 refused" in r.stderr and "can honour is 250" in r.stderr
