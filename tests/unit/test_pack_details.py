"""Pack details by J1939-21 transport: the adapter bounds and cross-checks the nameplate
and the cell arrays, the requester asks for them, the simulator makes them."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.bms.adapter import TEMPS_MESSAGE, TEXT_MESSAGE, VOLTAGES_MESSAGE, BmsAdapter
from drivers.bms.details import DetailRequester
from drivers.bms.protocol import STATION_SA, VEHICLE_PACK_SA, PackProtocol, rack_sa
from sim_hw.pack_transport import pack_details
from sim_hw.packs import SimPack
from station.image import BAY, Location, ProcessImage
from tests.unit.test_bms_adapter import plc_showing_packs

P = PackProtocol()
SLOT1 = Location.rack(1)


@pytest.fixture
def adapter() -> BmsAdapter:
    return BmsAdapter(P)


@pytest.fixture
def image(adapter: BmsAdapter) -> ProcessImage:
    img = ProcessImage(pack_timeouts=adapter.timeouts())
    img.plc, img.plc_read_at = plc_showing_packs(), 0.0
    return img


def feed(adapter: BmsAdapter, img: ProcessImage, name: str, values: dict[str, Any],
         t: float, sa: int = rack_sa(1)) -> Location | None:
    _, data = P.encode(name, values, sa=sa)
    msg = P.decode_transfer(P.pgn_of(name), sa, data, STATION_SA) if len(data) > 8 \
        else P.decode(P.encode(name, values, sa=sa)[0], data)
    return adapter.apply(img, msg, t)


def limits(cells: int) -> dict[str, Any]:
    return {"MaxChargeVoltage": 400, "MaxChargeCurrent": 100, "CellCount": cells,
            "MaxCellChargeVoltage": 3.65}


def volts(n: int, lo: float = 3.30, hi: float = 3.32) -> dict[str, Any]:
    return {"CellCount": n, "CellVoltages": [lo] + [3.31] * (n - 2) + [hi]}


def test_the_arrays_and_the_nameplate_go_into_the_report(adapter: BmsAdapter,
                                                         image: ProcessImage) -> None:
    assert feed(adapter, image, VOLTAGES_MESSAGE, volts(120), 1.0) == SLOT1
    assert feed(adapter, image, TEMPS_MESSAGE, {"SensorCount": 3,
                                                "CellTemperatures": [20, 24, 22]}, 2.0) == SLOT1
    assert feed(adapter, image, TEXT_MESSAGE, {"Manufacturer": "ACME", "Model": "M1",
                                               "SerialText": "S-1"}, 3.0) == SLOT1
    rep = image.packs[SLOT1]
    assert rep.cell_voltages is not None and len(rep.cell_voltages.values) == 120
    assert (rep.cell_voltages.low, rep.cell_voltages.high, rep.cell_voltages.at) == \
        (3.30, 3.32, 1.0)
    assert rep.cell_temps is not None and (rep.cell_temps.low, rep.cell_temps.high) == (20, 24)
    assert rep.nameplate is not None and rep.nameplate.model == "M1"
    assert adapter.stats["detail_applied"] == 3
    # only where the PLC shows a pack
    assert feed(adapter, image, VOLTAGES_MESSAGE, volts(120), 4.0, sa=rack_sa(7)) is None
    assert adapter.stats["location_empty"] == 1


@pytest.mark.parametrize("values", [
    {"CellCount": 1, "CellVoltages": [3.3], "raw_count": 0},  # no cells
    {"CellCount": 1, "CellVoltages": [3.3], "raw_count": 121},  # more than the array
    {"CellCount": 3, "CellVoltages": [3.3, 3.3]},  # fewer than its count
    {"CellCount": 1, "CellVoltages": [3.3, 3.3]},  # one beyond its count
    {"CellCount": 2, "CellVoltages": [3.3, 5.5]},  # above 5 V
])
def test_a_cell_array_out_of_bounds_is_dropped_and_the_last_stays(
        adapter: BmsAdapter, image: ProcessImage, values: dict[str, Any]) -> None:
    feed(adapter, image, VOLTAGES_MESSAGE, volts(120), 1.0)
    before = image.packs[SLOT1].cell_voltages
    raw_count = values.pop("raw_count", None)
    _, data = P.encode(VOLTAGES_MESSAGE, values, sa=rack_sa(1))
    if raw_count is not None:  # what the DBC's range would not let us encode
        data = bytes([raw_count]) + data[1:]
    msg = P.decode_transfer(P.pgn_of(VOLTAGES_MESSAGE), rack_sa(1), data, STATION_SA)
    assert adapter.apply(image, msg, 2.0) is None
    assert image.packs[SLOT1].cell_voltages is before
    assert adapter.stats["cells_invalid"] == 1


def test_temperatures_above_150_and_a_nameplate_not_printable_are_dropped(
        adapter: BmsAdapter, image: ProcessImage) -> None:
    assert feed(adapter, image, TEMPS_MESSAGE, {"SensorCount": 1,
                                                "CellTemperatures": [151]}, 1.0) is None
    assert adapter.stats["cells_invalid"] == 1
    assert feed(adapter, image, TEXT_MESSAGE, {"Manufacturer": "A\tB", "Model": "",
                                               "SerialText": ""}, 1.0) is None
    assert adapter.stats["text_invalid"] == 1 and image.packs[SLOT1].nameplate is None


def test_the_arrays_are_checked_against_the_packs_own_frames(
        adapter: BmsAdapter, image: ProcessImage) -> None:
    feed(adapter, image, "PackLimits", limits(108), 0.5)
    feed(adapter, image, "PackStatus", {"SOC": 50, "PackVoltage": 400, "PackCurrent": 0,
                                        "MinCellTemp": 20, "MaxCellTemp": 25}, 0.5)
    feed(adapter, image, "PackCells", {"MaxCellVoltage": 3.32, "MinCellVoltage": 3.30,
                                       "InsulationResistance": 5000, "PackState": 0,
                                       **dict.fromkeys(("FaultOverTemp", "FaultOverVoltage",
                                                        "FaultUnderVoltage", "FaultInsulation",
                                                        "ThermalAlarm", "FaultInternal"), 0)},
         0.5)
    feed(adapter, image, VOLTAGES_MESSAGE, volts(108), 1.0)
    feed(adapter, image, TEMPS_MESSAGE, {"SensorCount": 2, "CellTemperatures": [20, 27]}, 1.0)
    assert (adapter.stats["cells_count_mismatch"], adapter.stats["cells_voltage_mismatch"],
            adapter.stats["cells_temp_mismatch"]) == (0, 0, 0)  # within 3 degC
    feed(adapter, image, VOLTAGES_MESSAGE, volts(120, hi=3.40), 2.0)
    feed(adapter, image, TEMPS_MESSAGE, {"SensorCount": 2, "CellTemperatures": [20, 29]}, 2.0)
    assert (adapter.stats["cells_count_mismatch"], adapter.stats["cells_voltage_mismatch"],
            adapter.stats["cells_temp_mismatch"]) == (1, 1, 1)
    rep = image.packs[SLOT1]  # kept all the same: a mismatch is reported, not judged
    assert rep.cell_voltages is not None and len(rep.cell_voltages.values) == 120


class Sent:
    def __init__(self) -> None:
        self.requests: list[tuple[int, int]] = []

    def __call__(self, pgn: int, da: int) -> None:
        self.requests.append((pgn, da))


def test_the_requester_asks_each_identified_pack_then_retries_then_at_the_period(
        adapter: BmsAdapter, image: ProcessImage) -> None:
    sent = Sent()
    req = DetailRequester(adapter, sent, cells_period_s=30.0, retry_s=5.0)
    image.vehicle_vin = "X"  # the VIN known: not asked
    feed(adapter, image, "PackLimits", limits(120), 0.0)  # heard but not identified
    assert req.tick(image, 0.0) == 0
    feed(adapter, image, "PackIdentity", {"PackSerial": 9, "PackFamily": 20, "Chemistry": 3,
                                          "RatedEnergy": 75}, 0.0)
    assert req.tick(image, 0.0) == 3
    pgns = {P.pgn_of(n) for n in (TEXT_MESSAGE, VOLTAGES_MESSAGE, TEMPS_MESSAGE)}
    assert {p for p, _ in sent.requests} == pgns and {d for _, d in sent.requests} == {0x80}
    assert req.tick(image, 4.9) == 0  # not answered: again after retry_s
    feed(adapter, image, TEXT_MESSAGE, {"Manufacturer": "A", "Model": "B",
                                        "SerialText": "C"}, 5.0)
    feed(adapter, image, VOLTAGES_MESSAGE, volts(120), 5.0)
    assert req.tick(image, 5.0) == 1  # only the temperatures, unanswered
    feed(adapter, image, TEMPS_MESSAGE, {"SensorCount": 1, "CellTemperatures": [20]}, 5.1)
    assert req.tick(image, 34.9) == 0
    assert req.tick(image, 35.2) == 2  # the cells at their period, never the nameplate again
    # another pack at the slot (another serial): asked afresh at once
    feed(adapter, image, "PackIdentity", {"PackSerial": 10, "PackFamily": 20, "Chemistry": 3,
                                          "RatedEnergy": 75}, 36.0)
    assert req.tick(image, 36.0) == 3


def test_the_requester_asks_the_car_for_its_vin_while_it_has_none(
        adapter: BmsAdapter, image: ProcessImage) -> None:
    sent = Sent()
    req = DetailRequester(adapter, sent, retry_s=5.0)
    assert req.tick(image, 0.0) == 1
    assert sent.requests == [(P.pgn_of("VehicleIdentification"), VEHICLE_PACK_SA)]
    assert req.tick(image, 4.0) == 0 and req.tick(image, 5.0) == 1
    image.vehicle_vin = "LSJA24U61NG123456"
    assert req.tick(image, 20.0) == 0
    assert BAY.is_bay


@pytest.mark.parametrize("chemistry,cells", [("nmc", 108), ("lfp", 120), ("sodium_ion", 113)])
def test_the_simulated_cells_match_the_packs_summary(chemistry: str, cells: int) -> None:
    pack = SimPack(serial=5, family=20, chemistry=chemistry,  # type: ignore[arg-type]
                   min_cell_temp_c=21.4, max_cell_temp_c=27.6)
    d = pack_details(pack)
    v, t = d[VOLTAGES_MESSAGE], d[TEMPS_MESSAGE]
    assert v["CellCount"] == len(v["CellVoltages"]) == cells == t["SensorCount"]
    assert max(v["CellVoltages"]) == round(pack.max_cell_v, 3)
    assert min(v["CellVoltages"]) == round(pack.min_cell_v, 3)
    assert (min(t["CellTemperatures"]), max(t["CellTemperatures"])) == (21, 28)
    assert pack_details(pack) == d  # the same cells call after call
    for name, values in d.items():
        P.encode(name, values, rack_sa(1))  # every value within the DBC's ranges
