"""Folding BMS messages into the process image (drivers/bms/adapter.py), and the latch that
keeps a one-frame emergency reading for the next scan. The adapter's own tests are in
tests/unit/test_bms_adapter.py."""

from __future__ import annotations

from drivers.bms.adapter import BmsAdapter
from drivers.bms.protocol import VEHICLE_PACK_SA, PackProtocol
from station.config import StationConfig
from station.image import ProcessImage
from station.pack_safety import TempRiseTracker, pack_events

P = PackProtocol()
ADAPTER = BmsAdapter(P)


def feed(img: ProcessImage, name: str, values: dict, t: float, sa: int = VEHICLE_PACK_SA) -> None:
    can_id, data = P.encode(name, values, sa=sa)
    ADAPTER.apply(img, P.decode(can_id, data), t)


STATUS = {"SOC": 50.0, "PackVoltage": 380.0, "PackCurrent": 0.0, "MinCellTemp": 24}
NMC = P.codes("PackIdentity", "Chemistry")["nmc"]


def test_a_hot_frame_followed_by_a_normal_one_is_still_an_event() -> None:
    img = ProcessImage(pack_timeouts=ADAPTER.timeouts(), plc_read_at=0.0, plc={
        "vehicle_present": True, "vehicle_pack_present": True, "vehicle_token": 7})
    feed(img, "PackIdentity", {"PackSerial": 7, "PackFamily": 20, "Chemistry": NMC,
                               "RatedEnergy": 75.0}, 1.0)
    feed(img, "PackStatus", {**STATUS, "MaxCellTemp": 75}, 1.10)
    feed(img, "PackStatus", {**STATUS, "MaxCellTemp": 26}, 1.11)  # before any scan
    events = pack_events(img, StationConfig(), TempRiseTracker(), 1.12)
    assert [e.kind for e in events] == ["over_temp"] and "75 C" in events[0].detail
