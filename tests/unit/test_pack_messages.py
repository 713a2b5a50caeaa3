"""Folding BMS messages into the process image, and the latch that keeps a one-frame
emergency reading for the next scan."""

from __future__ import annotations

from drivers.bms.protocol import VEHICLE_PACK_SA, PackProtocol
from station.config import StationConfig
from station.daemon import apply_pack_message
from station.image import ProcessImage
from station.pack_safety import TempRiseTracker, pack_events

P = PackProtocol()


def feed(img: ProcessImage, name: str, values: dict, t: float, sa: int = VEHICLE_PACK_SA) -> None:
    can_id, data = P.encode(name, values, sa=sa)
    apply_pack_message(img, P.decode(can_id, data), t)


STATUS = {"SOC": 50.0, "PackVoltage": 380.0, "PackCurrent": 0.0, "MinCellTemp": 24}


def test_identity_then_status_builds_a_report_and_a_new_serial_starts_anew() -> None:
    img = ProcessImage()
    feed(img, "PackIdentity", {"PackSerial": 7, "PackFamily": 20, "Chemistry": 0x20,
                               "RatedEnergy": 75.0}, 1.0)
    feed(img, "PackStatus", {**STATUS, "MaxCellTemp": 26}, 1.1)
    rep = img.packs[VEHICLE_PACK_SA]
    assert rep.serial == 7 and rep.chemistry == "sodium_ion" and rep.max_cell_temp_c == 26
    feed(img, "PackIdentity", {"PackSerial": 8, "PackFamily": 25, "Chemistry": 3,
                               "RatedEnergy": 100.0}, 2.0)
    rep2 = img.packs[VEHICLE_PACK_SA]
    assert rep2 is not rep and rep2.serial == 8 and rep2.max_cell_temp_c is None
    assert rep2.first_seen == 2.0


def test_a_hot_frame_followed_by_a_normal_one_is_still_an_event() -> None:
    img = ProcessImage()
    feed(img, "PackIdentity", {"PackSerial": 7, "PackFamily": 20, "Chemistry": 6,
                               "RatedEnergy": 75.0}, 1.0)
    feed(img, "PackStatus", {**STATUS, "MaxCellTemp": 75}, 1.10)
    feed(img, "PackStatus", {**STATUS, "MaxCellTemp": 26}, 1.11)  # before any scan
    events = pack_events(img, StationConfig(), TempRiseTracker(), 1.12)
    assert [e.kind for e in events] == ["over_temp"] and "75 C" in events[0].detail
