"""Pack selection cases."""

from __future__ import annotations

from station.config import SelectionSection, StationConfig
from station.image import Location, ProcessImage
from station.selection import Choice, NoChoice, choose_pack
from tests.unit.core_harness import new_image, pack

NOW = 10.0


def image(*packs: tuple[int, int, str, float], occupied: list[bool] | None = None,
          **kw: object) -> ProcessImage:
    img = new_image()
    n = 6
    occ = occupied if occupied is not None else [False] * n
    for slot, fam, chem, soc in packs:
        loc = Location.rack(slot)
        img.packs[loc] = pack(loc, 5000 + slot, fam, chem, soc, t=NOW, **kw)
        occ[slot - 1] = True
    img.plc = {"rack_slot_count": n, "rack_slot_occupied": occ}
    return img


def test_highest_soc_compatible_wins_and_lowest_free_slot_stores() -> None:
    img = image((1, 20, "nmc", 85.0), (2, 20, "lfp", 96.0), (3, 25, "nmc", 99.0))
    c = choose_pack(img, StationConfig(), 20, NOW)
    assert isinstance(c, Choice)
    assert c.pack.slot == 2 and c.pack.chemistry == "lfp" and c.store_slot == 4


def test_tie_goes_to_lowest_slot() -> None:
    c = choose_pack(image((2, 20, "nmc", 90.0), (1, 20, "nmc", 90.0)), StationConfig(), 20, NOW)
    assert isinstance(c, Choice) and c.pack.slot == 1


def test_soc_below_threshold_not_chosen() -> None:
    c = choose_pack(image((1, 20, "nmc", 79.9)), StationConfig(), 20, NOW)
    assert isinstance(c, NoChoice) and "family-20" in c.reason


def test_wrong_family_not_chosen_unless_configured_compatible() -> None:
    img = image((1, 25, "sodium_ion", 99.0))
    assert isinstance(choose_pack(img, StationConfig(), 20, NOW), NoChoice)
    cfg = StationConfig(selection=SelectionSection(compatible_families={"20": [20, 25]}))
    c = choose_pack(img, cfg, 20, NOW)
    assert isinstance(c, Choice) and c.pack.chemistry == "sodium_ion"


def test_faulty_isolated_low_soh_or_hot_packs_not_chosen() -> None:
    cfg = StationConfig()
    for kw in ({"faults": frozenset({"thermal_alarm"})}, {"state": "isolated"},
               {"soh_pct": 50.0}, {"max_cell_temp_c": 70.0}):
        img = image((1, 20, "nmc", 99.0))
        for k, v in kw.items():
            setattr(img.packs[Location.rack(1)], k, v)
        assert isinstance(choose_pack(img, cfg, 20, NOW), NoChoice), kw


def test_stale_pack_not_chosen() -> None:
    img = image((1, 20, "nmc", 99.0))
    c = choose_pack(img, StationConfig(), 20, NOW + 5.0)
    assert isinstance(c, NoChoice)


def test_no_free_slot_is_reported() -> None:
    img = image((1, 20, "nmc", 99.0), occupied=[True] * 6)
    c = choose_pack(img, StationConfig(), 20, NOW)
    assert isinstance(c, NoChoice) and c.reason == "no free rack slot for the depleted pack"


def test_unheard_rack_packs_are_waited_for_not_reported_missing() -> None:
    img = image((1, 20, "nmc", 50.0), (2, 20, "nmc", 99.0))
    del img.packs[Location.rack(2)]  # occupied, not heard on CAN yet
    c = choose_pack(img, StationConfig(), 20, NOW)
    assert isinstance(c, NoChoice) and c.reason == "waiting for 1 rack pack(s) to report on CAN"


def test_a_pack_reserved_for_another_vehicle_is_never_chosen() -> None:
    from station.network import Reservation
    img = image((1, 20, "nmc", 85.0), (2, 20, "lfp", 96.0))
    kept = Reservation("r-1", "LSJA24U99MS000001", 20, 80.0, 1e10, 2, 5002)
    c = choose_pack(img, StationConfig(), 20, NOW, reserved={2: kept})
    assert isinstance(c, Choice) and c.pack.slot == 1
    c = choose_pack(image((2, 20, "lfp", 96.0)), StationConfig(), 20, NOW, reserved={2: kept})
    assert isinstance(c, NoChoice) and c.reason.endswith("; 1 reserved for other vehicles")


def test_a_vehicle_gets_its_own_reserved_pack_while_it_is_fit() -> None:
    from station.network import Reservation
    img = image((1, 20, "nmc", 99.0), (2, 20, "lfp", 90.0))
    own = Reservation("r-1", "LSJA24U99MS000001", 20, 85.0, 1e10, 2, 5002)
    c = choose_pack(img, StationConfig(), 20, NOW, own=own)
    assert isinstance(c, Choice) and c.pack.slot == 2  # not the fuller slot 1
    assert c.pack.rated_energy_kwh == 75.0
    for change in ({"soc_pct": 84.0}, {"serial": 9999}):  # below its minimum; another pack
        img = image((1, 20, "nmc", 99.0), (2, 20, "lfp", 90.0))
        for k, v in change.items():
            setattr(img.packs[Location.rack(2)], k, v)
        c = choose_pack(img, StationConfig(), 20, NOW, own=own)
        assert isinstance(c, Choice) and c.pack.slot == 1, change
    c = choose_pack(image((1, 20, "nmc", 99.0), (2, 20, "lfp", 90.0)), StationConfig(), 20,
                    NOW, excluded=frozenset({2}), own=own)  # locked out since
    assert isinstance(c, Choice) and c.pack.slot == 1
